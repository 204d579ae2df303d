"""Tests for pcdarts_jax.train.torch_import on a tiny supernet.

The PyTorch-layout state_dict is synthesised here from the reference network's
module structure (PC-DARTS `model_search.Network`), independently of the importer's own
name mapping, so a wrong mapping on either side shows up as a failure.
"""

import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from pcdarts_jax.spaces.darts import supernet
from pcdarts_jax.spaces.darts import cell_parts
from pcdarts_jax.train import torch_import

PRIMITIVES = ('none', 'max_pool_3x3', 'avg_pool_3x3', 'skip_connect',
              'sep_conv_3x3', 'sep_conv_5x5', 'dil_conv_3x3', 'dil_conv_5x5')
C, LAYERS, K, NUM_CLASSES = 4, 3, 2, 10


def _config():
  return ml_collections.ConfigDict({'model': {
      'init_channels': C, 'layers': LAYERS, 'num_classes': NUM_CLASSES,
      'partial_channels': K, 'depthwise_impl': 'dense'}})


def reference_state_dict(rng, c=C, layers=LAYERS, k=K, num_classes=NUM_CLASSES,
                         steps=4, multiplier=4, stem_multiplier=3):
  """Keys and shapes as the reference model_search.Network would save them."""
  sd = {}

  def conv(name, c_out, c_in, kh, kw):
    sd[f'{name}.weight'] = rng.normal(size=(c_out, c_in, kh, kw)).astype(np.float32)

  def bn(name, ch, affine=False):
    if affine:
      sd[f'{name}.weight'] = rng.normal(size=(ch,)).astype(np.float32)
      sd[f'{name}.bias'] = rng.normal(size=(ch,)).astype(np.float32)
    sd[f'{name}.running_mean'] = rng.normal(size=(ch,)).astype(np.float32)
    sd[f'{name}.running_var'] = rng.uniform(0.5, 1.5, size=(ch,)).astype(np.float32)
    sd[f'{name}.num_batches_tracked'] = np.array(7, np.int64)

  def relu_conv_bn(name, c_in, c_out):  # Sequential(ReLU, Conv2d, BN) in `.op`.
    conv(f'{name}.op.1', c_out, c_in, 1, 1)
    bn(f'{name}.op.2', c_out)

  def factorized_reduce(name, c_in, c_out):
    conv(f'{name}.conv_1', c_out // 2, c_in, 1, 1)
    conv(f'{name}.conv_2', c_out // 2, c_in, 1, 1)
    bn(f'{name}.bn', c_out)

  c_stem = stem_multiplier * c
  conv('stem.0', c_stem, 3, 3, 3)
  bn('stem.1', c_stem, affine=True)
  c_pp, c_p, c_curr, reduction_prev = c_stem, c_stem, c, False
  for i in range(layers):
    reduction = i in (layers // 3, 2 * layers // 3)
    if reduction:
      c_curr *= 2
    cell = f'cells.{i}'
    if reduction_prev:
      factorized_reduce(f'{cell}.preprocess0', c_pp, c_curr)
    else:
      relu_conv_bn(f'{cell}.preprocess0', c_pp, c_curr)
    relu_conv_bn(f'{cell}.preprocess1', c_p, c_curr)
    w = c_curr // k
    edge = 0
    for node in range(steps):
      for j in range(node + 2):
        stride = 2 if reduction and j < 2 else 1
        for index, prim in enumerate(PRIMITIVES):
          op = f'{cell}._ops.{edge}._ops.{index}'
          if 'pool' in prim:
            bn(f'{op}.1', w)
          elif prim == 'skip_connect' and stride == 2:
            factorized_reduce(op, w, w)
          elif prim.startswith('sep_conv'):
            ks = int(prim[-1])
            conv(f'{op}.op.1', w, 1, ks, ks)
            conv(f'{op}.op.2', w, w, 1, 1)
            bn(f'{op}.op.3', w)
            conv(f'{op}.op.5', w, 1, ks, ks)
            conv(f'{op}.op.6', w, w, 1, 1)
            bn(f'{op}.op.7', w)
          elif prim.startswith('dil_conv'):
            ks = int(prim[-1])
            conv(f'{op}.op.1', w, 1, ks, ks)
            conv(f'{op}.op.2', w, w, 1, 1)
            bn(f'{op}.op.3', w)
        edge += 1
    c_pp, c_p, reduction_prev = c_p, multiplier * c_curr, reduction
  sd['classifier.weight'] = rng.normal(size=(num_classes, c_p)).astype(np.float32)
  sd['classifier.bias'] = rng.normal(size=(num_classes,)).astype(np.float32)
  return sd


def _arch(rng):
  return {'alphas_normal': rng.normal(size=(14, 8)),
          'alphas_reduce': rng.normal(size=(14, 8)),
          'betas_normal': rng.normal(size=(14,)),
          'betas_reduce': rng.normal(size=(14,))}


@pytest.fixture(scope='module')
def converted():
  rng = np.random.default_rng(0)
  sd, arch = reference_state_dict(rng), _arch(rng)
  return sd, arch, torch_import.supernet_variables(sd, arch, _config())


def _size(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_every_tensor_lands_once(converted):
  sd, _, variables = converted
  expected = sum(v.size for key, v in sd.items()
                 if not key.endswith('num_batches_tracked'))
  assert _size(variables['params']) + _size(variables['batch_stats']) == expected
  for leaf in jax.tree.leaves(variables):
    assert leaf.dtype == jnp.float32


def test_layouts(converted):
  sd, arch, variables = converted
  params, stats = variables['params'], variables['batch_stats']

  # Depthwise (C, 1, k, k) -> stacked (pos, k, k, 1, C).
  group, pos = cell_parts.edge_slot(0)
  w = sd['cells.1._ops.0._ops.4.op.1.weight']
  dw = np.asarray(params['cell_1'][group]['sep_conv_3x3']['dw1']['kernel'][pos])
  assert dw.shape == (3, 3, 1, w.shape[0])
  assert dw[2, 0, 0, 3] == w[3, 0, 2, 0]
  np.testing.assert_array_equal(dw, w.transpose(2, 3, 1, 0))

  # A node edge (edge 13 reads node 3): pointwise (O, I, 1, 1) -> (1, 1, I, O).
  group, pos = cell_parts.edge_slot(13)
  assert group == 'node_edges'
  w = sd['cells.0._ops.13._ops.7.op.2.weight']
  pw = np.asarray(params['cell_0'][group]['dil_conv_5x5']['pw']['kernel'][pos])
  assert pw[0, 0, 0, 1] == w[1, 0, 0, 0]
  np.testing.assert_array_equal(pw[0, 0], w[:, :, 0, 0].T)
  np.testing.assert_array_equal(
      stats['cell_0'][group]['sep_conv_5x5']['bn2']['var'][pos],
      sd['cells.0._ops.13._ops.5.op.7.running_var'])
  np.testing.assert_array_equal(
      stats['cell_0'][group]['avg_pool_3x3']['bn']['mean'][pos],
      sd['cells.0._ops.13._ops.2.1.running_mean'])

  # Stride-2 skip (FactorizedReduce) on edge 1 of reduction cell 1.
  group, pos = cell_parts.edge_slot(1)
  np.testing.assert_array_equal(
      params['cell_1'][group]['skip_connect']['conv_2']['kernel'][pos],
      sd['cells.1._ops.1._ops.3.conv_2.weight'].transpose(2, 3, 1, 0))

  # preprocess0 of cell 2 follows a reduction: FactorizedReduce.
  np.testing.assert_array_equal(
      params['cell_2']['preprocess0']['conv_1']['kernel'],
      sd['cells.2.preprocess0.conv_1.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(
      stats['cell_2']['preprocess0']['bn']['var'],
      sd['cells.2.preprocess0.bn.running_var'])
  np.testing.assert_array_equal(
      params['cell_0']['preprocess1']['conv']['kernel'][0, 0],
      sd['cells.0.preprocess1.op.1.weight'][:, :, 0, 0].T)

  # Stem conv OIHW -> HWIO, affine stem BN.
  w = sd['stem.0.weight']
  kernel = np.asarray(params['stem_conv']['kernel'])
  assert kernel[1, 2, 0, 5] == w[5, 0, 1, 2]
  np.testing.assert_array_equal(params['stem_bn']['scale'], sd['stem.1.weight'])
  np.testing.assert_array_equal(stats['stem_bn']['mean'], sd['stem.1.running_mean'])

  # Linear (out, in) -> Dense (in, out).
  w = sd['classifier.weight']
  assert params['classifier']['kernel'][3, 7] == w[7, 3]
  np.testing.assert_array_equal(params['classifier']['bias'], sd['classifier.bias'])

  for name, value in arch.items():
    np.testing.assert_allclose(variables['arch'][name], value, rtol=1e-6)


def test_converted_variables_run(converted):
  _, _, variables = converted
  model = supernet.build_supernet(_config())
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 8, 8, 3)), jnp.float32)
  logits = model.apply(variables, x, train=False)
  assert logits.shape == (2, NUM_CLASSES)
  assert bool(jnp.all(jnp.isfinite(logits)))


def _expect_error(sd, arch, text):
  with pytest.raises(ValueError, match=re.escape(text)):
    torch_import.supernet_variables(sd, arch, _config())


def test_missing_key(converted):
  sd, arch, _ = converted
  key = 'cells.0._ops.3._ops.4.op.1.weight'
  _expect_error({k: v for k, v in sd.items() if k != key}, arch, key)


def test_unexpected_key(converted):
  sd, arch, _ = converted
  key = 'cells.0._ops.3._ops.0.op.1.weight'  # `none` has no weights.
  _expect_error({**sd, key: np.zeros((2, 1, 3, 3), np.float32)}, arch, key)
  # A step counter of a BN the model does not have is also unexpected.
  key = 'cells.0.extra_bn.num_batches_tracked'
  _expect_error({**sd, key: np.array(0)}, arch, key)


def test_wrong_shape(converted):
  sd, arch, _ = converted
  key = 'cells.2.preprocess1.op.1.weight'
  _expect_error({**sd, key: sd[key][:-1]}, arch, key)


def test_arch_names(converted):
  sd, arch, _ = converted
  _expect_error(sd, {k: v for k, v in arch.items() if k != 'betas_reduce'},
                'betas_reduce')
  _expect_error(sd, {**arch, 'gammas': np.zeros(3)}, 'gammas')
  _expect_error(sd, {**arch, 'alphas_normal': np.zeros((14, 7))}, 'alphas_normal')
