"""depthwise_impl='fused': the C++ relu -> depthwise -> 1x1 kernel (XLA FFI, CPU)."""

import os
import platform
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pcdarts_jax.nn import fused_ops
from pcdarts_jax.nn import initializers
from pcdarts_jax.nn import ops
from pcdarts_jax.spaces.darts import supernet
from configs import cifar10_search
from tests import compile_options



@pytest.fixture
def kernel_built():
  if not fused_ops.available():
    pytest.skip('the fused kernel did not build here (no C++ compiler)')


needs_kernel = pytest.mark.usefixtures('kernel_built')

# (k, padding, dilation) of sep_conv_3x3, sep_conv_5x5, dil_conv_3x3, dil_conv_5x5.
CONVS = [(3, 1, 1), (5, 2, 1), (3, 2, 2), (5, 4, 2)]
# The programs here run once: compiled without LLVM's optimizations they compile
# in about two thirds of the CPU time (the kernel itself is built by g++ as always).
_jit = compile_options.jit_once


def _init(module, *args, **kwargs):
  """module.init, compiled (an eager init compiles each op on its own)."""
  return _jit(lambda *a: module.init(jax.random.PRNGKey(0), *a, **kwargs))(*args)


def _rand(shape, seed):
  return jnp.asarray(np.random.RandomState(seed).randn(*shape), jnp.float32)


