"""Wall-clock hygiene: checkpoints written in the background from a host copy
(equal to a synchronous save's, never the donated step's values, complete when a
phase returns or raises), and the run's clock (compile, stepping, checkpoint and
epoch-end seconds). A tiny state and a one-line pmapped step: no model compiles."""

import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from launch import common
from pcdarts_jax.run import checkpoint
from pcdarts_jax.run import driver
from pcdarts_jax.run import monitor
from pcdarts_jax.run import parallel

WIDTH = 64  # A (WIDTH, WIDTH) float32 weight: 16 KiB.


@flax.struct.dataclass
class _State:
  step: jax.Array
  w: jax.Array


def _host_state(step=0, value=0.0):
  return _State(np.int32(step), np.full((WIDTH, WIDTH), value, np.float32))


def _abstract():
  return jax.eval_shape(lambda: jax.tree.map(jnp.asarray, _host_state()))


def _steps(tmp_path, **checkpoint_kwargs):
  return checkpoint.Checkpoints(str(tmp_path / 'checkpoints'), **{'keep': 10,
                                                                  **checkpoint_kwargs})


def _layout(directory):
  """What a checkpoint holds, without what differs between two writes of the
  same values (sync or not): the names of its data files, their sizes (OCDBT's
  b-tree nodes follow the order the arrays' writes end in), paths, timestamps.
  Left: the array and meta metadata, and the directories holding data."""
  layout = {'data': set()}
  for root, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(root, name)
      relative = os.path.relpath(path, directory)
      if os.path.basename(root) == 'd':
        layout['data'].add(os.path.relpath(root, directory))
      elif relative in ('state/_METADATA', 'meta/metadata'):
        with open(path, 'rb') as f:
          layout[relative] = f.read()
  return layout


def test_an_async_save_writes_what_a_synchronous_save_writes(tmp_path):
  state = _host_state(3, 1.5)
  meta = {'sums': {'loss_sum': 2.0}, 'train_iter': {'epoch': 0, 'position': 3}}
  stored = {}
  for name, wait in (('sync', True), ('async', False)):
    ckpts = _steps(tmp_path / name)
    ckpts.save(3, state, meta, wait=wait)
    ckpts.wait()
    assert ckpts.steps() == [3]
    restored, restored_meta = ckpts.restore(3, _abstract())
    figures = ckpts.figures()
    ckpts.close()
    assert restored_meta == meta
    np.testing.assert_array_equal(restored.w, state.w)
    assert int(restored.step) == 3
    assert figures['async'] is (not wait) and figures['size_bytes'] > 0
    assert figures['write_seconds'] >= figures['save_seconds'] > 0
    stored[name] = _layout(tmp_path / name / 'checkpoints' / '3')
  assert stored['sync']['data'] and 'state/_METADATA' in stored['sync']
  assert stored['async'] == stored['sync']


def test_a_save_then_the_donating_step_keeps_the_values_before_the_step(tmp_path):
  step = jax.jit(lambda w: w * 2.0 + 1.0, donate_argnums=0)
  w = jnp.full((WIDTH, WIDTH), 5.0, jnp.float32)
  ckpts = _steps(tmp_path)
  meta = {'n': 1}
  ckpts.save(1, {'w': w}, meta, wait=False)
  meta['n'] = 2  # The caller's dict changes after the save; the snapshot does not.
  for _ in range(5):  # The saved buffer is donated at once, and again.
    w = step(w)
  restored, restored_meta = ckpts.restore(1, None)
  ckpts.close()
  np.testing.assert_array_equal(restored['w'], np.full((WIDTH, WIDTH), 5.0, np.float32))
  assert restored_meta == {'n': 1}
  assert float(w[0, 0]) == 5.0 * 32 + 31


class _Stop:
  def __init__(self, at=None):
    self.at, self.received = at, None

  def stepped(self):
    pass


def _phase(tmp_path, epochs=2, steps_per_epoch=3, nonfinite=None, stop=None):
  """A phase whose step adds 1 to every weight: the state at step k holds k."""
  def step_fn(state):
    state = state.replace(step=state.step + 1, w=state.w + 1.0)
    return state, {'loss_sum': jnp.sum(state.w) * 0.0 + 1.0, 'count': jnp.float32(1.0)}

  step = parallel.pmap_step(step_fn, in_axes=(0,))

  def run_step(state, number):
    if stop is not None and stop.at == number + 1:
      stop.received = 15  # SIGTERM, after this step.
    return step(state)

  epochs_seen = []

  def end_epoch(epoch, state, sums):
    epochs_seen.append(epoch)
    return driver.Epoch({'count': sums['count']}, {}, f'count {sums["count"]}')

  ckpts = _steps(tmp_path)
  phase = driver.Phase('test', str(tmp_path / 'log.jsonl'), ckpts, epochs, steps_per_epoch,
                       1, 0, run_step, end_epoch, nonfinite=nonfinite)
  return phase, ckpts


def _run(tmp_path, stop=None, async_save=True, every_steps=2):
  writer = monitor.SummaryWriter(str(tmp_path / 'tb'), enabled=False)
  return driver.Run(stop or _Stop(), writer, every_steps=every_steps, progress='lines',
                    async_save=async_save)


