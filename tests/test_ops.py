"""Candidate operations: shapes, padding semantics, FactorizedReduce, depthwise impls."""

import contextlib
import functools
import io
import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.ad_checkpoint import print_saved_residuals

from pcdarts_jax.nn import fused_ops
from pcdarts_jax.spaces.darts import genotypes
from pcdarts_jax.nn import functional
from pcdarts_jax.nn import ops
from pcdarts_jax.spaces.darts import supernet

ALL_OPS = tuple(genotypes.PRIMITIVES) + ('sep_conv_7x7', 'conv_7x1_1x7')
BN_OPS = tuple(p for p in ALL_OPS if p != 'none')  # Each ends in a BN when search=True.


def _rand(shape, seed=0, scale=1.0):
  return jnp.asarray(scale * np.random.RandomState(seed).randn(*shape), jnp.float32)


def _init_apply(module, x, seed=0, jit=False):
  variables = module.init(jax.random.PRNGKey(seed), x, train=True)
  apply = lambda v, x: module.apply(v, x, train=True, mutable=['batch_stats'])
  y, updates = (jax.jit(apply) if jit else apply)(variables, x)
  return variables, y, updates


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize('hw', [(8, 6), (7, 5)], ids=['even', 'odd'])
@pytest.mark.parametrize('stride', [1, 2])
@pytest.mark.parametrize('name', ALL_OPS)
def test_op_output_shape_and_bn(name, stride, hw):
  h, w = hw
  c = 4
  x = _rand((2, h, w, c), seed=1)
  # Depthwise impls are compared separately; 'conv' is the quickest to run eagerly.
  module = ops.make_op(name, c, stride, affine=False, depthwise_impl='conv',
                       search=True)
  variables, y, updates = _init_apply(module, x)
  if stride == 1:
    expected = (2, h, w, c)
  else:
    expected = (2, -(-h // 2), -(-w // 2), c)  # ceil, like x[::2, ::2].
  assert y.shape == expected
  assert y.dtype == jnp.float32
  assert np.all(np.isfinite(np.asarray(y)))
  # affine=False: no BN scale or bias anywhere.
  leaves = jax.tree_util.tree_flatten_with_path(variables.get('params', {}))[0]
  assert not [p for p, _ in leaves if p[-1].key in ('scale', 'bias')]
  if name == 'none':
    assert not np.any(np.asarray(y))
  elif name == 'skip_connect' and stride == 1:
    np.testing.assert_array_equal(np.asarray(y), np.asarray(x))
  else:
    # The op ends in a train-mode BN without affine: per-channel mean 0, var ~1.
    y64 = np.asarray(y, np.float64)
    np.testing.assert_allclose(y64.mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
    np.testing.assert_allclose(y64.var(axis=(0, 1, 2)), 1.0, atol=2e-2)
    assert 'batch_stats' in updates and jax.tree.leaves(updates['batch_stats'])


def test_unknown_op_and_impl_raise():
  with pytest.raises(ValueError):
    ops.make_op('conv_9x9', 4, 1, affine=False)
  with pytest.raises(ValueError, match='model.depthwise_impl'):
    ops.resolve_depthwise_impl('fft')


@pytest.mark.parametrize('backend,dtype,expected', [
    ('cpu', jnp.float32, 'shifted'), ('cpu', jnp.bfloat16, 'shifted'),
    ('gpu', jnp.float32, 'shifted'), ('gpu', jnp.bfloat16, 'conv'),
    ('tpu', jnp.float32, 'conv'), ('tpu', jnp.bfloat16, 'conv'),
    ('gpu', 'bfloat16', 'conv'), ('gpu', 'float32', 'shifted')])  # A config's dtype name.
def test_auto_depthwise_impl_is_the_measured_fastest(backend, dtype, expected, monkeypatch):
  # H200 search step: shifted beat cuDNN's grouped conv in float32, lost in bfloat16.
  # On CPU, the fused C++ kernel where it builds (float32 only).
  monkeypatch.setattr(fused_ops, 'available', lambda: False)
  assert ops.resolve_depthwise_impl('auto', dtype, backend) == expected
  assert ops.resolve_depthwise_impl('dense', dtype, backend) == 'dense'  # Named: kept.
  monkeypatch.setattr(fused_ops, 'available', lambda: True)
  fused = backend == 'cpu' and jnp.dtype(dtype) == jnp.float32
  assert ops.resolve_depthwise_impl('auto', dtype, backend) == ('fused' if fused else expected)


# ---------------------------------------------------------------------------- pools


@pytest.mark.parametrize('stride', [1, 2])
def test_avg_pool_excludes_padding_on_ones(stride):
  x = jnp.ones((2, 7, 6, 3), jnp.float32)
  module = ops.make_op('avg_pool_3x3', 3, stride, affine=False, search=False)
  _, y, _ = _init_apply(module, x)
  assert y.shape == (2, 7 if stride == 1 else 4, 6 if stride == 1 else 3, 3)
  # Counting padded zeros would give 4/9 at corners and 6/9 on borders.
  np.testing.assert_array_equal(np.asarray(y), 1.0)


@pytest.mark.parametrize('stride', [1, 2])
def test_avg_pool_values(stride, ref):
  x = np.arange(2 * 5 * 6 * 2, dtype=np.float32).reshape(2, 5, 6, 2) ** 1.5 / 10
  module = ops.make_op('avg_pool_3x3', 2, stride, affine=False, search=False)
  _, y, _ = _init_apply(module, jnp.asarray(x))
  y = np.asarray(y)
  # Hand-computed corner: mean of the 4 in-image cells.
  corner = (x[0, 0, 0, 1] + x[0, 0, 1, 1] + x[0, 1, 0, 1] + x[0, 1, 1, 1]) / 4
  np.testing.assert_allclose(y[0, 0, 0, 1], corner, rtol=1e-6)
  if stride == 1:
    # A top-border (non-corner) cell averages the 6 in-image cells.
    np.testing.assert_allclose(y[1, 0, 2, 0], x[1, 0:2, 1:4, 0].mean(), rtol=1e-6)
    np.testing.assert_allclose(y[1, 2, 2, 0], x[1, 1:4, 1:4, 0].mean(), rtol=1e-6)
  np.testing.assert_allclose(y, ref.pool(x, 'avg', 3, stride, 1), rtol=1e-5)


@pytest.mark.parametrize('stride', [1, 2])
def test_max_pool_pads_with_minus_inf(stride, ref):
  rng = np.random.RandomState(3)
  x = -1.0 - rng.rand(2, 5, 6, 2).astype(np.float32)  # All < -1.
  module = ops.make_op('max_pool_3x3', 2, stride, affine=False, search=False)
  _, y, _ = _init_apply(module, jnp.asarray(x))
  y = np.asarray(y)
  assert np.all(y < -1.0)  # A zero pad would give 0 on the border.
  np.testing.assert_allclose(y[:, 0, 0, :], x[:, 0:2, 0:2, :].max(axis=(1, 2)), rtol=1e-6)
  np.testing.assert_allclose(y, ref.pool(x, 'max', 3, stride, 1), rtol=1e-6)


def test_search_pool_has_bn_and_eval_pool_does_not():
  x = _rand((2, 6, 6, 2))
  for name in ('max_pool_3x3', 'avg_pool_3x3'):
    v_search = ops.make_op(name, 2, 1, affine=False, search=True).init(
        jax.random.PRNGKey(0), x)
    v_eval = ops.make_op(name, 2, 1, affine=False, search=False).init(
        jax.random.PRNGKey(0), x)
    assert set(v_search['batch_stats']['bn']) == {'mean', 'var'}
    assert 'params' not in v_search  # affine=False: nothing trainable.
    assert not v_eval


# ---------------------------------------------------------------- FactorizedReduce


@pytest.mark.parametrize('hw', [(8, 8), (6, 10), (7, 7)])
def test_factorized_reduce_identity_kernels(hw, ref):
  c, half = 4, 2
  h, w = hw
  x = np.random.RandomState(4).randn(3, h, w, c).astype(np.float32)
  k1 = np.zeros((1, 1, c, half), np.float32)
  k2 = np.zeros((1, 1, c, half), np.float32)
  k1[0, 0, 0, 0] = k1[0, 0, 1, 1] = 1.0  # out[0:2] = relu(x)[::2, ::2, 0:2]
  k2[0, 0, 2, 0] = k2[0, 0, 3, 1] = 1.0  # out[2:4] = relu(x)[1::2, 1::2, 2:4]
  module = ops.make_op('skip_connect', c, 2, affine=False, search=True)
  variables = module.init(jax.random.PRNGKey(0), jnp.asarray(x))
  assert variables['params']['conv_1']['kernel'].shape == (1, 1, c, half)
  params = {'conv_1': {'kernel': jnp.asarray(k1)}, 'conv_2': {'kernel': jnp.asarray(k2)}}
  y, updates = module.apply({'params': params, 'batch_stats': variables['batch_stats']},
                            jnp.asarray(x), train=True, mutable=['batch_stats'])
  oh, ow = -(-h // 2), -(-w // 2)
  assert y.shape == (3, oh, ow, c)
  r = np.maximum(x, 0)
  first = r[:, ::2, ::2, 0:2]
  shifted = np.zeros((3, oh, ow, 2))
  sub = r[:, 1::2, 1::2, 2:4]
  shifted[:, :sub.shape[1], :sub.shape[2]] = sub
  pre_bn = np.concatenate([first, shifted], axis=-1)
  np.testing.assert_allclose(np.asarray(y), ref.bn(pre_bn), atol=1e-5)
  # Running mean: PyTorch momentum 0.1 from 0.
  np.testing.assert_allclose(np.asarray(updates['batch_stats']['bn']['mean']),
                             0.1 * pre_bn.mean(axis=(0, 1, 2)), atol=1e-6)


def test_factorized_reduce_random_kernels(ref):
  c = 6
  x = np.random.RandomState(5).randn(2, 8, 8, 4).astype(np.float32)
  module = ops.FactorizedReduce(c, affine=False)
  variables, y, _ = _init_apply(module, jnp.asarray(x))
  k1 = variables['params']['conv_1']['kernel']
  k2 = variables['params']['conv_2']['kernel']
  assert k1.shape == k2.shape == (1, 1, 4, 3)
  np.testing.assert_allclose(np.asarray(y), ref.factorized_reduce(x, k1, k2), atol=1e-5)
  with pytest.raises(ValueError):
    ops.FactorizedReduce(5, affine=False).init(jax.random.PRNGKey(0), jnp.asarray(x))


# ---------------------------------------------------------------- DepthwiseConv

DW_SETTINGS = [(3, 1, 1, 1), (3, 2, 1, 1), (5, 1, 2, 1), (3, 1, 2, 2), (5, 2, 4, 2)]


@pytest.mark.parametrize('k,stride,pad,dil', DW_SETTINGS)
def test_depthwise_impls_agree_with_gradients(k, stride, pad, dil, ref):
  c = 4
  x = _rand((2, 9, 8, c), seed=6)
  kernel = _rand((k, k, 1, c), seed=7, scale=0.3)

  @functools.partial(jax.jit, static_argnums=0)
  def run(impl, x, kernel):
    m = ops.DepthwiseConv(k, stride, pad, dil, impl)
    return m.apply({'params': {'kernel': kernel}}, x)

  expected = ref.conv(x, kernel, stride, pad, dil, depthwise=True)
  outs = {impl: run(impl, x, kernel) for impl in ('conv', 'shifted', 'dense')}
  for impl, y in outs.items():
    assert y.shape == expected.shape, impl
    np.testing.assert_allclose(np.asarray(y), expected, atol=1e-5, err_msg=impl)

  cot = _rand(expected.shape, seed=8)
  grads = {}
  for impl in outs:
    loss = lambda x_, k_, impl=impl: jnp.sum(run(impl, x_, k_) * cot)
    grads[impl] = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, kernel)
  gx, gk = (np.asarray(g) for g in grads['conv'])
  assert np.abs(gk).max() > 0 and np.abs(gx).max() > 0
  for impl in ('shifted', 'dense'):
    np.testing.assert_allclose(np.asarray(grads[impl][0]), gx, atol=1e-5, err_msg=impl)
    np.testing.assert_allclose(np.asarray(grads[impl][1]), gk, atol=1e-5, err_msg=impl)
  # The kernel gradient is also checkable by hand: sum over taps of input * cotangent.
  gk_ref = np.zeros((k, k, 1, c))
  for a, b in itertools.product(range(k), range(k)):
    one = np.zeros((k, k, 1, c))
    one[a, b, 0, :] = 1.0
    gk_ref[a, b, 0] = (ref.conv(x, one, stride, pad, dil, depthwise=True)
                       * np.asarray(cot)).sum(axis=(0, 1, 2))
  np.testing.assert_allclose(gk, gk_ref, atol=1e-4)


# ------------------------------------------------------ conv ops against NumPy


def test_dil_conv_matches_numpy(ref):
  x = np.random.RandomState(9).randn(2, 9, 9, 4).astype(np.float32)
  module = ops.make_op('dil_conv_3x3', 4, 2, affine=False, depthwise_impl='shifted',
                       search=True)
  variables, y, _ = _init_apply(module, jnp.asarray(x), jit=True)
  p = variables['params']
  assert p['dw']['kernel'].shape == (3, 3, 1, 4)
  h = ref.conv(ref.relu(x), p['dw']['kernel'], 2, 2, 2, depthwise=True)
  expected = ref.bn(ref.pointwise(h, p['pw']['kernel']))
  assert y.shape == expected.shape == (2, 5, 5, 4)
  np.testing.assert_allclose(np.asarray(y), expected, atol=1e-4)


def test_sep_conv_matches_numpy(ref):
  x = np.random.RandomState(10).randn(2, 8, 8, 4).astype(np.float32)
  module = ops.make_op('sep_conv_5x5', 4, 2, affine=False, depthwise_impl='dense',
                       search=True)
  variables, y, _ = _init_apply(module, jnp.asarray(x))
  p = variables['params']
  h = ref.conv(ref.relu(x), p['dw1']['kernel'], 2, 2, 1, depthwise=True)
  h = ref.bn(ref.pointwise(h, p['pw1']['kernel']))
  h = ref.conv(ref.relu(h), p['dw2']['kernel'], 1, 2, 1, depthwise=True)  # stride 1
  expected = ref.bn(ref.pointwise(h, p['pw2']['kernel']))
  assert y.shape == expected.shape == (2, 4, 4, 4)
  np.testing.assert_allclose(np.asarray(y), expected, atol=1e-4)


def test_conv_7x1_1x7_matches_numpy(ref):
  x = np.random.RandomState(11).randn(2, 9, 8, 4).astype(np.float32)
  module = ops.make_op('conv_7x1_1x7', 4, 2, affine=False, search=True)
  variables, y, _ = _init_apply(module, jnp.asarray(x))
  p = variables['params']
  assert p['conv_1x7']['kernel'].shape == (1, 7, 4, 4)
  assert p['conv_7x1']['kernel'].shape == (7, 1, 4, 4)
  h = ref.conv(ref.relu(x), p['conv_1x7']['kernel'], (1, 2), ((0, 0), (3, 3)))
  h = ref.conv(h, p['conv_7x1']['kernel'], (2, 1), ((3, 3), (0, 0)))
  expected = ref.bn(h)
  assert y.shape == expected.shape == (2, 5, 4, 4)
  np.testing.assert_allclose(np.asarray(y), expected, atol=1e-4)


# --------------------------------------------------------------------------- Zero


def test_zero_stride2_shape_and_values():
  x = _rand((2, 7, 8, 3)) + 5.0
  y = ops.make_op('none', 3, 2, affine=False, search=True).apply({}, x)
  assert y.shape == x[:, ::2, ::2].shape == (2, 4, 4, 3)
  assert y.dtype == x.dtype
  np.testing.assert_array_equal(np.asarray(y), 0.0)
  y1 = ops.Zero(1).apply({}, x)
  assert y1.shape == x.shape and not np.any(np.asarray(y1))


def test_shifted_depthwise_second_order_and_chunked_kernel_gradient(monkeypatch):
  """The custom VJP of the shifted depthwise conv is itself differentiable (the
  second-order architect differentiates through it), and reducing the kernel
  gradient a few images at a time, or as rows of pixels, gives the whole-batch sums."""
  x = jnp.asarray(_rand((4, 7, 6, 3), seed=1))
  kernel = jnp.asarray(_rand((3, 3, 1, 3), seed=2, scale=0.3))
  cot = jnp.asarray(_rand((4, 4, 3, 3), seed=3))

  def input_grad_norm(impl, k_):
    gx = jax.grad(lambda x_: jnp.sum(ops.depthwise(x_, k_, 2, 1, 1, impl) * cot))(x)
    return jnp.sum(gx ** 2)

  second = {impl: jax.grad(lambda k_, impl=impl: input_grad_norm(impl, k_))(kernel)
            for impl in ('conv', 'shifted')}
  assert np.abs(np.asarray(second['conv'])).max() > 0
  np.testing.assert_allclose(second['shifted'], second['conv'], rtol=1e-4, atol=1e-5)

  kernel_grad = lambda: jax.grad(
      lambda k_: jnp.sum(ops.depthwise(x, k_, 2, 1, 1, 'shifted') * cot))(kernel)
  whole = kernel_grad()
  image_bytes = 4 * 3 * 3 * 4  # one image of the (4, 4, 3, 3) float32 output
  monkeypatch.setattr(functional, 'KERNEL_GRADIENT_CHUNK_BYTES', 2 * image_bytes)
  chunked = kernel_grad()  # 2 chunks of 2 images
  np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-6)
  assert 'scan' in str(jax.make_jaxpr(kernel_grad)())  # the chunked path ran


@pytest.mark.parametrize('impl', ['conv', 'shifted', 'dense'])
def test_relu_input_depthwise_equals_depthwise_of_relu(impl):
  """depthwise(relu_input=True) is depthwise(relu(x)): values, gradients in x and
  kernel, and a second derivative (the exact architect's), against jax.nn.relu."""
  x = jnp.asarray(_rand((3, 7, 6, 4), seed=11))
  kernel = jnp.asarray(_rand((3, 3, 1, 4), seed=12, scale=0.3))
  cot = jnp.asarray(_rand((3, 4, 3, 4), seed=13))
  fused = lambda x_, k_: ops.depthwise(x_, k_, 2, 2, 2, impl, relu_input=True)
  plain = lambda x_, k_: ops.depthwise(jax.nn.relu(x_), k_, 2, 2, 2, impl)
  np.testing.assert_allclose(fused(x, kernel), plain(x, kernel), atol=1e-6)
  first = {}
  second = {}
  for name, f in (('fused', fused), ('plain', plain)):
    loss = lambda x_, k_, f=f: jnp.sum(f(x_, k_) * cot)
    first[name] = jax.grad(loss, argnums=(0, 1))(x, kernel)
    input_grad_norm = lambda k_, loss=loss: jnp.sum(jax.grad(loss)(x, k_) ** 2)
    second[name] = jax.grad(input_grad_norm)(kernel)
  assert float(jnp.sum(first['plain'][0] == 0)) > 0  # the ReLU masked some inputs
  for a, b in zip(first['fused'], first['plain']):
    np.testing.assert_allclose(a, b, atol=1e-5)
  assert np.abs(np.asarray(second['plain'])).max() > 0
  np.testing.assert_allclose(second['fused'], second['plain'], rtol=1e-4, atol=1e-5)


def _saved_residual_bytes(f, *args):
  """Bytes of each tensor f's gradient keeps, from jax's public residual listing."""
  listing = io.StringIO()
  with contextlib.redirect_stdout(listing):
    print_saved_residuals(f, *args)
  sizes = []
  for dtype, dims in re.findall(r'^(\w+)\[([\d,]*)\]', listing.getvalue(), re.M):
    itemsize = 1 if dtype == 'bool' else int(re.sub(r'\D', '', dtype)) // 8  # f32, bf16
    sizes.append(int(np.prod([int(d) for d in dims.split(',') if d])) * itemsize)
  assert sizes, listing.getvalue()
  return sizes


def test_relu_gradient_keeps_only_its_input():
  x = jnp.asarray(_rand((2, 3, 3, 4), seed=14))
  cot = jnp.asarray(_rand((2, 3, 3, 4), seed=15))
  np.testing.assert_array_equal(ops.relu(x), jax.nn.relu(x))
  np.testing.assert_array_equal(jax.grad(lambda z: jnp.sum(ops.relu(z) * cot))(x),
                                jax.grad(lambda z: jnp.sum(jax.nn.relu(z) * cot))(x))
  # x alone; jax.nn.relu keeps more (its output, a boolean mask and a float mask).
  assert _saved_residual_bytes(lambda z: jnp.sum(ops.relu(z)), x) == [x.size * 4]
  assert sum(_saved_residual_bytes(lambda z: jnp.sum(jax.nn.relu(z)), x)) > x.size * 4


def test_mixed_op_gradient_memory_budget():
  """The search mixed op's weight gradient keeps 20 activation-sized tensors of
  its C/K-channel slice: the slice, 6 BatchNorm outputs, 6 depthwise outputs and
  7 for the full-width output and the bypass. Before the ReLUs kept only their
  input it was 33.5 (each ReLU kept 2.25 of its own)."""
  op = supernet.PartialMixedOp(16, 1, 4, genotypes.PRIMITIVES, 'shifted', None, True)
  x = jnp.asarray(_rand((2, 8, 8, 16), seed=16))
  weights = jnp.full((len(genotypes.PRIMITIVES),), 0.125)
  variables = op.init(jax.random.PRNGKey(0), x, weights)

  def loss(params):
    y, _ = op.apply({'params': params, 'batch_stats': variables['batch_stats']}, x, weights,
                    mutable=['batch_stats'])
    return jnp.sum(y * y)

  slice_bytes = x.size // 4 * x.dtype.itemsize
  kept = sum(size for size in _saved_residual_bytes(loss, variables['params'])
             if size >= slice_bytes)
  assert kept == 20 * slice_bytes, kept / slice_bytes


@pytest.mark.parametrize('kind,stride', [('max', 1), ('max', 2), ('avg', 1), ('avg', 2)])
def test_pool_impls_agree_with_gradients(kind, stride):
  x = jnp.asarray(_rand((2, 7, 6, 3), seed=4))
  run = lambda impl, x_: ops.pool_3x3(x_, kind, stride, impl)
  window, shifted = run('conv', x), run('shifted', x)
  assert window.shape == shifted.shape == (2, 7 if stride == 1 else 4, 6 if stride == 1 else 3, 3)
  np.testing.assert_allclose(shifted, window, rtol=1e-6)
  cot = jnp.asarray(_rand(window.shape, seed=5))
  grads = [jax.grad(lambda x_, impl=impl: jnp.sum(run(impl, x_) * cot))(x)
           for impl in ('conv', 'shifted')]
  assert np.abs(np.asarray(grads[0])).max() > 0
  np.testing.assert_allclose(grads[1], grads[0], rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match='pool kind'):
    ops.pool_3x3(x, 'min')


@pytest.mark.parametrize('stride', [1, 2])
def test_shifted_max_pool_keeps_only_the_int8_argmax(stride):
  """The gradient keeps the window's first-maximum index (1 byte per output),
  not the input and output (8 bytes)."""
  x = jnp.asarray(_rand((2, 7, 6, 3), seed=6))
  out_size = ops.pool_3x3(x, 'max', stride, 'shifted').size
  kept = _saved_residual_bytes(lambda z: jnp.sum(ops.pool_3x3(z, 'max', stride, 'shifted')), x)
  assert kept == [out_size], kept


def test_materialize_is_identity_and_survives_compilation():
  """materialize splits XLA:CPU fusions with a conditional; if a compiler
  release folded it away, the op VJPs would silently fuse again (slower)."""
  x = jnp.asarray(_rand((2, 5, 5, 3), seed=7))
  np.testing.assert_array_equal(functional.materialize(x), x)
  cot = jnp.asarray(_rand(x.shape, seed=8))
  np.testing.assert_array_equal(jax.grad(lambda z: jnp.sum(functional.materialize(z) * cot))(x), cot)
  nan_first = x.at[0, 0, 0, 0].set(jnp.nan)  # the other branch: same values
  np.testing.assert_array_equal(functional.materialize(nan_first), nan_first)
  compiled = jax.jit(lambda z: functional.materialize(z * 2.0) + 1.0).lower(x).compile().as_text()
  assert 'conditional' in compiled


@pytest.mark.parametrize('stride', [1, 2])
def test_shifted_max_pool_gradient_goes_to_first_maximum_on_ties(stride):
  """Integer pixels tie often; each output's gradient goes to one input, the
  first maximum of its window (as reduce_window's select-and-scatter and
  PyTorch's max_pool2d do), never split."""
  x = jnp.asarray(np.random.RandomState(0).randint(0, 3, (2, 7, 6, 3)).astype(np.float32))
  y = ops.pool_3x3(x, 'max', stride, 'shifted')
  cot = jnp.asarray(_rand(y.shape, seed=1))
  grads = [jax.grad(lambda x_, impl=impl: jnp.sum(ops.pool_3x3(x_, 'max', stride, impl) * cot))(x)
           for impl in ('conv', 'shifted')]
  np.testing.assert_allclose(grads[1], grads[0], atol=1e-6)
  ones = jax.grad(lambda x_: jnp.sum(ops.pool_3x3(x_, 'max', stride, 'shifted')))(x)
  np.testing.assert_allclose(float(ones.sum()), y.size)  # one unit per output
  assert set(np.unique(np.asarray(ones))) <= set(range(10))  # whole units, no halves


@pytest.mark.parametrize('shape', [(6, 5), (3, 4, 5), (2, 3, 4, 5)])
def test_channel_means_average_every_axis_but_the_last(shape):
  x = _rand(shape, seed=3)
  means = functional.channel_means(jnp.asarray(x), jnp.asarray(x ** 2))
  axes = tuple(range(len(shape) - 1))
  np.testing.assert_allclose(means, np.stack([x.mean(axes), (x ** 2).mean(axes)]), rtol=1e-6)


def test_batch_normalize_gradients_match_autodiff():
  """The memory-saving BatchNorm VJP equals autodiff of the plain formula, with
  cotangents on the statistics too, and to second order (the exact architect)."""
  def plain(x):
    mean = x.mean((0, 1, 2))
    var = jnp.maximum(0.0, jnp.square(x).mean((0, 1, 2)) - jnp.square(mean))
    return (x - mean) * jax.lax.rsqrt(var + ops.BN_EPSILON), mean, var

  custom = lambda x: ops.batch_normalize(x, ops.BN_EPSILON)
  with jax.enable_x64(True):
    x = jnp.asarray(_rand((4, 3, 3, 5), seed=1), jnp.float64)
    cot = tuple(jnp.asarray(_rand(shape, seed=i), jnp.float64)
                for i, shape in enumerate([(4, 3, 3, 5), (5,), (5,)]))
    results = []
    for f in (plain, custom):
      outputs = f(x)
      grad = jax.vjp(f, x)[1](cot)[0]
      second = jax.grad(lambda x_, f=f: jnp.sum(
          jax.grad(lambda z: jnp.sum(f(z)[0] * cot[0]))(x_) ** 2 * jnp.sin(x_)))(x)
      results.append((outputs, grad, second))
  (ref_out, ref_grad, ref_second), (out, grad, second) = results
  for a, b in zip(out, ref_out):
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
  assert np.abs(np.asarray(ref_grad)).max() > 0.1 and np.abs(np.asarray(ref_second)).max() > 1e-6
  np.testing.assert_allclose(grad, ref_grad, rtol=1e-9, atol=1e-12)
  np.testing.assert_allclose(second, ref_second, rtol=1e-7, atol=1e-12)
