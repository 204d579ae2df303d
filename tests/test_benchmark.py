"""The benchmark launcher on a tiny config: well-formed JSON with every field."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIELDS = {
    'measurement': str, 'architect': (str, type(None)), 'batch_size': int,
    'compile_seconds': float, 'ms_per_step_median': float, 'ms_per_step_p10': float,
    'ms_per_step_p90': float, 'images_per_second': float, 'peak_memory_bytes': int,
    'memory_kind': str, 'flops_per_step': (float, type(None)),
    'flops_per_second': (float, type(None)), 'device_kind': str, 'device_count': int,
    'jax_version': str, 'config_digest': str, 'config': str, 'depthwise_impl': str,
    'dtype': str, 'data': str, 'steps': int, 'warmup': int, 'platform': str,
    'edge_impl': str, 'unroll_edges': bool, 'step_memory_bytes': (int, type(None)),
    'stepping_peak_rss_bytes': (int, type(None)),
}
TINY = ['--config=configs/digits_search.py', '--config.model.init_channels=4',
        '--config.model.layers=2']


def _run(*args):
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, '-m', 'launch.benchmark', *TINY, *args], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=900)


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
    assert r['ms_per_step_median'] > 0
    assert r['images_per_second'] == pytest.approx(8 / (r['ms_per_step_median'] / 1e3))
    assert r['memory_kind'] == 'process_peak_rss' and r['peak_memory_bytes'] > 10 * 2 ** 20
  by_name = {r['measurement']: r for r in lines}
  for name in ('weight_step', 'arch_step', 'bilevel_step'):
    assert by_name[name]['flops_per_step'] > 0 and by_name[name]['compile_seconds'] > 0
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
  assert 'ms/step' in result.stderr  # The human table.
  saved = [json.loads(l) for l in out.read_text().splitlines()]
  assert saved[0] == {'earlier': 1} and saved[1:] == lines  # Appended.


def test_benchmark_rejects_an_unknown_measurement():
  result = _run('--measure=weight_step,bogus')
  assert result.returncode == 2
  assert "--measure=bogus" in result.stderr and 'weight_step' in result.stderr


@pytest.mark.skipif(not os.path.exists('/proc/self/clear_refs'), reason='Linux peak-RSS reset')
def test_stepping_peak_rss_excludes_what_came_before_the_reset():
  from pcdarts_jax import benchmark  # pylint: disable=import-outside-toplevel
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
