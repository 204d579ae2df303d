"""launch.torch_reference, the PyTorch baseline of the benchmark: the same
supernet as ours (parameter for parameter) and well-formed results. Needs
PyTorch, which pcdarts-jax does not depend on: skipped without it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import cifar10_search
from pcdarts_jax.spaces.darts import genotypes
from pcdarts_jax.spaces.darts import supernet

torch = pytest.importorskip('torch')

from launch import torch_reference  # pylint: disable=g-import-not-at-top,wrong-import-position


def _jax_sizes(init_channels, layers):
  config = cifar10_search.get_config()
  config.model.init_channels = init_channels
  config.model.layers = layers
  model = supernet.build_supernet(config)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                             jnp.zeros((1, 32, 32, 3)), train=False))
  count = lambda tree: sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))
  return count(shapes['params']), count(shapes['arch'])


def test_torch_supernet_has_our_supernets_parameters():
  assert torch_reference.PRIMITIVES == tuple(genotypes.PRIMITIVES)
  assert torch_reference.NODE_EDGES == genotypes.node_edge_ranges(4)
  net = torch_reference.build_supernet(torch, init_channels=8, layers=5)
  weights, arch = _jax_sizes(8, 5)
  assert sum(p.numel() for p in net.weights()) == weights
  assert sum(p.numel() for p in net.arch()) == arch == 2 * 14 * 8 + 2 * 14
  assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_measure_reports_every_step_with_its_fields():
  results = list(torch_reference.measure(batch_size=2, steps=2, warmup=0, threads=1,
                                         init_channels=4, layers=3))
  assert [r['measurement'] for r in results] == ['weight_step', 'arch_step', 'bilevel_step']
  for r in results:
    assert r['framework'] == 'torch' and r['batch_size'] == 2 and r['steps'] == 2
    assert 0 < r['ms_per_step_p10'] <= r['ms_per_step_median'] <= r['ms_per_step_p90']
    assert r['images_per_second'] == pytest.approx(2 / (r['ms_per_step_median'] / 1e3))
    assert r['peak_memory_bytes'] > 0