def _run_python(script, **env):
  """Runs `script` in a fresh CPU-only process of one device from the repository
  root, with `env` added to the environment."""
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', **env}
  env.pop('XLA_FLAGS', None)
  return subprocess.run([sys.executable, '-c', script], env=env, capture_output=True,
                        text=True, timeout=300,
                        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _xla_chain(x, kdw, kpw, padding, dilation, stride=1):
  y = ops.depthwise(x, kdw, stride, padding, dilation, 'shifted', relu_input=True)
  return jnp.einsum('nhwc,co->nhwo', y, kpw[0, 0])


@needs_kernel
@pytest.mark.parametrize('k,padding,dilation', CONVS)
@pytest.mark.parametrize('channels,width,stride', [(4, 8, 1), (8, 8, 1), (16, 4, 1), (4, 4, 1),
                                                   (4, 8, 2), (8, 32, 2), (16, 4, 2)])
def test_kernel_matches_xla_values_and_gradients(k, padding, dilation, channels, width, stride):
  height = 6 if stride == 2 else 5
  x = _rand((3, height, width, channels), 0)
  kdw = _rand((k, k, 1, channels), 1)
  kpw = _rand((1, 1, channels, channels), 2)
  g = _rand((3, height // stride, width // stride, channels), 3)
  assert fused_ops.supports(x.shape, x.dtype, k, stride, padding, dilation, channels)

  def value_and_vjp(fn):
    y, vjp = jax.vjp(lambda *a: fn(*a, padding, dilation, stride), x, kdw, kpw)
    return (y, *vjp(g))

  fused = _jit(lambda: value_and_vjp(fused_ops.relu_depthwise_pointwise))()
  reference = _jit(lambda: value_and_vjp(_xla_chain))()
  for name, a, b in zip(('y', 'dx', 'd_depthwise', 'd_pointwise'), fused, reference):
    assert a.shape == b.shape and a.dtype == jnp.float32, name
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5 * float(jnp.abs(b).max()), err_msg=name)
  # Only x and the kernels are kept for the gradient: the kernel recomputes the rest.
  _, residuals = jax.vjp(lambda a: fused_ops.relu_depthwise_pointwise(a, kdw, kpw, padding,
                                                                      dilation, stride), x)
  kept = [leaf.shape for leaf in jax.tree.leaves(residuals)]
  assert sorted(kept) == sorted([x.shape, kdw.shape, kpw.shape])


@needs_kernel
@pytest.mark.parametrize('k,padding,dilation,stride', [(*CONVS[0], 1), (*CONVS[3], 1),
                                                       (*CONVS[1], 2), (*CONVS[2], 2)])
def test_input_gradient_alone_skips_the_kernel_gradients(k, padding, dilation, stride):
  x, g = _rand((3, 6, 8, 4), 0), _rand((3, 6 // stride, 8 // stride, 4), 3)
  kdw, kpw = _rand((k, k, 1, 4), 1), _rand((1, 1, 4, 4), 2)

  def vjp(argnums):
    fn = lambda *a: jnp.vdot(g, fused_ops.relu_depthwise_pointwise(*a, padding, dilation,
                                                                   stride))
    grad = jax.grad(fn, argnums=argnums)
    return _jit(grad)(x, kdw, kpw), str(jax.make_jaxpr(grad)(x, kdw, kpw))

  (dx_all, d_depthwise, d_pointwise), full = vjp((0, 1, 2))
  dx_alone, alone = vjp(0)
  np.testing.assert_array_equal(dx_alone, dx_all)  # same input gradient, bit for bit
  assert "('kernel_gradients', np.int64(0))" in alone
  assert "('kernel_gradients', np.int64(1))" in full
  # The kernel gradients alone still come out right (and use the full backward).
  (d_depthwise_alone, d_pointwise_alone), kernels = vjp((1, 2))
  assert "('kernel_gradients', np.int64(1))" in kernels
  np.testing.assert_array_equal(d_depthwise_alone, d_depthwise)
  np.testing.assert_array_equal(d_pointwise_alone, d_pointwise)
  reference = _jit(jax.grad(lambda *a: jnp.vdot(g, _xla_chain(*a, padding, dilation, stride)),
                            argnums=(0, 1, 2)))(x, kdw, kpw)
  for a, b in zip((dx_alone, d_depthwise, d_pointwise), reference):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5 * float(jnp.abs(b).max()))


@needs_kernel
@pytest.mark.parametrize('k,padding,dilation,stride', [(*CONVS[0], 1), (*CONVS[3], 1),
                                                       (*CONVS[1], 2), (*CONVS[2], 2)])
def test_kernel_statistics_are_the_output_moments(k, padding, dilation, stride):
  x = _rand((5, 8, 8, 8), 0) + 0.5  # a mean far from 0, as after a ReLU chain
  kdw, kpw = _rand((k, k, 1, 8), 1), _rand((1, 1, 8, 8), 2)
  call = _jit(fused_ops._forward_call, static_argnums=(3, 4, 5, 6))
  y, means = call(x, kdw, kpw, padding, dilation, stride, True)
  y_alone, zeros = call(x, kdw, kpw, padding, dilation, stride, False)
  np.testing.assert_array_equal(y, y_alone)
  np.testing.assert_array_equal(zeros, 0.0)
  y64 = np.asarray(y, np.float64).reshape(-1, 8)
  np.testing.assert_allclose(means, [y64.mean(0), (y64 ** 2).mean(0)], rtol=1e-6, atol=1e-6)
  # Repeated calls (images split over threads) give the same bits.
  np.testing.assert_array_equal(call(x, kdw, kpw, padding, dilation, stride, True)[1], means)


def _chain_then_batch_norm(x, kdw, kpw, padding, dilation, stride, epsilon, axis_name=None):
  return ops.batch_normalize(_xla_chain(x, kdw, kpw, padding, dilation, stride), epsilon,
                             axis_name)


@needs_kernel
@pytest.mark.parametrize('k,padding,dilation,stride', [(*CONVS[1], 1), (*CONVS[2], 2)])
def test_chain_with_its_batch_norm_matches_xla(k, padding, dilation, stride):
  x = _rand((4, 8, 8, 4), 0)
  kdw, kpw = _rand((k, k, 1, 4), 1), _rand((1, 1, 4, 4), 2)
  # Cotangents for the normalized output and for the statistics: the latter are
  # nonzero in a derivative of a gradient.
  cotangents = (_rand((4, 8 // stride, 8 // stride, 4), 3), _rand((4,), 4), _rand((4,), 5))

  def value_and_vjp(fn, argnums):
    out, vjp = jax.vjp(lambda *a: fn(*a, padding, dilation, stride, 1e-5), x, kdw, kpw)
    grads = vjp(cotangents)
    return out, [grads[i] for i in argnums]

  reference = _jit(lambda: value_and_vjp(_chain_then_batch_norm, (0, 1, 2)))()
  for argnums in ((0, 1, 2), (0,)):  # (0,): the input gradient alone (an arch gradient)
    fused = _jit(lambda: value_and_vjp(fused_ops.relu_depthwise_pointwise_normalize,
                                       argnums))()
    for name, a, b in zip(('y', 'mean', 'var'), fused[0], reference[0]):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=name)
    for a, b in zip(fused[1], reference[1]):
      np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * float(jnp.abs(b).max()))


@needs_kernel
def test_chain_with_its_batch_norm_averages_statistics_over_devices():
  # Two shards under a named axis (vmap stands in for pmap): the statistics, and
  # so the outputs and gradients, are those of the whole batch.
  x = _rand((2, 3, 8, 8, 4), 0)
  kdw, kpw = _rand((3, 3, 1, 4), 1), _rand((1, 1, 4, 4), 2)
  g = _rand((2, 3, 8, 8, 4), 3)

  def loss(x, kdw, kpw, g, fn, axis_name):
    y, _, _ = fn(x, kdw, kpw, 1, 1, 1, 1e-5, axis_name)
    return jnp.vdot(g, y)

  sharded = _jit(jax.vmap(jax.value_and_grad(
      lambda *a: loss(*a, fused_ops.relu_depthwise_pointwise_normalize, 'devices'),
      argnums=(0, 1, 2)), in_axes=(0, None, None, 0), axis_name='devices'))(x, kdw, kpw, g)
  whole = _jit(jax.value_and_grad(lambda *a: loss(*a, _chain_then_batch_norm, None),
                                  argnums=(0, 1, 2)))(x.reshape(6, 8, 8, 4), kdw, kpw,
                                                      g.reshape(6, 8, 8, 4))
  np.testing.assert_allclose(sharded[0].sum(), whole[0], rtol=1e-4)
  dx, d_depthwise, d_pointwise = sharded[1]
  np.testing.assert_allclose(dx.reshape(whole[1][0].shape), whole[1][0], rtol=1e-3,
                             atol=1e-4 * float(jnp.abs(whole[1][0]).max()))
  # Each shard's kernel gradient is its own; pmap's step sums (averages) them.
  for a, b in zip((d_depthwise.sum(0), d_pointwise.sum(0)), whole[1][1:]):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * float(jnp.abs(b).max()))

@needs_kernel
def test_kernel_under_vmap_runs_per_edge():
  x = _rand((2, 3, 4, 8, 4), 0)  # (edges, n, h, w, c)
  kdw, kpw = _rand((2, 3, 3, 1, 4), 1), _rand((2, 1, 1, 4, 4), 2)
  fused = jax.vmap(lambda *a: fused_ops.relu_depthwise_pointwise(*a, 1, 1))(x, kdw, kpw)
  reference = jax.vmap(lambda *a: _xla_chain(*a, 1, 1))(x, kdw, kpw)
  np.testing.assert_allclose(fused, reference, rtol=2e-5, atol=1e-5)


def test_supports_only_what_the_kernel_computes():
  ok = dict(x_shape=(2, 8, 8, 4), dtype=jnp.float32, kernel_size=3, stride=1, padding=1,
            dilation=1, features=4)
  assert fused_ops.supports(**ok)
  assert fused_ops.supports(**{**ok, 'stride': 2})  # output rows of 4 x 4 = 16 lanes
  for change in [dict(stride=3), dict(dtype=jnp.bfloat16), dict(features=8),
                 dict(x_shape=(2, 8, 8, 6)), dict(x_shape=(2, 8, 6, 4)),
                 dict(x_shape=(2, 8, 8, 32)), dict(padding=2), dict(x_shape=(2, 8, 128, 4)),
                 dict(stride=2, x_shape=(2, 7, 8, 4)), dict(stride=2, x_shape=(2, 8, 4, 4))]:
    assert not fused_ops.supports(**{**ok, **change}), change


@needs_kernel
@pytest.mark.parametrize('primitive,stride,channels', [
    ('sep_conv_3x3', 1, 4), ('sep_conv_5x5', 1, 8), ('dil_conv_3x3', 1, 4),
    ('dil_conv_5x5', 1, 16),
    ('sep_conv_3x3', 2, 4), ('dil_conv_5x5', 2, 8),
    ('dil_conv_3x3', 1, 6)])  # C 6: XLA throughout
def test_ops_fused_equal_shifted_with_the_same_parameters(primitive, stride, channels):
  x = _rand((4, 8, 8, channels), 0)
  fused = ops.make_op(primitive, channels, stride, affine=False, depthwise_impl='fused',
                      search=True)
  shifted = ops.make_op(primitive, channels, stride, affine=False, depthwise_impl='shifted',
                        search=True)
  variables = _init(shifted, x, train=True)
  assert (jax.tree.map(jnp.shape, jax.eval_shape(lambda: fused.init(jax.random.PRNGKey(0), x,
                                                                    train=True)))
          == jax.tree.map(jnp.shape, variables))

  def loss(params, module):
    y, state = module.apply({**variables, 'params': params}, x, train=True,
                            mutable=['batch_stats'])
    return jnp.sum(jnp.sin(y)), (y, state['batch_stats'])

  step = _jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)
  (_, (y_fused, stats_fused)), g_fused = step(variables['params'], fused)
  (_, (y_ref, stats_ref)), g_ref = step(variables['params'], shifted)
  np.testing.assert_allclose(y_fused, y_ref, rtol=1e-4, atol=1e-4)
  # The running averages (from the kernel's statistics where it runs) agree too.
  assert jax.tree.structure(stats_fused) == jax.tree.structure(stats_ref)
  for a, b in zip(jax.tree.leaves(stats_fused), jax.tree.leaves(stats_ref)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves(g_fused), jax.tree.leaves(g_ref)):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3 * float(jnp.abs(b).max()))


@needs_kernel
@pytest.mark.parametrize('impl,uses_kernel', [('auto', True), ('fused', True), ('shifted', False)])
def test_auto_runs_the_kernel_on_cpu(impl, uses_kernel):
  x = _rand((2, 8, 8, 4), 0)
  op = ops.make_op('sep_conv_3x3', 4, 1, affine=False, depthwise_impl=impl, search=True)
  variables = jax.eval_shape(lambda: op.init(jax.random.PRNGKey(0), x, train=True))
  jaxpr = jax.make_jaxpr(lambda v: op.apply(v, x, train=True, mutable=['batch_stats']))(variables)
  assert ('ffi_call' in str(jaxpr)) == uses_kernel


def _supernet_case():
  """The CIFAR-10 search supernet with 3 cells of C 16 (cell 0: C/K = 4 at 8x8),
  an input batch, shared variables (made from shapes alone: an eager init of
  this supernet takes minutes on a 2-core CI machine) and its loss of (weights,
  arch) with the depthwise form `impl`."""
  config = cifar10_search.get_config()
  config.model.layers, config.model.init_channels = 3, 16
  x = _rand((4, 8, 8, 3), 0)
  variables = initializers.init_variables(supernet.build_supernet(config),
                                          jax.random.PRNGKey(0), x, train=True)

  def loss_of(impl):
    config.model.depthwise_impl = impl
    net = supernet.build_supernet(config)

    def loss(params, arch):
      logits, _ = net.apply({**variables, 'params': params, 'arch': arch}, x, train=True,
                            mutable=['batch_stats'], rngs={'channels': jax.random.PRNGKey(2)})
      return jnp.sum(jax.nn.log_softmax(logits)[:, 0])
    return loss

  return variables, loss_of


@needs_kernel
def test_supernet_arch_gradient_skips_the_kernels_gradients():
  """Traced, not compiled: an architecture gradient through the supernet asks
  no kernel for its weight gradients, and every BatchNorm after a kernel takes
  its statistics from the kernel."""
  variables, loss_of = _supernet_case()
  arch_only = str(jax.make_jaxpr(jax.grad(loss_of('fused'), argnums=1))(
      variables['params'], variables['arch']))
  assert "('kernel_gradients', np.int64(0))" in arch_only
  assert "('kernel_gradients', np.int64(1))" not in arch_only
  assert "('statistics', np.int64(1))" in arch_only
  assert "('statistics', np.int64(0))" not in arch_only


# CI time (two supernet gradients compiled, ~45 s of CPU): the kernel's values
# and gradients against the shifted form are checked op by op above.
@pytest.mark.slow
@needs_kernel
def test_supernet_gradients_fused_equal_shifted():
  variables, loss_of = _supernet_case()
  fused, shifted = (_jit(jax.grad(loss_of(impl), argnums=(0, 1)))(variables['params'],
                                                                  variables['arch'])
                    for impl in ('fused', 'shifted'))
  assert jax.tree.structure(fused) == jax.tree.structure(shifted)
  for a, b in zip(jax.tree.leaves(fused), jax.tree.leaves(shifted)):
    np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-3 * float(jnp.abs(b).max()) + 1e-7)


