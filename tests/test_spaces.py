"""The search-space registry and the DARTS adapter."""

import numpy as np
import pytest

from configs import digits_search
from pcdarts_jax.spaces.darts import genotypes
from pcdarts_jax import spaces
from pcdarts_jax.spaces.darts import supernet


def test_registry_and_interface():
  for name in spaces.SPACES:
    space = spaces.get(name)
    missing = [f for f in spaces.FUNCTIONS if not callable(getattr(space, f, None))]
    assert not missing, (name, missing)
  with pytest.raises(ValueError,
                     match=r"model.space='nope' is not one of \('darts', 'nb201', 'rnn'\)"):
    spaces.get('nope')


def test_of_config_defaults_to_darts():
  config = digits_search.get_config()
  assert spaces.of_config(config) is spaces.get('darts')


def test_darts_adapter_matches_derive_genotype():
  config = digits_search.get_config()
  space = spaces.get('darts')
  model = space.build_supernet(config)
  assert isinstance(model, supernet.SearchNetwork)
  rng = np.random.default_rng(0)
  arch = {name: rng.normal(size=(14, 8) if 'alphas' in name else (14,))
          for name in genotypes.ARCH_NAMES}
  genotype = space.derive(arch, model)
  assert genotype == genotypes.derive_genotype(arch, genotypes.PRIMITIVES, 4)
  assert space.genotype_to_dict(genotype) == genotypes.to_dict(genotype)
  assert space.genotype_from_dict(space.genotype_to_dict(genotype)) == genotype
  assert space.genotype_str(genotype) == str(genotype)
  scalars = space.arch_scalars(arch, model)
  assert 'arch/normal/entropy' in scalars and len(scalars) == 2 * (1 + 14 * 8 + 14)
