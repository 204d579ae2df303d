"""Data parallelism: N devices on B/N images each compute the one-device step.

The multi-device runs are subprocesses: the forced host device count must be set
before jax starts, and this test session has already started it.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pcdarts_jax.run import parallel
from tests import compile_options

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOLERANCE = 1e-5


def run_devices(script_args, devices=8, timeout=600):
  env = dict(compile_options.devices_env(devices), PYTHONPATH=REPO)
  result = subprocess.run([sys.executable] + script_args, cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def _one_vs_eight(architect):
  result = run_devices([os.path.join('tests', 'multidevice', 'one_vs_many.py'), architect, '3'])
  figures = json.loads(result.stdout.strip().splitlines()[-1])
  assert figures['devices'] == 8
  # The arch values really moved (3 arch steps), so agreeing is not trivial.
  assert figures['arch_moved'] > 1e-3
  for key in ('arch', 'params', 'batch_stats'):
    assert figures[key] < TOLERANCE, figures
  assert figures['loss'] < 1e-4, figures
  assert figures['genotype_one'] == figures['genotype_many']


def test_one_device_and_eight_devices_agree_first_order():
  _one_vs_eight('first_order')


@pytest.mark.slow
@pytest.mark.parametrize('architect', ['second_order', 'second_order_exact'])
def test_one_device_and_eight_devices_agree_second_order(architect):
  _one_vs_eight(architect)


def test_shard_and_host_slice():
  batch = {'image': np.arange(16 * 3).reshape(16, 3), 'label': np.arange(16)}
  sharded = parallel.shard(batch, 4)
  assert sharded['image'].shape == (4, 4, 3)
  np.testing.assert_array_equal(sharded['label'][2], [8, 9, 10, 11])
  second = parallel.host_slice(batch, process_index=1, process_count=2)
  np.testing.assert_array_equal(second['label'], np.arange(8, 16))
  with pytest.raises(ValueError, match='does not split over 3 devices'):
    parallel.shard(batch, 3)


def test_check_divisible_names_the_field():
  parallel.check_divisible(64, 'search.batch_size', devices=8)
  with pytest.raises(ValueError, match=r'search.batch_size=100 .* 8 devices'):
    parallel.check_divisible(100, 'search.batch_size', devices=8)


def test_gradient_helpers_without_axis_are_jax_grad():
  f = lambda w, x: jnp.sum(jnp.tanh(w * x) ** 2)
  w, x = jnp.arange(3.0), jnp.ones(3)
  value, grads = parallel.value_and_grad(f, None)(w, x)
  np.testing.assert_allclose(grads, jax.grad(f)(w, x))
  assert float(value) == pytest.approx(float(f(w, x)))
  np.testing.assert_array_equal(parallel.global_index(4, None), np.arange(4))


def test_replicate_and_unreplicate_round_trip():
  tree = {'a': np.arange(3.0), 'b': np.float32(2.0)}
  copies = parallel.replicate(tree)
  assert copies['a'].shape == (jax.local_device_count(), 3)
  back = parallel.unreplicate(copies)
  np.testing.assert_array_equal(back['a'], tree['a'])


def _free_port() -> int:
  import socket  # pylint: disable=g-import-not-at-top
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


# CI time (three processes compiling, ~100 s): the pmapped step's agreement runs in
# the 1-vs-8-devices test above and each host's batch slice in
# test_shard_and_host_slice; -m slow adds jax.distributed across processes.
@pytest.mark.slow
def test_two_processes_agree_with_one_process(tmp_path):
  """jax.distributed on localhost (CPU collectives): 2 processes x 2 devices run
  2 bilevel steps on one global batch, each feeding its half; one process with
  one device runs the same global batch."""
  script = os.path.join(REPO, 'tests', 'multidevice', 'one_vs_many.py')
  port = _free_port()
  # As run_devices compiles the one-process side: both sides compiled alike.
  env = lambda devices: dict(compile_options.devices_env(devices), PYTHONPATH=REPO)
  dist, single = str(tmp_path / 'dist.npz'), str(tmp_path / 'single.npz')
  procs = [subprocess.Popen(
      [sys.executable, script, 'first_order', '2', f'--save={dist}',
       f'--coordinator_address=localhost:{port}', '--num_processes=2', f'--process_id={i}'],
      cwd=REPO, env=env(2), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  run_devices([script, 'first_order', '2', f'--save={single}'], devices=1)
  for p in procs:
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out[-3000:]
  a, b = np.load(single), np.load(dist)
  assert (int(a['devices']), int(a['processes'])) == (1, 1)
  assert (int(b['devices']), int(b['processes'])) == (4, 2)
  keys = [k for k in a.files if k.startswith(('arch/', 'params/'))]
  assert keys and sorted(keys) == sorted(k for k in b.files if k.startswith(('arch/', 'params/')))
  for k in keys:
    np.testing.assert_allclose(b[k], a[k], atol=TOLERANCE, rtol=0, err_msg=k)
  np.testing.assert_allclose(b['loss'], a['loss'], rtol=1e-5)