def test_kernel_compiles_for_the_vector_width_this_cpu_lacks(tmp_path):
  # The kernel has one vector type for AVX-512 and one for CPUs without it
  # (AVX2); the native build (the other tests) covers this CPU's, so the other
  # one is at least compiled here.
  if fused_ops._compiler() is None or platform.machine() != 'x86_64':
    pytest.skip('needs an x86-64 C++ compiler')
  march = 'x86-64-v3' if ' avx512f' in fused_ops._cpu_identity() else 'x86-64-v4'
  # -O0: the same code for that target is compiled (in a fifth of -O3's time).
  flags = [f'-march={march}' if f == '-march=native' else '-O0' if f.startswith('-O') else f
           for f in fused_ops.FLAGS]
  subprocess.run([fused_ops._compiler(), *flags, '-I', jax.ffi.include_dir(),
                  fused_ops.SOURCE, '-o', str(tmp_path / 'k.so')], check=True, timeout=600)
  assert (tmp_path / 'k.so').stat().st_size > 0


def test_failed_build_leaves_no_library(tmp_path, monkeypatch):
  if fused_ops._compiler() is None:
    pytest.skip('no C++ compiler')
  broken = tmp_path / 'broken.cc'
  broken.write_text('this is not C++\n')
  monkeypatch.setattr(fused_ops, 'SOURCE', str(broken))
  target = tmp_path / 'cache' / 'lib.so'
  with pytest.raises(subprocess.CalledProcessError):
    fused_ops.build(str(target))
  assert os.listdir(target.parent) == []


