"""The program measurement (pcdarts_jax/program.py, launch.benchmark
--measure=program): counts of lowered programs, and the CPU-only devices of ops
and fused_ops chosen per platform when a program is lowered."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from configs import cifar10_search
from pcdarts_jax.bench import benchmark
from pcdarts_jax.nn import fused_ops
from pcdarts_jax.nn import functional
from pcdarts_jax.nn import ops
from pcdarts_jax.bench import program
from pcdarts_jax.spaces.darts import supernet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _counts(fn, *args, platform='cpu'):
  return program.count(program.lower(jax.jit(fn).trace(*args), platform))


def test_loop_bodies_count_times_their_trip_counts():
  """A scan of 7 holding 2 dots and a scan of 3 with 1 dot; a fori_loop from 2
  to 10 with one dot; a while loop whose end depends on data, counted once."""
  w = jnp.eye(4) * 0.5

  def f(x):
    def outer(c, _):
      c = jnp.dot(c, w)
      c, _ = lax.scan(lambda d, _: (jnp.dot(d, w), None), c, None, length=3)
      return jnp.dot(c, w), None
    x, _ = lax.scan(outer, x, None, length=7)
    x = lax.fori_loop(2, 10, lambda i, c: jnp.dot(c, w), x)
    return lax.while_loop(lambda c: jnp.sum(c) > 1e-3, lambda c: jnp.dot(c, w), x)

  c = _counts(f, jnp.ones((4, 4)))
  assert c.executed_dots == 7 * (2 + 3) + 8 + 1
  assert c.while_loops == 1 + 7 + 1 + 1
  assert c.loop_iterations == 7 + 7 * 3 + 8 + 1
  assert c.unknown_trip_count_loops == 1
  assert c.conditionals == 0 and c.executed_convolutions == 0
  # Each loop step compares and steps its counter: more ops than the dots alone.
  assert c.executed_ops > c.executed_dots


def test_functions_count_at_each_call_site_and_conditionals_by_their_costliest_branch():
  w = jnp.eye(4)
  inner = jax.jit(lambda x: jnp.dot(jnp.dot(x, w), w))

  def f(x):
    y = inner(x) + inner(x + 1.0)  # one private function, two calls
    return lax.cond(jnp.sum(y) > 0, lambda a: jnp.tanh(jnp.dot(a, w)), lambda a: -a, y)

  c = _counts(f, jnp.ones((4, 4)))
  assert c.executed_dots == 2 * 2 + 1
  assert c.conditionals == 1


def test_a_platform_choice_carried_through_a_loop_is_no_conditional():
  """A platform choice in a scanned forward pass, differentiated: JAX computes
  the choice once outside the loops and carries it through them."""
  def loss(w, x):
    def body(c, wi):
      return lax.platform_dependent(c, wi, cpu=lambda c, w: jnp.tanh(c * w),
                                    default=lambda c, w: jnp.tanh(c) * w), None
    return jnp.sum(lax.scan(body, x, w)[0])

  w, x = jnp.ones((5, 4, 8)), jnp.ones((4, 8))
  for platform in ('cpu', 'cuda'):
    c = _counts(jax.grad(loss), w, x, platform=platform)
    assert c.conditionals == 0 and c.loop_iterations == 10, platform


def test_materialize_is_a_conditional_on_cpu_only():
  x = jnp.ones((2, 5, 5, 3))
  f = lambda z: functional.materialize(z * 2.0) + 1.0
  assert _counts(f, x, platform='cpu').conditionals == 1
  for platform in ('cuda', 'rocm', 'tpu'):
    assert _counts(f, x, platform=platform).conditionals == 0, platform


def test_kernel_gradient_chunks_in_cpu_programs_only(monkeypatch):
  """The shifted depthwise conv's gradient: on CPU a loop over batch chunks and
  a materialized input gradient; on a GPU neither, and about the same FLOPs."""
  x = jnp.ones((4, 6, 6, 3))
  kernel = jnp.ones((3, 3, 1, 3))
  monkeypatch.setattr(functional, 'KERNEL_GRADIENT_CHUNK_BYTES', 2 * 6 * 6 * 3 * 4)  # 2 images
  grad = jax.grad(lambda x_, k_: jnp.sum(ops.depthwise(x_, k_, 1, 1, 1, 'shifted') ** 2),
                  argnums=(0, 1))
  cpu = _counts(grad, x, kernel, platform='cpu')
  cuda = _counts(grad, x, kernel, platform='cuda')
  assert cpu.while_loops == 1 and cpu.loop_iterations == 2 and cpu.conditionals == 1
  assert cuda.while_loops == 0 and cuda.conditionals == 0
  jaxpr = jax.make_jaxpr(grad)(x, kernel).jaxpr
  # The CPU form adds only the chunks' sums and materialize's branch.
  cpu_flops = benchmark.jaxpr_flops(jaxpr, 'cpu')
  assert 0.95 * cpu_flops < benchmark.jaxpr_flops(jaxpr, 'cuda') < cpu_flops


def test_fold_barrier_is_in_cpu_programs_only():
  """The batched layout's fusion barrier before each edge group."""
  f = lambda x: supernet._fold_boundary(x * 2.0) + 1.0  # pylint: disable=protected-access
  lowered = lambda platform: str(program.lower(jax.jit(f).trace(jnp.ones((2, 3))), platform))
  assert 'optimization_barrier' in lowered('cpu')
  assert 'optimization_barrier' not in lowered('cuda')


