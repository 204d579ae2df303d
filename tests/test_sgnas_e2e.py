"""SGNAS end to end on the embedded digits: search (both phases) from the launcher,
generation for budgets, resumption."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = 'configs/sgnas_digits_search.py'
# 8 generator epochs (about 1.3 s each): the selected one comes from the settled
# epochs whatever rounding XLA's emitters give (with 5, one emitter's run kept an
# epoch of Kendall tau 0.34; with 8 both select tau > 0.9).
SHORT = ['--config.search.epochs=4', '--config.generator.epochs=8',
         '--config.generator.tau_decay=0.75', '--config.monitor.tensorboard=False']


def _run(module, *args):
  env = dict(os.environ, PYTHONPATH=ROOT)
  return subprocess.run([sys.executable, '-m', module, *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=900)


@pytest.fixture(scope='module')
def searched(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('sgnas') / 'run')
  result = _run('launch.search', f'--config={CONFIG}', f'--workdir={workdir}', *SHORT)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir, result.stdout


def test_search_writes_both_phases(searched):
  workdir, stdout = searched
  assert 'supernet epoch 4/4' in stdout and 'generator epoch 8/8' in stdout
  with open(os.path.join(workdir, 'supernet_log.jsonl')) as f:
    supernet = [json.loads(line) for line in f]
  with open(os.path.join(workdir, 'generator_log.jsonl')) as f:
    generator = [json.loads(line) for line in f]
  assert [r['epoch'] for r in supernet] == [1, 2, 3, 4]  # As on the console.
  assert [r['epoch'] for r in generator] == list(range(1, 9))
  # The supernet learns: its largest path beats chance (0.1) on held-out digits
  # (measured 0.35 after these 4 short epochs, 0.74 after the config's 12).
  assert supernet[-1]['valid']['max']['accuracy'] > 0.25
  for name in ('generator.msgpack', 'prior_pool.json', 'flops_table.json', 'summary.json'):
    assert os.path.exists(os.path.join(workdir, name)), name


def test_generated_flops_rise_with_the_target(searched):
  """The behaviour SGNAS exists for: the selected generator's architectures on
  the target grid are ordered like the targets (Kendall tau) and near them."""
  workdir, _ = searched
  with open(os.path.join(workdir, 'architectures.json')) as f:
    selected = json.load(f)
  targets = [row['target'] for row in selected['targets']]
  mflops = [row['mflops'] for row in selected['targets']]
  assert selected['kendall_tau'] > 0.5, selected
  assert np.corrcoef(targets, mflops)[0, 1] > 0.7
  assert selected['mean_flops_error'] < 0.1  # MFLOPs, on targets 0.15..0.425
  with open(os.path.join(workdir, 'summary.json')) as f:
    summary = json.load(f)
  assert summary['generator']['selected']['kendall_tau'] == selected['kendall_tau']


def test_generate_launcher(searched, tmp_path):
  workdir, _ = searched
  out = {}
  for target in (0.15, 0.425):
    path = str(tmp_path / f'{target}.json')
    result = _run('launch.sgnas_generate', f'--config={CONFIG}', f'--workdir={workdir}',
                  f'--target_flops={target}', f'--output={path}')
    assert result.returncode == 0, result.stderr[-2000:]
    assert 'MFLOPs' in result.stdout and 'layer  5' in result.stdout
    with open(path) as f:
      out[target] = json.load(f)
  assert out[0.425]['mflops'] > out[0.15]['mflops']
  from pcdarts_jax.sgnas import flops as flops_lib  # pylint: disable=g-import-not-at-top
  from pcdarts_jax.sgnas import layout as layout_lib  # pylint: disable=g-import-not-at-top
  lay = layout_lib.make_layout('digits', 8, 1, 10)
  for record in out.values():
    choices = layout_lib.load(json.dumps(record), lay)
    assert flops_lib.architecture_macs(choices, flops_lib.lookup_table(lay)) == record['macs']
  missing = _run('launch.sgnas_generate', f'--config={CONFIG}', f'--workdir={tmp_path}',
                 '--target_flops=0.3')
  assert missing.returncode == 2 and 'generator.msgpack' in missing.stderr


def test_a_finished_search_run_again_changes_nothing(searched, snapshot):
  workdir, _ = searched
  before = snapshot(workdir)
  result = _run('launch.search', f'--config={CONFIG}', f'--workdir={workdir}', *SHORT)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'is already complete (4 supernet and 8 generator epochs)' in result.stdout
  assert 'supernet epoch' not in result.stdout  # nothing retrained
  assert snapshot(workdir) == before
  changed = _run('launch.search', f'--config={CONFIG}', f'--workdir={workdir}', *SHORT,
                 '--config.search.learning_rate=0.5')
  assert changed.returncode == 2 and 'search.learning_rate' in changed.stderr


def _lines(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


@pytest.mark.slow  # ~50 s more of search; run here before each submission.
def test_interrupted_search_resumes_to_the_same_result(searched, tmp_path):
  """SIGTERM mid-way through the supernet phase writes a checkpoint and exits 0;
  the same command finishes the run, and the result equals the uninterrupted
  run's (paths, data order and augmentation depend only on the step)."""
  reference, _ = searched
  workdir = str(tmp_path / 'run')
  env = dict(os.environ, PYTHONPATH=ROOT)
  proc = subprocess.Popen(
      [sys.executable, '-m', 'launch.search', f'--config={CONFIG}', f'--workdir={workdir}',
       *SHORT], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True)
  for line in proc.stdout:
    if line.startswith('supernet epoch 2/4'):
      proc.send_signal(signal.SIGTERM)
      break
  rest = proc.communicate(timeout=900)[0]
  assert proc.returncode == 0, rest[-3000:]
  assert 'stopped by SIGTERM' in rest
  assert not os.path.exists(os.path.join(workdir, 'generator.msgpack'))
  result = _run('launch.search', f'--config={CONFIG}', f'--workdir={workdir}', *SHORT)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'resuming the supernet phase' in result.stdout
  ours = _lines(os.path.join(workdir, 'supernet_log.jsonl'))
  theirs = _lines(os.path.join(reference, 'supernet_log.jsonl'))
  assert [r['epoch'] for r in ours] == [1, 2, 3, 4]
  for a, b in zip(ours, theirs):
    for path in ('max', 'mid', 'min'):
      assert a['valid'][path]['accuracy'] == b['valid'][path]['accuracy']
      assert a['valid'][path]['loss'] == pytest.approx(b['valid'][path]['loss'], abs=1e-4)
  with open(os.path.join(workdir, 'architectures.json')) as f:
    resumed = json.load(f)
  with open(os.path.join(reference, 'architectures.json')) as f:
    uninterrupted = json.load(f)
  key = lambda record: [(t['target'], t['architecture'], t['mflops'])
                        for t in record['targets']]
  assert key(resumed) == key(uninterrupted)
  assert resumed['kendall_tau'] == uninterrupted['kendall_tau']