def _on_disk(ckpts):
  return sorted(int(n) for n in os.listdir(ckpts.directory) if n.isdigit())


@pytest.mark.parametrize('async_save', [True, False])
def test_a_phase_returns_with_every_checkpoint_written_and_its_clock(tmp_path, async_save):
  phase, ckpts = _phase(tmp_path)
  state, meta = driver.run_phase(_run(tmp_path, async_save=async_save), phase,
                                 parallel.replicate(_host_state()), {})
  # No wait here: run_phase waited. Steps 2 and 4 (every_steps), 3 and 6 (epoch ends).
  assert _on_disk(ckpts) == [2, 3, 4, 6]
  for step in (2, 3, 4, 6):
    restored, saved_meta = ckpts.restore(step, _abstract())
    np.testing.assert_array_equal(restored.w, np.full((WIDTH, WIDTH), float(step)))
    # A checkpoint holds the figures of the save before it.
    assert (saved_meta['checkpoint']['save_seconds'] is None) == (step == 2)
  ckpts.close()
  assert int(parallel.unreplicate(state.step)) == 6
  assert meta['checkpoint']['async'] is async_save and meta['checkpoint']['size_bytes'] > 0
  clock = driver.clock(meta)
  assert clock['compile_seconds'] > 0  # The pmapped step compiled in the phase.
  assert clock['stepping_seconds'] > 0 and clock['checkpoint_seconds'] > 0
  assert clock['eval_seconds'] >= 0 and clock['steps_per_second'] > 0
  parts = sum(clock[k] for k in ('compile_seconds', 'stepping_seconds', 'checkpoint_seconds',
                                 'eval_seconds'))
  assert parts <= clock['wall_seconds'] + 1e-3
  assert 'compiling' in driver.clock_text(clock) and 'stepping' in driver.clock_text(clock)


def test_a_stop_signal_raises_with_its_checkpoint_complete(tmp_path):
  stop = _Stop(at=5)
  phase, ckpts = _phase(tmp_path, stop=stop)
  with pytest.raises(driver.Interrupted, match='checkpoint 5 written'):
    driver.run_phase(_run(tmp_path, stop=stop, every_steps=0), phase,
                     parallel.replicate(_host_state()), {})
  assert _on_disk(ckpts) == [3, 5]  # Complete when Interrupted reaches the caller.
  restored, _ = ckpts.restore(5, _abstract())
  ckpts.close()
  np.testing.assert_array_equal(restored.w, np.full((WIDTH, WIDTH), 5.0))


def test_a_nonfinite_stop_names_a_checkpoint_that_is_on_disk(tmp_path):
  nonfinite = lambda state, sums, step: 'bad step.' if step > 3 else None
  phase, ckpts = _phase(tmp_path, nonfinite=nonfinite)
  with pytest.raises(driver.NonFiniteError, match=r'Last good checkpoint: checkpoint 3 in'):
    driver.run_phase(_run(tmp_path, every_steps=0), phase,
                     parallel.replicate(_host_state()), {})
  assert _on_disk(ckpts) == [3]
  ckpts.close()


def test_the_compile_clock_counts_compiles_only():
  f = jax.jit(lambda x: jnp.tanh(x) * 3.0 + jnp.float32(0.25))
  x = jnp.ones((8,))
  with driver.CompileClock() as compiles:
    f(x).block_until_ready()
    first = compiles.seconds
    for _ in range(3):
      f(x).block_until_ready()  # Compiled: nothing more.
  f(jnp.ones((9,))).block_until_ready()  # After the clock closed.
  assert first > 0 and compiles.seconds == first


def test_old_checkpoints_without_the_clock_fields_count_zero():
  clock = driver.clock({'wall_seconds': 12.0, 'step_seconds': 4.0, 'steps_run': 8})
  assert clock == {'wall_seconds': 12.0, 'compile_seconds': 0.0, 'stepping_seconds': 4.0,
                   'checkpoint_seconds': 0.0, 'eval_seconds': 0.0, 'steps_per_second': 2.0}


def test_the_compilation_cache_also_keeps_xla_autotuning(tmp_path, monkeypatch):
  names = ('jax_compilation_cache_dir', 'jax_persistent_cache_min_compile_time_secs',
           'jax_persistent_cache_enable_xla_caches')
  before = {name: getattr(jax.config, name) for name in names}
  for name in names:
    monkeypatch.delenv(name.upper(), raising=False)
  try:
    common.use_compilation_cache(str(tmp_path))
    assert jax.config.jax_compilation_cache_dir == str(tmp_path)
    assert jax.config.jax_persistent_cache_enable_xla_caches == (
        'xla_gpu_per_fusion_autotune_cache_dir')
    monkeypatch.setenv('JAX_COMPILATION_CACHE_DIR', '/elsewhere')
    common.use_compilation_cache(str(tmp_path / 'other'))  # The environment wins.
    assert jax.config.jax_compilation_cache_dir == str(tmp_path)
  finally:
    for name, value in before.items():
      jax.config.update(name, value)