def test_without_a_compiler_fused_falls_back_to_shifted(tmp_path):
  script = textwrap.dedent('''
      import jax, jax.numpy as jnp, numpy as np
      from pcdarts_jax.nn import fused_ops
      from pcdarts_jax.nn import ops
      assert fused_ops.library_path() is None and not fused_ops.available()
      x = jnp.asarray(np.random.RandomState(0).randn(2, 8, 8, 4), jnp.float32)
      out = {}
      for impl in ('fused', 'shifted'):
        op = ops.make_op('sep_conv_3x3', 4, 1, affine=False, depthwise_impl=impl, search=True)
        v = op.init(jax.random.PRNGKey(0), x, train=True)
        out[impl] = op.apply(v, x, train=True, mutable=['batch_stats'])[0]
      np.testing.assert_array_equal(out['fused'], out['shifted'])
      print('FELL BACK')
  ''')
  result = _run_python(script, CXX=str(tmp_path / 'no-such-compiler'),
                       PCDARTS_JAX_CACHE=str(tmp_path / 'cache'))
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'FELL BACK' in result.stdout
  assert 'no C++ compiler' in result.stderr
  assert not (tmp_path / 'cache').exists()


@needs_kernel
def test_concurrent_split_calls_finish_and_are_deterministic():
  """Several kernel calls at once, each split over XLA's intra-op threads: they
  must finish (a caller never waits for a queued task) and give the same
  gradients bit for bit on every run (fixed parts, summed in order)."""
  script = textwrap.dedent('''
      import jax, jax.numpy as jnp, numpy as np
      from pcdarts_jax.nn import fused_ops
      from pcdarts_jax.nn import ops
      assert fused_ops.available()
      rng = np.random.RandomState(0)
      xs = jnp.asarray(rng.randn(6, 7, 8, 8, 4), jnp.float32)  # 6 chains of 7 images
      kdw = jnp.asarray(rng.randn(3, 3, 1, 4), jnp.float32)
      kpw = jnp.asarray(rng.randn(1, 1, 4, 4), jnp.float32)

      def loss(xs, kdw, kpw, chain):
        return sum(jnp.sum(jnp.sin(chain(x, kdw, kpw, 1, 1))) for x in xs)

      def xla_chain(x, kdw, kpw, padding, dilation):
        y = ops.depthwise(x, kdw, 1, padding, dilation, 'shifted', relu_input=True)
        return jnp.einsum('nhwc,co->nhwo', y, kpw[0, 0])

      step = jax.jit(jax.grad(lambda *a: loss(*a, fused_ops.relu_depthwise_pointwise),
                              argnums=(0, 1, 2)))
      first = step(xs, kdw, kpw)
      for _ in range(20):
        for a, b in zip(step(xs, kdw, kpw), first):
          np.testing.assert_array_equal(a, b)
      reference = jax.jit(jax.grad(lambda *a: loss(*a, xla_chain), argnums=(0, 1, 2)),
                          compiler_options={'xla_backend_optimization_level': 0})(xs, kdw, kpw)
      for a, b in zip(first, reference):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.abs(b).max()))
      print('SAME')
  ''')
  result = _run_python(script)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'SAME' in result.stdout


@needs_kernel
@pytest.mark.parametrize('stride', [1, 2])
def test_gradient_of_a_gradient_through_the_kernel(stride):
  """A second reverse pass (the second-order-exact architect's) goes through
  the kernel's backward call: it must equal the XLA chain's."""
  k, padding, dilation = CONVS[1]
  x, kdw, kpw = _rand((2, 6, 8, 4), 0), _rand((k, k, 1, 4), 1), _rand((1, 1, 4, 4), 2)

  def outer(chain):
    def inner(x, kdw, kpw):
      return jnp.sum(jnp.sin(chain(x, kdw, kpw, padding, dilation, stride)))
    def objective(kdw, kpw):  # like L(w - xi * grad_w L(w)), with x as the weights
      gx = jax.grad(inner)(x, kdw, kpw)
      return inner(x - 0.1 * gx, kdw, kpw)
    return _jit(jax.grad(objective, argnums=(0, 1)))(kdw, kpw)

  for a, b in zip(outer(fused_ops.relu_depthwise_pointwise), outer(_xla_chain)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.abs(b).max()))
