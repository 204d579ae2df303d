"""Search spaces behind one small interface, picked by `model.space`.

A space is a module providing:

- `build_supernet(config, axis_name=None, partial_channels=None, op_masks=None,
  depthwise_impl=None) -> nn.Module`: the search supernet of `config.model`;
  weights in `params`/`batch_stats`, the architecture in the Flax collection
  `arch`. Called as `model.apply(variables, x, train, temperature)`. The
  keyword overrides set a progressive-learning stage: K, and per arch matrix a
  0/1 mask of the kept ops ({arch name or cell kind: mask}); `depthwise_impl`
  is the form of the depthwise convolutions the search's architect needs
  (search.architect.depthwise_impl; a space without them ignores it).
- `derive(arch, model) -> genotype`: the discrete architecture from the arch
  values (a dict of NumPy arrays) of supernet `model`.
- `genotype_to_dict(genotype) -> dict` (JSON-able) and
  `genotype_from_dict(d) -> genotype`, its inverse.
- `genotype_str(genotype) -> str`: one line for logs.
- `arch_scalars(arch, model) -> {tag: float}`: TensorBoard scalars (per-edge
  op weights, entropy).
- `draw(genotype, prefix) -> [paths]`: cell pictures (may be []).
- `heatmap(arch, model, path, title=None) -> path | None`: a picture of the
  relaxed op weights (None where the space has none).
- `build_network(genotype, config, axis_name=None) -> nn.Module`: the
  stand-alone network of a derived genotype.

Optional: `genotype_edges(genotype) -> {cell type: [(node, input, op)]}`, the
kept edges, from which a many-seed search (search/seeds.py) counts per edge how
many seeds agree; a space without it reports no agreement.

A new space is one new module in this package plus its name in SPACES.
"""

import importlib
from types import ModuleType

from pcdarts_jax.run import config_fields

SPACES = ('darts', 'nb201', 'rnn')
FUNCTIONS = ('build_supernet', 'derive', 'genotype_to_dict', 'genotype_from_dict',
             'genotype_str', 'arch_scalars', 'draw', 'heatmap', 'build_network')


def get(name: str) -> ModuleType:
  """The module of search space `name` (the value of `model.space`)."""
  if name not in SPACES:
    raise ValueError(f'model.space={name!r} is not one of {SPACES}.')
  return importlib.import_module(f'{__name__}.{name}.space')


def validate(config):
  """model.space names a space (ConfigError otherwise)."""
  name = config_fields.space(config.model)
  config_fields.require(name in SPACES, f'model.space={name!r} is not one of {SPACES}.')


def of_config(config) -> ModuleType:
  """The space of a search config; configs without `model.space` are DARTS."""
  model = config.model if hasattr(config, 'model') else config
  return get(config_fields.space(model))