needs_kernel = pytest.mark.skipif(not fused_ops.available(),
                                  reason='the fused kernel does not build here')


@needs_kernel
def test_fused_kernel_is_a_custom_call_on_cpu_only():
  x = jnp.ones((2, 8, 8, 4))
  dk, pk = jnp.ones((3, 3, 1, 4)), jnp.ones((1, 1, 4, 4))
  loss = lambda *a: jnp.sum(fused_ops.relu_depthwise_pointwise(*a, 1, 1, 1) ** 2)
  grad = jax.grad(loss, argnums=(0, 1, 2))
  cpu = _counts(grad, x, dk, pk, platform='cpu')
  assert cpu.executed_custom_calls == 2
  assert set(cpu.custom_call_targets) == {'pcdarts_relu_dw_pw_forward',
                                          'pcdarts_relu_dw_pw_backward'}
  cuda = _counts(grad, x, dk, pk, platform='cuda')
  assert cuda.executed_custom_calls == 0 and cuda.custom_call_targets == ()
  assert cuda.executed_dots > 0 and cuda.conditionals == 0


@needs_kernel
@pytest.mark.parametrize('stride', [1, 2])
def test_the_fused_kernels_other_platform_form_computes_the_same(monkeypatch, stride):
  """The XLA form that a program lowered for a GPU gets instead of the kernel:
  its values, statistics and gradients equal the kernel's (run here on CPU by
  taking the default branch of every lax.platform_dependent)."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 8, 8, 4)), jnp.float32)
  dk = jnp.asarray(rng.normal(size=(3, 3, 1, 4)) * 0.3, jnp.float32)
  pk = jnp.asarray(rng.normal(size=(1, 1, 4, 4)) * 0.3, jnp.float32)

  def outputs():
    loss = lambda *a: jnp.sum(jnp.sin(fused_ops.relu_depthwise_pointwise_normalize(
        *a, 1, 1, stride, ops.BN_EPSILON)[0]))
    normalized, mean, var = fused_ops.relu_depthwise_pointwise_normalize(
        x, dk, pk, 1, 1, stride, ops.BN_EPSILON)
    return (normalized, mean, var, *jax.grad(loss, argnums=(0, 1, 2))(x, dk, pk),
            jax.grad(lambda x_: loss(x_, dk, pk))(x))  # kernel gradients skipped

  kernel = outputs()
  monkeypatch.setattr(lax, 'platform_dependent',
                      lambda *args, default, **_: default(*args))
  elsewhere = outputs()
  for a, b in zip(kernel, elsewhere):
    np.testing.assert_allclose(b, a, rtol=2e-5, atol=2e-5)


def _tiny_search_config(**model):
  """float32 unless `model` says otherwise: the platforms' programs then differ
  only in their CPU-only devices (`auto` is bfloat16 on GPUs)."""
  config = cifar10_search.get_config()
  config.model.layers = 2  # a reduction cell and one after it
  config.model.dtype = 'float32'
  for name, value in model.items():
    setattr(config.model, name, value)
  return config


@pytest.fixture(scope='module')
def scan_for_cuda():
  """The tiny search step (C 16, 2 cells, batch 2, float32, `shifted`, the scan
  layout) measured as lowered for CUDA: shared by the tests below (a lowering
  takes tens of seconds of CPU)."""
  config = _tiny_search_config(depthwise_impl='shifted', edge_impl='scan')
  return config, benchmark.measure_program(config, 2, 'cuda')


def test_search_step_lowered_for_a_gpu_has_no_cpu_only_device(scan_for_cuda):
  """For CUDA only the warm-up gate and the non-finite guard are conditionals,
  no custom call; the CPU program keeps materialize's conditionals (shifted
  form) at the same FLOPs."""
  config, cuda = scan_for_cuda
  cpu = benchmark.measure_program(config, 2, 'cpu')
  assert cuda['target_platform'] == 'cuda' and cuda['depthwise_impl'] == 'shifted'
  assert cuda['edge_impl'] == 'scan'
  assert cuda['conditionals'] == 2
  assert cuda['executed_custom_calls'] == 0
  assert cpu['conditionals'] > cuda['conditionals']
  assert cpu['executed_convolutions'] == cuda['executed_convolutions']
  assert cpu['executed_dots'] == cuda['executed_dots']
  # The CPU form adds only materialize's branch and the chunks' sums.
  assert cuda['flops_per_step'] < cpu['flops_per_step'] < 1.02 * cuda['flops_per_step']
  # 14 edges in 2 scans per cell, each loop counted with its trip count.
  assert cuda['while_loops'] >= 2 * 2 * 2 and cuda['loop_iterations'] >= 2 * 2 * 14
  assert cuda['unknown_trip_count_loops'] == 0
  assert 0 < cuda['module_ops'] < cuda['executed_ops']


def test_auto_choices_follow_the_target_platform():
  config = _tiny_search_config(depthwise_impl='auto', dtype='bfloat16')
  assert benchmark.for_platform(config, 'cuda', 'first_order').model.depthwise_impl == 'conv'
  config = _tiny_search_config(depthwise_impl='auto')
  assert benchmark.for_platform(config, 'cuda', 'first_order').model.depthwise_impl == 'shifted'
  assert benchmark.for_platform(config, 'tpu', 'first_order').model.depthwise_impl == 'conv'
  # The C++ kernel is XLA:CPU's: asked for on a GPU, ops run shifted.
  config = _tiny_search_config(depthwise_impl='fused')
  assert benchmark.for_platform(config, 'cuda', 'first_order').model.depthwise_impl == 'shifted'
  # dtype `auto` (the search configs' default): bfloat16 on accelerators, then `conv`.
  config = _tiny_search_config(depthwise_impl='auto', dtype='auto')
  for platform, dtype, impl in (('cuda', 'bfloat16', 'conv'), ('rocm', 'bfloat16', 'conv'),
                                ('tpu', 'bfloat16', 'conv'), ('cpu', 'float32', None)):
    model = benchmark.for_platform(config, platform, 'first_order').model
    assert model.dtype == dtype and (impl is None or model.depthwise_impl == impl)
  assert config.model.dtype == 'auto'  # the caller's config is left as it was


def test_counts_move_with_the_edge_layout(scan_for_cuda):
  """The batched layout runs each cell's edges as 4 groups: fewer executed ops,
  convolutions + matrix products and loops than one scan step per edge (its
  1x1 convs are block-diagonal matrix products: more FLOPs). The grouped
  layout (one stage per source, unrolled) meets issue #39's proxy target: at
  most 2 conditionals and at least 5x fewer convolutions + matrix products
  than the scan (float32, `shifted`: 108 against 965 here)."""
  _, scan = scan_for_cuda
  batched = benchmark.measure_program(_tiny_search_config(edge_impl='batched'), 2, 'cuda')
  assert batched['edge_impl'] == 'batched'
  assert batched['executed_ops'] < scan['executed_ops']
  assert batched['while_loops'] < scan['while_loops']
  assert batched['conditionals'] == scan['conditionals'] == 2  # no fold barrier either
  assert (batched['executed_convolutions'] + batched['executed_dots']
          < scan['executed_convolutions'] + scan['executed_dots'])
  grouped = benchmark.measure_program(_tiny_search_config(edge_impl='grouped'), 2, 'cuda')
  assert grouped['edge_impl'] == 'grouped' and grouped['depthwise_impl'] == 'shifted'
  assert grouped['conditionals'] <= 2 and grouped['while_loops'] == 0
  assert (5 * (grouped['executed_convolutions'] + grouped['executed_dots'])
          <= scan['executed_convolutions'] + scan['executed_dots'])



def _launch(*args):
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, '-m', 'launch.benchmark',
                         '--config=configs/digits_search.py', '--config.model.init_channels=4',
                         '--config.model.layers=2', *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=900)


def test_launcher_prints_one_program_line_per_architect():
  result = _launch('--measure=program', '--platform=cuda', '--batch_size=4')
  assert result.returncode == 0, result.stderr[-3000:]
  lines = [json.loads(l) for l in result.stdout.splitlines() if l.startswith('{')]
  assert len(lines) == 1
  r = lines[0]
  assert r['measurement'] == 'program' and r['architect'] == 'first_order'
  assert r['target_platform'] == 'cuda' and r['platform'] == 'cpu'  # lowered here, for cuda
  assert r['batch_size'] == 4 and r['config'] == 'configs/digits_search.py'
  # The config's dtype `auto` as a GPU resolves it; its depthwise form is its own.
  assert r['dtype'] == 'bfloat16' and r['depthwise_impl'] == 'dense'
  assert not {'data', 'steps', 'warmup', 'ms_per_step_median'} & set(r)  # nothing ran
  for field in ('executed_ops', 'executed_convolutions', 'executed_dots', 'conditionals',
                'while_loops', 'loop_iterations', 'executed_custom_calls', 'module_ops'):
    assert isinstance(r[field], int), field
  assert r['executed_convolutions'] > 0 and r['executed_dots'] > 0
  assert r['flops_per_step'] > 0 and r['lowering_seconds'] > 0
  assert 'cuda' in result.stderr  # the table


@pytest.mark.parametrize('args,message', [
    (('--measure=program', '--platform=gpu'), "--platform='gpu' is not one of"),
    (('--measure=bilevel_step', '--platform=cuda'), '--platform applies to --measure=program'),
])
def test_launcher_refuses_a_bad_platform_in_one_line(args, message):
  result = _launch(*args)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [result.stderr.strip()]
  assert message in result.stderr
