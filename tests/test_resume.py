"""Checkpoint/resume, preemption, the non-finite guard, reproducibility and the
monitoring outputs, through the real launcher on a tiny digits search.

Runs share a persistent XLA compilation cache (one per test session), so only
the first launcher run compiles; the others start in seconds.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import digits_search
from configs import digits_train
from pcdarts_jax.run import checkpoint
from pcdarts_jax.run import driver
from pcdarts_jax.search import validation as config_validation
from pcdarts_jax.data import datasets as data
from pcdarts_jax.spaces.darts import genotypes
from pcdarts_jax.search import search as loop
from pcdarts_jax.run import monitor
from pcdarts_jax.run import rundir
from pcdarts_jax.train import train as trainer
from pcdarts_jax.spaces.darts import visualize

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS_PER_EPOCH = 11  # 750 weight images / batch 64.
EPOCHS = 3
# The README's kind of override: --config.search.epochs below the file's arch
# warm-up (4 of 12 epochs) without --config.search.arch_start_epoch, so the
# warm-up keeps its share: arch steps from epoch 2 of 3. One cell (a reduction
# cell; the normal alphas are still searched and written): CI time.
TINY = ['--config.model.init_channels=4', '--config.model.layers=1',
        f'--config.search.epochs={EPOCHS}', '--config.checkpoint.every_steps=3',
        '--config.monitor.progress=lines']


@pytest.fixture(scope='module')
def env(tmp_path_factory):
  # The test run's shared cache (conftest) when there is one: launches on other
  # workers then load the programs compiled here.
  cache = tmp_path_factory.mktemp('xla_cache')
  return dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS='cpu',
              JAX_COMPILATION_CACHE_DIR=os.environ.get('JAX_COMPILATION_CACHE_DIR', str(cache)),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')


def _command(workdir, *overrides):
  return [sys.executable, '-m', 'launch.search', '--config=configs/digits_search.py',
          f'--workdir={workdir}', *TINY, *overrides]


def _run(env, workdir, *overrides, timeout=600):
  result = subprocess.run(_command(workdir, *overrides), cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
  return result


def _start(env, workdir, *overrides):
  return subprocess.Popen(_command(workdir, *overrides), cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(process, workdir, step, timeout=600):
  directory = os.path.join(workdir, 'checkpoints', str(step))
  deadline = time.time() + timeout
  while not os.path.isdir(directory):
    assert process.poll() is None, process.communicate()[1][-3000:]
    assert time.time() < deadline, f'no checkpoint {step} after {timeout}s'
    time.sleep(0.02)


def _arch(workdir):
  with np.load(os.path.join(workdir, 'arch.npz')) as f:
    return {k: f[k] for k in f.files}


def _genotype(workdir):
  with open(os.path.join(workdir, 'genotype.json')) as f:
    return genotypes.from_json(f.read())


def _assert_same_result(workdir, reference):
  arch, ref = _arch(workdir), _arch(reference)
  assert sorted(arch) == sorted(ref)
  for name in ref:  # Bitwise: same data order, augmentations and arithmetic.
    np.testing.assert_array_equal(arch[name], ref[name], err_msg=name)
  assert _genotype(workdir) == _genotype(reference)


@pytest.fixture(scope='module')
def reference(env, tmp_path_factory):
  """An uninterrupted run, with every monitoring output on; its console output
  is kept next to it (`run.stdout`)."""
  workdir = str(tmp_path_factory.mktemp('reference') / 'run')
  result = _run(env, workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(workdir + '.stdout', 'w') as f:
    f.write(result.stdout)
  return workdir


def test_sigkill_mid_epoch_then_resume_is_bitwise_identical(env, reference, tmp_path):
  workdir = str(tmp_path / 'run')
  process = _start(env, workdir)
  # Checkpoint 15 is mid-epoch 2, with arch steps on: kill right after it.
  _wait_for_checkpoint(process, workdir, 15)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert process.returncode == -signal.SIGKILL
  assert not os.path.exists(os.path.join(workdir, 'genotype.json'))
  latest = max(int(n) for n in os.listdir(os.path.join(workdir, 'checkpoints')) if n.isdigit())
  assert latest < EPOCHS * STEPS_PER_EPOCH

  result = _run(env, workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'resuming from checkpoint {latest}' in result.stdout
  _assert_same_result(workdir, reference)
  with open(os.path.join(workdir, 'genotypes.jsonl')) as f:
    records = [json.loads(line) for line in f]
  assert [r['epoch'] for r in records] == list(range(1, EPOCHS + 1))  # As on the console.
  with open(os.path.join(workdir, 'summary.json')) as f:
    assert json.load(f)['resumed_from_steps'] == [latest]


def test_sigterm_writes_a_checkpoint_and_exits_0(env, reference, tmp_path):
  workdir = str(tmp_path / 'run')
  process = _start(env, workdir)
  _wait_for_checkpoint(process, workdir, 3)
  process.send_signal(signal.SIGTERM)
  stdout, stderr = process.communicate(timeout=600)
  assert process.returncode == 0, stderr[-3000:]
  assert 'Run the same command again to resume' in stdout
  assert not os.path.exists(os.path.join(workdir, 'genotype.json'))
  saved = sorted(int(n) for n in os.listdir(os.path.join(workdir, 'checkpoints')) if n.isdigit())
  stopped_at = int(stdout.split('checkpoint ')[-1].split()[0]) if 'after step' in stdout else None
  assert saved[-1] < EPOCHS * STEPS_PER_EPOCH
  if stopped_at is not None:  # Stopped mid-epoch: the checkpoint is that very step.
    assert saved[-1] == stopped_at

  result = _run(env, workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'resuming from checkpoint' in result.stdout
  _assert_same_result(workdir, reference)


def test_corrupt_newest_checkpoint_falls_back_to_the_previous(env, reference, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(reference, workdir)
  steps = sorted(int(n) for n in os.listdir(os.path.join(workdir, 'checkpoints')) if n.isdigit())
  assert len(steps) == 3  # checkpoint.keep
  newest, previous = steps[-1], steps[-2]
  data_dir = os.path.join(workdir, 'checkpoints', str(newest), 'state', 'ocdbt.process_0', 'd')
  for name in os.listdir(data_dir):  # Truncate every data file of the newest one.
    with open(os.path.join(data_dir, name), 'r+b') as f:
      f.truncate(10)
  os.remove(os.path.join(workdir, 'arch.npz'))

  result = _run(env, workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'checkpoint {newest} in' in result.stderr and 'cannot be read' in result.stderr
  # orbax's reads still in flight after the failure make no noise around the warning.
  assert 'Event loop is closed' not in result.stderr and 'Traceback' not in result.stderr
  assert f'resuming from checkpoint {previous}' in result.stdout
  moved = os.listdir(os.path.join(workdir, 'checkpoints_unreadable'))
  assert len(moved) == 1 and moved[0].startswith(f'{newest}-')  # Kept, not deleted.
  # The steps after `previous` are recomputed: same final result.
  _assert_same_result(workdir, reference)


# A launcher run (~20 s) for what test_seeds' "seeds differ" (keys derived from
# config.seed) also shows; same seed, same result: the SIGKILL test's run starts
# afresh with the reference's seed and ends bitwise equal to it.
@pytest.mark.slow
def test_another_seed_gives_another_search(env, reference, tmp_path):
  other = str(tmp_path / 'other')
  result = _run(env, other, '--config.seed=3')
  assert result.returncode == 0, result.stderr[-3000:]
  assert not np.array_equal(_arch(other)['alphas_normal'], _arch(reference)['alphas_normal'])


def test_tensorboard_pictures_and_summary(reference):
  scalars = monitor.read_scalars(os.path.join(reference, 'tensorboard'))
  for tag in ('train/loss', 'train/accuracy', 'arch/loss', 'arch/accuracy', 'valid/loss',
              'valid/accuracy', 'lr', 'images_per_second', 'arch/normal/entropy',
              'arch/reduce/entropy', 'alpha_normal/edge_k-2->0/sep_conv_3x3',
              'alpha_reduce/edge_2->3/skip_connect', 'beta_normal/edge_k-1->2'):
    assert tag in scalars, tag
  assert sorted(scalars['valid/accuracy']) == list(range(1, EPOCHS + 1))
  assert sorted(scalars['arch/loss']) == list(range(2, EPOCHS + 1))  # After the warm-up.
  # Entropy of 8 nearly uniform weights starts close to log(8).
  assert abs(scalars['arch/normal/entropy'][1] - np.log(8)) < 0.01
  ops = [scalars[f'alpha_normal/edge_k-2->0/{op}'][EPOCHS] for op in genotypes.PRIMITIVES]
  assert sum(ops) == pytest.approx(1.0, abs=1e-5)

  plots = os.path.join(reference, 'plots')
  with open(os.path.join(reference, 'genotypes.jsonl')) as f:
    epoch_genotypes = [genotypes.from_dict(json.loads(line)['genotype']) for line in f]
  assert len(epoch_genotypes) == EPOCHS
  for epoch, genotype in enumerate(epoch_genotypes, 1):
    # Cell pictures are rendered with graphviz's dot (.ci/run installs it); their
    # .gv sources are written with or without it.
    pictures = (('cell_normal.png', 'cell_reduce.png', 'cell_normal.svg')
                if visualize.have_dot() else ())
    for name in ('arch.png',) + pictures:
      path = os.path.join(plots, f'epoch_{epoch:03d}_{name}')
      assert os.path.getsize(path) > 1000, path
      if path.endswith('.png'):
        with open(path, 'rb') as f:
          assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    for kind in ('normal', 'reduce'):  # Each source draws its epoch's cell, edge for edge.
      with open(os.path.join(plots, f'epoch_{epoch:03d}_cell_{kind}.gv')) as f:
        source = f.read()
      names = {0: 'c_{k-2}', 1: 'c_{k-1}'}
      drawn = re.findall(r'"?([\w{}\-]+)"?\s*->\s*"?(\d+)"?\s*\[label=(\w+)', source)
      assert sorted(drawn) == sorted((names.get(j, str(j - 2)), str(i // 2), op)
                                     for i, (op, j) in enumerate(getattr(genotype, kind)))

  with open(os.path.join(reference, 'summary.json')) as f:
    summary = json.load(f)
  assert genotypes.from_dict(summary['genotype']) == _genotype(reference)
  assert summary['steps'] == EPOCHS * STEPS_PER_EPOCH and summary['epochs'] == EPOCHS
  assert summary['last']['epoch'] == EPOCHS  # Epochs count from 1, as on the console.
  with open(os.path.join(reference, 'genotypes.jsonl')) as f:
    assert summary['best']['epoch'] in [json.loads(line)['epoch'] for line in f]
  assert summary['best']['valid']['accuracy'] >= summary['last']['valid']['accuracy']
  assert summary['steps_per_second'] > 0 and summary['wall_seconds'] > 0
  assert summary['checkpoint']['size_bytes'] > 0
  assert summary['nonfinite_steps_skipped'] == 0 and summary['resumed_from_steps'] == []


def _records(workdir):
  with open(os.path.join(workdir, 'genotypes.jsonl')) as f:
    return [json.loads(line) for line in f]


def test_rerunning_a_finished_search_changes_nothing(env, reference, tmp_path, snapshot):
  workdir = str(tmp_path / 'run')
  shutil.copytree(reference, workdir)
  before = snapshot(workdir)
  result = _run(env, workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'is already complete (3 epochs, checkpoint 33); nothing was changed' in result.stdout
  assert snapshot(workdir) == before  # summary.json keeps its figures, no new events file.


def test_readme_override_then_a_resume_with_one_more_epoch(env, reference, tmp_path):
  """--config.search.epochs=N below the file's warm-up (4 of 12 epochs) runs, the
  warm-up keeping its share (the reference run is that override); the resume
  retypes no override, raises the epochs by one, and runs exactly that epoch."""
  with open(reference + '.stdout') as f:
    assert 'keeps its share: 1 epoch(s), arch steps from epoch 2' in f.read()
  with open(os.path.join(reference, 'config.json')) as f:
    assert json.load(f)['search']['arch_start_epoch'] == 1
  workdir = str(tmp_path / 'run')
  shutil.copytree(reference, workdir)

  longer = subprocess.run(
      [sys.executable, '-m', 'launch.search', '--config=configs/digits_search.py',
       f'--workdir={workdir}', f'--config.search.epochs={EPOCHS + 1}'],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert longer.returncode == 0, longer.stderr[-3000:]
  assert 'with its config.json' in longer.stdout
  assert f'search.epochs raised from {EPOCHS} to {EPOCHS + 1}' in longer.stdout
  assert f'resuming from checkpoint {EPOCHS * STEPS_PER_EPOCH}' in longer.stdout
  epoch_lines = [line for line in longer.stdout.splitlines()
                 if line.startswith('epoch ') and ' train_loss ' in line]
  assert len(epoch_lines) == 1 and epoch_lines[0].startswith(f'epoch {EPOCHS + 1}/{EPOCHS + 1} ')
  records, reference_records = _records(workdir), _records(reference)
  assert [r['epoch'] for r in records] == list(range(1, EPOCHS + 2))
  drop = lambda r: {k: v for k, v in r.items() if k != 'seconds'}
  assert [drop(r) for r in records[:EPOCHS]] == [drop(r) for r in reference_records]
  # The cosine schedule spans the new total from the resume on: the added epoch,
  # the last, runs at lr_min 0 (digits steps the schedule before each epoch, so it
  # would run at 0.1 (1 + cos(pi (E + 1) / E)) / 2 > 0 on the old total).
  assert records[-1]['lr'] == pytest.approx(0.0, abs=1e-9)
  with open(os.path.join(workdir, 'summary.json')) as f:
    summary = json.load(f)
  assert summary['epochs'] == EPOCHS + 1 and summary['last']['epoch'] == EPOCHS + 1
  assert summary['steps'] == (EPOCHS + 1) * STEPS_PER_EPOCH
  assert summary['resumed_from_steps'] == [EPOCHS * STEPS_PER_EPOCH]
  assert summary['steps_per_second'] > 0 and summary['checkpoint']['size_bytes'] > 0
  with open(os.path.join(workdir, 'config.json')) as f:
    saved = json.load(f)
  assert saved['search']['epochs'] == EPOCHS + 1 and saved['model']['init_channels'] == 4
  steps = sorted(int(n) for n in os.listdir(os.path.join(workdir, 'checkpoints')) if n.isdigit())
  assert steps[-1] == (EPOCHS + 1) * STEPS_PER_EPOCH


def test_sigint_while_compiling_exits_at_once_and_binds_no_config(env, tmp_path):
  workdir = str(tmp_path / 'run')
  fresh = dict(env, JAX_COMPILATION_CACHE_DIR=str(tmp_path / 'empty_cache'))  # It compiles.
  process = subprocess.Popen(_command(workdir), cwd=REPO, env=fresh, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
  for line in process.stdout:
    if line.startswith('supernet:'):  # Printed just before the step compiles.
      assert line.rstrip().endswith('float32 activations')  # dtype `auto` on a CPU
      break
  time.sleep(0.5)
  process.send_signal(signal.SIGINT)
  signalled = time.time()
  stdout, stderr = process.communicate(timeout=600)
  waited = time.time() - signalled
  assert process.returncode == 130, stderr[-3000:]
  assert waited < 20, waited  # Not the rest of the compile (a minute on a loaded 2-core CPU).
  assert stdout.strip().splitlines()[-1] == (
      'received SIGINT before the first step, while compiling: nothing to save; exiting now '
      '(status 130).')
  assert 'Traceback' not in stderr
  held = os.listdir(workdir)
  assert 'config.json' not in held and 'genotypes.jsonl' not in held
  other = digits_search.get_config()  # The workdir takes another run.
  other.search.learning_rate = 0.05
  rundir.check_resumable(rundir.Workdir(workdir, loop.LOG_NAME), other, loop.RESUMABLE_CHANGES,
                         'search', loop.EXTENDABLE)


def test_evaluate_refuses_a_search_workdir_and_changes_nothing(reference, tmp_path, snapshot):
  workdir = str(tmp_path / 'run')
  shutil.copytree(reference, workdir)
  before = snapshot(workdir)
  with pytest.raises(config_validation.ConfigError) as info:
    trainer.evaluate_checkpoint(digits_train.get_config(), workdir=workdir)
  message = str(info.value)
  assert 'holds an architecture search (genotypes.jsonl), not a launch.train run' in message
  assert f'--config.genotype={workdir}' in message and '\n' not in message
  assert snapshot(workdir) == before


def test_resume_false_refuses_a_non_empty_workdir(env, reference, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(reference, workdir)
  before = {p: os.path.getmtime(os.path.join(workdir, p)) for p in os.listdir(workdir)}
  result = _run(env, workdir, '--config.checkpoint.resume=False')
  assert result.returncode == 2
  line = result.stderr.strip().splitlines()[-1]
  assert 'checkpoint.resume=False' in line and 'refusing to overwrite' in line
  assert {p: os.path.getmtime(os.path.join(workdir, p)) for p in os.listdir(workdir)} == before


def test_resume_with_a_different_config_is_refused(env, reference, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(reference, workdir)
  result = _run(env, workdir, '--config.search.learning_rate=0.05')
  assert result.returncode == 2
  line = result.stderr.strip().splitlines()[-1]
  assert 'search.learning_rate: 0.1 -> 0.05' in line


class _NaNAtBatch(data.EpochIterator):
  """Train batches as float images, with NaN pixels in batch `nan_batch` only."""
  nan_batch = 4
  calls = 0

  def __next__(self):
    batch = super().__next__()
    images = batch['image'].astype(np.float32)
    if self.seed == self.train_seed:
      if _NaNAtBatch.calls == self.nan_batch:
        images[0] = np.nan  # The whole image: a random crop cannot miss it.
      _NaNAtBatch.calls += 1
    return {'image': images, 'label': batch['label']}


def _nan_config(skip):
  config = digits_search.get_config()
  config.model.init_channels = 4
  config.model.layers = 1
  config.search.epochs = 2
  config.search.arch_start_epoch = 1
  config.checkpoint.every_steps = 3
  config.search.skip_nonfinite = skip
  config.monitor.pictures = False
  config.monitor.progress = 'lines'
  return config


def test_nan_in_a_batch_stops_the_run_and_keeps_the_checkpoint(tmp_path, monkeypatch):
  config = _nan_config(skip=False)
  _NaNAtBatch.train_seed, _NaNAtBatch.calls = config.seed, 0
  monkeypatch.setattr(data, 'EpochIterator', _NaNAtBatch)
  workdir = str(tmp_path / 'run')
  with pytest.raises(driver.NonFiniteError) as info:
    loop.search(config, workdir)
  message = str(info.value)
  assert 'step 4 ' in message and 'train loss nan' in message, message
  assert f'checkpoint 3 in {os.path.join(workdir, "checkpoints")}' in message
  assert '\n' not in message
  # Checkpoint 3 (before the bad step) is intact; nothing after it was written.
  steps = sorted(int(n) for n in os.listdir(os.path.join(workdir, 'checkpoints')) if n.isdigit())
  assert steps == [3]
  assert not os.path.exists(os.path.join(workdir, 'genotype.json'))

  from pcdarts_jax.search import optim
  from pcdarts_jax.spaces.darts import supernet  # pylint: disable=g-import-not-at-top
  train_set, _ = data.search_splits(config.data)
  model = supernet.build_supernet(config)
  state = loop.create_search_state(
      model, config, jax.random.PRNGKey(0),
      data.normalize(train_set.images[:1], config.data.mean, config.data.std),
      optim.weight_optimizer(config, STEPS_PER_EPOCH), optim.arch_optimizer(config))
  restored = checkpoint.Checkpoints(os.path.join(workdir, 'checkpoints'), 3).restore_latest(
      jax.eval_shape(lambda: state))
  step, state, meta = restored
  assert step == 3 and int(state.step) == 3
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state.params))
  assert meta['train_iter'] == {'epoch': 0, 'position': 3}


def test_skip_nonfinite_counts_and_goes_on(tmp_path, monkeypatch):
  config = _nan_config(skip=True)
  _NaNAtBatch.train_seed, _NaNAtBatch.calls = config.seed, 0
  monkeypatch.setattr(data, 'EpochIterator', _NaNAtBatch)
  workdir = str(tmp_path / 'run')
  genotype = loop.search(config, workdir)  # The library's entry point, in process.
  with open(os.path.join(workdir, 'summary.json')) as f:
    summary = json.load(f)
  assert summary['nonfinite_steps_skipped'] == 1
  assert summary['steps'] == 2 * STEPS_PER_EPOCH  # The skipped step still counts.
  with open(os.path.join(workdir, 'genotypes.jsonl')) as f:
    records = [json.loads(line) for line in f]
  assert [r['nonfinite_skipped'] for r in records] == [1.0, 0.0]
  assert np.isfinite(records[0]['train']['loss'])
  assert records[0]['arch'] == {} and 0.0 <= records[1]['arch']['accuracy'] <= 1.0
  arch = _arch(workdir)
  assert all(np.all(np.isfinite(v)) for v in arch.values())
  # What it returns is what it wrote: the last epoch's genotype, derived from the
  # final arch values, 8 kept edges per cell type and none of them `none`.
  final = _genotype(workdir)
  assert final == genotype == genotypes.from_dict(records[-1]['genotype'])
  assert genotypes.derive_genotype(arch) == final
  assert len(final.normal) == 8 and len(final.reduce) == 8
  assert all(op != 'none' and op in genotypes.PRIMITIVES for op, _ in final.normal + final.reduce)


class _Stop:
  received = None

  def stepped(self):
    pass


class _Checkpoints:
  directory = '/ckpt'


class _Progress:
  def __init__(self):
    self.losses, self.closed = [], False

  def update(self, metrics):
    self.losses.append(metrics and metrics['loss'])

  def close(self):
    self.closed = True


def _epoch_steps(stop, every_steps, log_every_steps, first=0, stop_after=None):
  """Epoch 2 of 7-step epochs (steps 14..20) with host-side bookkeeping recorded."""
  saved, checked, progress = [], [], _Progress()

  def step_fn(step_number):
    if stop_after is not None and step_number + 1 == stop_after:
      stop.received = signal.SIGTERM
    return {'loss_sum': np.float32(2.0), 'count': np.float32(1.0)}

  phase = driver.Phase(
      'search', '', _Checkpoints(), 3, 7, 1, log_every_steps,
      lambda state, step: (state, step_fn(step)), None,
      nonfinite=lambda state, host, step: checked.append(step))
  _, sums = driver.run_steps(
      driver.Run(stop, every_steps=every_steps), phase, None, 2, first, None, progress,
      save=lambda step, state, host: saved.append((step, host['count'])))
  return sums, saved, checked, progress


def test_epoch_steps_checkpoint_and_log_only_when_due():
  sums, saved, checked, progress = _epoch_steps(_Stop(), every_steps=3, log_every_steps=5)
  assert float(sums['count']) == 7 and float(sums['loss_sum']) == 14
  # Steps 15 and 18 are multiples of 3 (the epoch's 1st and 4th); 21 ends the
  # epoch, where the epoch-end checkpoint serves.
  assert saved == [(15, 1.0), (18, 4.0)]
  # Fetched (and checked) only to save or to log, and once at the epoch's end.
  assert checked == [15, 18, 20, 21]
  # The running mean loss goes to the progress line with each fetch (steps 15..21).
  assert progress.losses == [2.0, None, None, 2.0, None, 2.0, None]
  assert progress.closed
  # Resumed mid-epoch: only the remaining steps run.
  sums, saved, _, _ = _epoch_steps(_Stop(), every_steps=2, log_every_steps=0, first=4)
  assert float(sums['count']) == 3 and saved == [(20, 2.0)]


def test_epoch_steps_stop_signal_checkpoints_then_raises():
  stop = _Stop()
  with pytest.raises(driver.Interrupted,
                     match=r'SIGTERM after step 16; checkpoint 16 written to /ckpt\. Run the '
                           r'same command again'):
    _epoch_steps(stop, every_steps=0, log_every_steps=0, stop_after=16)
