"""The benchmark launcher on a tiny config: well-formed JSON with every field."""

import glob
import json
import os
import subprocess
import sys

import pytest

from pcdarts_jax.nn import fused_ops

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIELDS = {
    'measurement': str, 'architect': (str, type(None)), 'batch_size': int,
    'compile_seconds': float, 'ms_per_step_median': float, 'ms_per_step_p10': float,
    'ms_per_step_p90': float, 'images_per_second': float, 'peak_memory_bytes': int,
    'memory_kind': str, 'flops_per_step': (float, type(None)),
    'flops_per_second': (float, type(None)), 'device_kind': str, 'device_count': int,
    'jax_version': str, 'config_digest': str, 'config': str, 'depthwise_impl': str,
    'dtype': str, 'data': str, 'steps': int, 'warmup': int, 'platform': str,
    'edge_impl': str, 'merge_separable': bool, 'unroll_edges': bool, 'bilevel_phases': str,
    'step_memory_bytes': (int, type(None)),
    'stepping_peak_rss_bytes': (int, type(None)), 'xla_flops_per_step': (float, type(None)),
    'trace': type(None), 'xla_flags': str, 'stage': type(None), 'timed_while_compiling': bool,
}
# One (reduction) cell: each measurement compiles its own step, so CI time.
TINY = ['--config=configs/digits_search.py', '--config.model.init_channels=4',
        '--config.model.layers=1']


def _env():
  """The launcher's environment. Its programs run a few steps each, so they are
  compiled without LLVM's optimizations (about two thirds of the compile time;
  what is asserted here are counts and relations, not speeds)."""
  flags = ' '.join(filter(None, [os.environ.get('XLA_FLAGS', ''),
                                 '--xla_backend_optimization_level=0']))
  return dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS='cpu', XLA_FLAGS=flags)


def _run(*args):
  return subprocess.run([sys.executable, '-m', 'launch.benchmark', *TINY, *args], cwd=REPO,
                        env=_env(), capture_output=True, text=True, timeout=900)


def test_benchmark_emits_every_field(tmp_path):
  out = tmp_path / 'bench.jsonl'
  out.write_text('{"earlier": 1}\n')
  result = _run('--batch_size=8', '--steps=3', '--warmup=1', f'--out={out}')
  assert result.returncode == 0, result.stderr[-3000:]
  lines = [json.loads(l) for l in result.stdout.splitlines() if l.startswith('{')]
  assert [(r['measurement'], r['architect']) for r in lines] == [
      ('weight_step', None), ('arch_step', 'first_order'), ('bilevel_step', 'first_order'),
      ('pipeline', None), ('fed_step', 'first_order')]
  for r in lines:
    for field, kind in FIELDS.items():
      assert field in r, (r['measurement'], field)
      if r['measurement'] == 'fed_step' and field in ('ms_per_step_p10', 'ms_per_step_p90'):
        continue  # One wall time over the loop: no per-step spread.
      assert isinstance(r[field], kind), (r['measurement'], field, r[field])
    assert r['batch_size'] == 8 and r['device_count'] >= 1 and len(r['config_digest']) == 12
    assert r['xla_flags'] == _env()['XLA_FLAGS']  # What the figures were taken under.
    assert r['ms_per_step_median'] > 0
    assert r['images_per_second'] == pytest.approx(8 / (r['ms_per_step_median'] / 1e3))
    assert r['memory_kind'] == 'process_peak_rss' and r['peak_memory_bytes'] > 10 * 2 ** 20
  by_name = {r['measurement']: r for r in lines}
  for name in ('weight_step', 'arch_step', 'bilevel_step'):
    assert by_name[name]['flops_per_step'] > 0 and by_name[name]['compile_seconds'] > 0
    assert by_name[name]['flops_per_second'] == pytest.approx(
        by_name[name]['flops_per_step'] / (by_name[name]['ms_per_step_median'] / 1e3))
    # The edges are scanned: XLA counts one edge per scan, the jaxpr count all.
    assert by_name[name]['flops_per_step'] > 2 * by_name[name]['xla_flops_per_step']
    assert by_name[name]['ms_per_step_p10'] <= by_name[name]['ms_per_step_median'] <= \
        by_name[name]['ms_per_step_p90']
    # XLA's planned buffers of a step: more than the state it carries, less than the process.
    assert 0 < by_name[name]['step_memory_bytes'] < by_name[name]['peak_memory_bytes']
  assert by_name['pipeline']['step_memory_bytes'] is None
  if os.path.exists('/proc/self/clear_refs'):  # Linux: RSS of stepping, compile excluded.
    for name in ('weight_step', 'arch_step', 'bilevel_step', 'fed_step'):
      assert 0 < by_name[name]['stepping_peak_rss_bytes'] <= by_name[name]['peak_memory_bytes']
  assert by_name['weight_step']['edge_impl'] in ('scan', 'batched')
  # The bilevel step does the weight step's work and the arch step's.
  assert by_name['bilevel_step']['flops_per_step'] >= by_name['weight_step']['flops_per_step']
  # digits: 1500 train images, half for the weights; 12 epochs, arch steps from epoch 4.
  bilevel, weight = by_name['bilevel_step'], by_name['weight_step']
  assert bilevel['projected_search_minutes'] == pytest.approx(
      750 // 8 * (4 * weight['ms_per_step_median'] + 8 * bilevel['ms_per_step_median']) / 6e4)
  assert by_name['fed_step']['projected_search_minutes'] > 0
  assert 'projected_search_minutes' not in by_name['pipeline']
  assert 'ms/step' in result.stderr  # The human table.
  saved = [json.loads(l) for l in out.read_text().splitlines()]
  assert saved[0] == {'earlier': 1} and saved[1:] == lines  # Appended.


def test_benchmark_of_a_training_config(tmp_path):
  env = _env()
  result = subprocess.run(
      [sys.executable, '-m', 'launch.benchmark', '--config=configs/digits_train.py',
       '--config.model.init_channels=4', '--config.model.layers=3', '--batch_size=16',
       '--steps=2', '--warmup=1'], cwd=REPO, env=env, capture_output=True, text=True,
      timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = [json.loads(l) for l in result.stdout.splitlines() if l.startswith('{')]
  assert [r['measurement'] for r in lines] == ['train_step', 'eval_step']
  train, evaluate = lines
  for r in lines:
    assert r['data'] == 'digits' and r['batch_size'] == 16 and r['edge_impl'] is None
    assert r['merge_separable'] is None
    assert r['bilevel_phases'] is None
    assert r['flops_per_step'] > 0 and r['ms_per_step_median'] > 0
  # Forward and backward (and the update) cost more than the forward alone.
  assert train['flops_per_step'] > 2 * evaluate['flops_per_step']
  # digits: 1500 train images, 10 epochs.
  assert train['projected_train_minutes'] == pytest.approx(
      10 * (1500 // 16) * train['ms_per_step_median'] / 6e4)
  assert 'whole train projected' in result.stderr
  bad = subprocess.run(
      [sys.executable, '-m', 'launch.benchmark', '--config=configs/digits_train.py',
       '--measure=bilevel_step'], cwd=REPO, env=env, capture_output=True, text=True,
      timeout=300)
  assert bad.returncode == 2
  assert '--measure=bilevel_step' in bad.stderr and 'train_step' in bad.stderr


def test_benchmark_rejects_an_unknown_measurement():
  result = _run('--measure=weight_step,bogus')
  assert result.returncode == 2
  assert "--measure=bogus" in result.stderr and 'weight_step' in result.stderr


@pytest.mark.skipif(not os.path.exists('/proc/self/clear_refs'), reason='Linux peak-RSS reset')
def test_stepping_peak_rss_excludes_what_came_before_the_reset():
  from pcdarts_jax.bench import benchmark  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  big = np.ones(256 * 2 ** 18, np.float32)  # 256 MiB, touched.
  before = benchmark.peak_rss_since_reset()
  del big
  assert benchmark.reset_peak_rss()
  after = benchmark.peak_rss_since_reset()
  assert after < before - 200 * 2 ** 20
  # The process peak stays (up to the kernel's lazy accounting, some pages).
  assert benchmark.peak_memory()['peak_memory_bytes'] >= before - 2 ** 20
  small = np.ones(64 * 2 ** 18, np.float32)  # 64 MiB more is counted again.
  assert benchmark.peak_rss_since_reset() >= after + 60 * 2 ** 20
  del small


def _flops_and_xla(fn, *args):
  import jax  # pylint: disable=import-outside-toplevel
  from pcdarts_jax.bench import benchmark  # pylint: disable=import-outside-toplevel
  traced = jax.jit(fn).trace(*args)
  return (benchmark.jaxpr_flops(traced.jaxpr.jaxpr),
          traced.lower().compile().cost_analysis()['flops'])


def test_flop_count_matches_xla_on_convs_and_counts_every_scan_iteration():
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 9, 9, 6))
  w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 6, 8))

  def conv(x, w, stride):
    return jax.lax.conv_general_dilated(x, w, (stride, stride), 'SAME',
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

  # Padding taps and the holes of a strided conv's input gradient are not work.
  for stride in (1, 2):
    ours, xla = _flops_and_xla(
        jax.grad(lambda x, w: jnp.sum(conv(x, w, stride)) ** 2, argnums=(0, 1)), x, w)
    assert ours == pytest.approx(xla, rel=1e-4), stride  # up to a few scalar ops
  # By hand: per axis 9 outputs x 3 taps, less the 2 that read padding.
  ours, _ = _flops_and_xla(lambda x, w: conv(x, w, 1), x, w)
  assert ours == 2 * 4 * 8 * 6 * 25 ** 2
  m = jnp.ones((32, 32))
  ws = jnp.ones((10, 32, 32))
  scanned = lambda m, ws: jax.lax.scan(lambda c, w: (c @ w, None), m, ws)[0]
  ours, xla = _flops_and_xla(scanned, m, ws)
  assert ours == 10 * 2 * 32 ** 3
  assert xla < ours / 5  # Why the benchmark does not report XLA's figure as the FLOPs.


def test_flop_count_of_phases_counts_each_branch_once():
  """A switch on the scanned iteration with one branch per iteration (the
  bilevel step's arch and weight phases) runs each branch once; a cond that
  does not follow the iteration counts its costliest branch per iteration."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  m = jnp.ones((16, 16))
  cheap, costly = lambda c: c + 1.0, lambda c: c @ c  # 256 and 2 * 16 ** 3 FLOPs

  def phases(m):
    body = lambda c, phase: (jax.lax.switch(phase, [cheap, costly], c), None)
    return jax.lax.scan(body, m, jnp.arange(2))[0]

  def carried_switch(m):
    body = lambda c, _: (jax.lax.cond(jnp.sum(c) > 0, costly, cheap, c), None)
    return jax.lax.scan(body, m, jnp.arange(2))[0]

  assert benchmark_flops(phases, m) == 256 + 2 * 16 ** 3
  assert benchmark_flops(carried_switch, m) >= 2 * (2 * 16 ** 3)


def test_flop_count_of_scans_without_num_consts_params():
  """JAX 0.11 (the H200 image's) gives scans no num_consts/num_carry params;
  the count finds the scanned inputs by their extra leading axis, so it is the
  same, phase switches included, with those params or without them."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from pcdarts_jax.bench import benchmark  # pylint: disable=import-outside-toplevel
  m = jnp.ones((16, 16))
  cheap, costly = lambda c: c + 1.0, lambda c: c @ c

  def phases(m, ws):  # A constant (m @ w), a carry, and two scanned inputs.
    body = lambda c, xs: (jax.lax.switch(xs[0], [cheap, costly], c @ xs[1] + m), None)
    return jax.lax.scan(body, m, (jnp.arange(2), ws))[0]

  jaxpr = jax.jit(phases).trace(m, jnp.ones((2, 16, 16))).jaxpr.jaxpr
  (scan,) = [e for e in jaxpr.eqns if e.primitive.name == 'scan']
  params = {k: v for k, v in scan.params.items() if k not in ('num_consts', 'num_carry')}
  expected = 256 + 2 * 16 ** 3 + 2 * (2 * 16 ** 3 + 256)  # branches once, body twice
  assert benchmark._scan_flops(scan) == expected  # pylint: disable=protected-access
  assert benchmark._scan_flops(scan.replace(params=params)) == expected  # pylint: disable=protected-access


def benchmark_flops(fn, *args):
  import jax  # pylint: disable=import-outside-toplevel
  from pcdarts_jax.bench import benchmark  # pylint: disable=import-outside-toplevel
  return benchmark.jaxpr_flops(jax.jit(fn).trace(*args).jaxpr.jaxpr)


def test_trace_dir_holds_a_profile_of_each_traced_measurement(tmp_path):
  traces, lock = tmp_path / 'traces', tmp_path / 'gpu.lock'
  result = _run('--batch_size=4', '--steps=2', '--warmup=1', '--measure=weight_step,pipeline',
                '--config.model.depthwise_impl=auto', f'--trace_dir={traces}',
                f'--device_lock={lock}')
  assert result.returncode == 0, result.stderr[-3000:]
  assert lock.exists() and _lock_is_free(lock)  # Used, and released at the end.
  lines = {r['measurement']: r for r in map(json.loads, (
      l for l in result.stdout.splitlines() if l.startswith('{')))}
  assert lines['weight_step']['trace'] == str(traces / 'weight_step_b4')
  # What `auto` ran on the CPU: the C++ kernel where it builds.
  assert lines['weight_step']['depthwise_impl'] == (
      'fused' if fused_ops.available() else 'shifted')
  assert lines['pipeline']['trace'] is None  # Host work alone: nothing to profile.
  assert os.listdir(traces) == ['weight_step_b4']
  profiles = glob.glob(str(traces / 'weight_step_b4' / '**' / '*.xplane.pb'), recursive=True)
  assert len(profiles) == 1 and os.path.getsize(profiles[0]) > 1000


def test_iter_run_yields_each_result_before_a_later_failure(monkeypatch):
  from configs import digits_search  # pylint: disable=import-outside-toplevel
  from pcdarts_jax.bench import benchmark  # pylint: disable=import-outside-toplevel
  config = digits_search.get_config()
  config.model.init_channels, config.model.layers = 4, 2

  def crash(*args, **kwargs):
    raise RuntimeError('compiler crashed')

  monkeypatch.setattr(benchmark.SearchBench, 'arch_step', crash)
  results = benchmark.iter_run(config, ['pipeline', 'arch_step'], 8, steps=2, warmup=0)
  first = next(results)
  assert first['measurement'] == 'pipeline' and first['ms_per_step_median'] > 0
  with pytest.raises(RuntimeError, match='compiler crashed'):
    next(results)


def test_stage_overrides_prune_as_the_search_does():
  from configs import drnas_cifar10_search  # pylint: disable=import-outside-toplevel
  from configs import digits_search  # pylint: disable=import-outside-toplevel
  from pcdarts_jax.bench import benchmark  # pylint: disable=import-outside-toplevel
  config = drnas_cifar10_search.get_config()  # stages: k (6, 4), ops kept (7, 4)
  assert benchmark.stage_overrides(config, None) == {}
  assert benchmark.stage_overrides(config, 1) == {'partial_channels': 6, 'op_masks': None}
  second = benchmark.stage_overrides(config, 2)
  assert second['partial_channels'] == 4 and sorted(second['op_masks']) == ['normal', 'reduce']
  for mask in second['op_masks'].values():
    assert mask.shape == (14, 7) and (mask.sum(-1) == 4).all()
  # Fixed seed: every run measures the same supernet; the two cells prune differently.
  again = benchmark.stage_overrides(config, 2)['op_masks']
  assert all((again[k] == second['op_masks'][k]).all() for k in again)
  assert (second['op_masks']['normal'] != second['op_masks']['reduce']).any()
  with pytest.raises(ValueError, match=r'--stage=3 .* stages 1\.\.2'):
    benchmark.stage_overrides(config, 3)
  # Without search.stage_epochs a search has one stage: the config's K, every op.
  assert benchmark.stage_overrides(digits_search.get_config(), 1)['op_masks'] is None
  with pytest.raises(ValueError, match='--stage=2'):
    benchmark.stage_overrides(digits_search.get_config(), 2)


def test_stage_two_program_runs_only_the_kept_ops():
  from configs import drnas_digits_search  # pylint: disable=import-outside-toplevel
  from pcdarts_jax.bench import benchmark  # pylint: disable=import-outside-toplevel
  from pcdarts_jax.bench import program  # pylint: disable=import-outside-toplevel
  config = drnas_digits_search.get_config()  # 7 ops, then the top 4 per edge
  config.model.init_channels, config.model.layers = 4, 1
  counts = {stage: program.count(program.lower(benchmark.trace_search_step(config, 8, stage),
                                               'cpu'))
            for stage in (1, 2)}
  # 4 of 7 ops per edge: of the parametrised ops (4 of the 7) fewer run.
  assert counts[2].executed_convolutions < counts[1].executed_convolutions
  assert counts[2].executed_ops < counts[1].executed_ops


def test_projected_search_time():
  from configs import cifar10_search  # pylint: disable=import-outside-toplevel
  from pcdarts_jax.bench import benchmark  # pylint: disable=import-outside-toplevel
  config = cifar10_search.get_config()  # 50 epochs, arch steps from epoch 15
  # 25,000 weight images at batch 256: 97 steps an epoch.
  both = benchmark.project_search(config, 25000, 256, bilevel_ms=300.0, weight_ms=100.0)
  assert both['projected_search_minutes'] == pytest.approx(97 * (15 * 100 + 35 * 300) / 6e4)
  bound = benchmark.project_search(config, 25000, 256, bilevel_ms=300.0)
  assert bound['projected_search_minutes'] == pytest.approx(97 * 50 * 300 / 6e4)
  assert 'upper bound' in bound['projection']
  assert benchmark.project_search(config, None, 256, 300.0)['projected_search_minutes'] is None
  config.search.arch_start_epoch = 0  # DARTS: arch steps from the start, no bound.
  darts = benchmark.project_search(config, 25000, 256, bilevel_ms=300.0, weight_ms=100.0)
  assert darts['projected_search_minutes'] == pytest.approx(97 * 50 * 300 / 6e4)
  assert 'upper bound' not in darts['projection']


def _lock_is_free(path) -> bool:
  import fcntl  # pylint: disable=import-outside-toplevel
  with open(path, 'a') as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      return False
    fcntl.flock(f, fcntl.LOCK_UN)
    return True


def test_device_lock_is_held_through_warm_up_and_timed_steps_only(tmp_path):
  import jax  # pylint: disable=import-outside-toplevel
  from pcdarts_jax.bench import benchmark  # pylint: disable=import-outside-toplevel
  lock = tmp_path / 'gpu.lock'
  seen = []

  def step(x):
    jax.debug.callback(lambda: seen.append(_lock_is_free(lock)))
    return (x + 1,)

  compiled, _, _ = benchmark.compile_timed(jax.jit(step), (1.0,))
  assert not seen  # Compiling runs no step.
  figures = benchmark.time_jitted(None, (1.0,), steps=3, warmup=2, carry_state=True,
                                  precompiled=(compiled, 0.0, None), device_lock=str(lock))
  assert seen[-5:] == [False] * 5  # Another benchmark's lock attempt waits on every step.
  assert _lock_is_free(lock)  # Released afterwards.
  assert figures['ms_per_step_median'] > 0


def test_steps_wait_until_no_benchmark_of_the_lock_compiles(tmp_path, monkeypatch):
  """Benchmarks sharing a device lock step only once none of them compiles: the
  JAX launcher's `holding` and the PyTorch reference's both wait for another
  process's compile mark, at most QUIET_WAIT_SECONDS (then they step and say
  so), and a process's own mark does not block it."""
  import fcntl  # pylint: disable=import-outside-toplevel
  import importlib  # pylint: disable=import-outside-toplevel
  import threading  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  from pcdarts_jax.bench import benchmark  # pylint: disable=import-outside-toplevel
  torch_reference = importlib.import_module('launch.torch_reference')
  lock = str(tmp_path / 'gpu.lock')
  for module in (benchmark, torch_reference):
    holding = getattr(module, 'holding', None) or module._holding  # pylint: disable=protected-access
    other = open(lock + '.compiling', 'a')  # Another benchmark, compiling.
    fcntl.flock(other, fcntl.LOCK_SH)
    entered = []

    def step(holding=holding, entered=entered):
      with holding(lock) as quiet:
        entered.append(quiet)

    thread = threading.Thread(target=step)
    thread.start()
    thread.join(0.5)
    assert not entered  # Waits while the other compiles...
    fcntl.flock(other, fcntl.LOCK_UN)
    thread.join(30)
    assert entered == [True]  # ...and steps once it is done.
    fcntl.flock(other, fcntl.LOCK_SH)  # A compile that outlasts the wait:
    monkeypatch.setattr(module, 'QUIET_WAIT_SECONDS', 0.3)
    with holding(lock) as quiet:
      assert quiet is False  # stepped anyway, and said so.
    other.close()
  benchmark.compiling(lock)  # This process's own mark:
  with benchmark.holding(lock) as quiet:  # given up while it steps,
    assert quiet and _lock_is_free(lock + '.compiling') is False  # (held exclusively)
  assert lock in benchmark._COMPILING  # pylint: disable=protected-access  # taken again after,
  benchmark.done_compiling(lock)
  assert _lock_is_free(lock + '.compiling')  # and ended.
  figures = benchmark.time_jitted(jax.jit(lambda x: (x + 1,)), (1.0,), steps=2, warmup=0,
                                  carry_state=True, device_lock=lock)
  assert figures['timed_while_compiling'] is False


def test_gpu_bench_all_times_the_layouts_then_searches_in_the_fastest(tmp_path):
  """launch/gpu_bench.sh all, the one call a lent GPU gets, run through on CPU
  with a one-cell config: the grouped and merged layouts in float32 and bfloat16,
  each measured with its own layout and dtype and under the XLA_FLAGS given; the
  PyTorch rows (no GPU here) carry their error and the summary is still written;
  then a whole launch.search on random CIFAR-shaped arrays in the layout of the
  fastest bfloat16 row, arch steps after one epoch, with its summary, epoch times
  and projection in search_summary.json and no image file left behind."""
  env = dict(_env(), PYTHON=sys.executable, BATCH='4', STEPS='1', WARMUP='0',
             CONFIG='configs/digits_search.py', EXTRA_FLAGS=' '.join(TINY[1:]),
             SEARCH_EPOCHS='2', SEARCH_IMAGES='640', ALL_ARCH_START='1',
             SEARCH_FLAGS='--config.model.init_channels=4 --config.model.layers=1 '
                          '--config.search.batch_size=32 --config.search.eval_batch_size=64')
  result = subprocess.run(['bash', 'launch/gpu_bench.sh', 'all', str(tmp_path)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  variants = json.load(open(tmp_path / 'summary.json'))['variants']
  layouts = {'grouped': ('grouped', False), 'merged': ('grouped', True)}
  jax_rows = {f'{name}_{dtype}': (layout, dtype)
              for name, layout in layouts.items() for dtype in ('float32', 'bfloat16')}
  assert set(variants) == set(jax_rows) | {'torch_eager', 'torch_compile'}
  for name, ((edge_impl, merged), dtype) in jax_rows.items():
    row = variants[name]
    assert 'error' not in row, row
    assert row['ms_per_step_median'] > 0 and row['batch_size'] == 4
    assert (row['edge_impl'], row['merge_separable'], row['dtype']) == (edge_impl, merged,
                                                                         dtype)
    assert row['xla_flags'] == env['XLA_FLAGS']
  for name in ('torch_eager', 'torch_compile'):
    if 'error' not in variants[name]:  # a machine with CUDA and torch
      assert variants[name]['ms_per_step_median'] > 0
  fastest = min(('grouped_bfloat16', 'merged_bfloat16'),
                key=lambda name: variants[name]['ms_per_step_median'])
  summary = json.load(open(tmp_path / 'search_summary.json'))
  merged = 'merge_separable=True' in summary['flags']
  assert ('edge_impl=grouped' in summary['flags'] and merged == (fastest == 'merged_bfloat16'))
  assert summary['exit_status'] == 0 and summary['wall_seconds'] >= 1
  run = summary['search_summary']
  assert run['epochs'] == 2 and run['steps'] == 2 * (640 // 2 // 32)  # the weight half
  assert run['compile_seconds'] > 0 and run['stepping_seconds'] > 0
  assert summary['arch_start_epoch'] == 1 and len(summary['epoch_seconds']) == 2
  # folder_search's own arch start (15) is past these 2 epochs: one more weight-step
  # epoch instead of the bilevel one, at the one measured weight epoch's time.
  assert not summary['complete']
  assert summary['projected_wall_seconds'] == pytest.approx(
      summary['wall_seconds'] + summary['epoch_seconds'][0])
  assert summary['environment']['backend'] == 'cpu'
  assert not list(tmp_path.rglob('random_cifar10.npz'))


def test_search_wall_clock_projected_from_its_first_epochs():
  from pcdarts_jax.bench import benchmark  # pylint: disable=import-outside-toplevel
  # Arch steps from epoch 2: two weight epochs (the first compiled), then bilevel ones.
  seconds = [40.0, 10.0, 70.0, 20.0, 22.0]
  p = benchmark.project_search_from_epochs(seconds, 2, 200.0, 50, 15)
  assert (p['weight_epoch_seconds'], p['bilevel_epoch_seconds']) == (10.0, 21.0)
  assert p['projected_wall_seconds'] == pytest.approx(200.0 + 13 * 10.0 + 32 * 21.0)
  assert p['epochs_run'] == 5
  # A finished run is its own wall clock.
  assert benchmark.project_search_from_epochs(
      [5.0, 4.0, 6.0], 1, 30.0, 3, 1)['projected_wall_seconds'] == 30.0
  # Bilevel epochs still to run but none measured: no projection, and why.
  none = benchmark.project_search_from_epochs([40.0, 10.0], 15, 60.0, 50, 15)
  assert none['projected_wall_seconds'] is None and 'bilevel' in none['projection']
  # A single measured epoch of a kind is its own estimate (compile included: high).
  one = benchmark.project_search_from_epochs([40.0, 70.0], 1, 120.0, 4, 2)
  assert one['projected_wall_seconds'] == pytest.approx(120.0 + 40.0 + 70.0)
