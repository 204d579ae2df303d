"""Checkpoints: a checkpoint with unreadable bytes is moved aside and the previous
one restored; an intact one that holds other arrays is an error naming them, and
nothing moves; read-only use changes nothing; a failed restore's late reads make
no noise. Tiny pytrees: nothing here compiles a model."""

import asyncio
import gc
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pcdarts_jax.run import checkpoint


def _state(width=4, leaves=3):
  return {'params': {f'w{i}': np.full((width, 3), float(i), np.float32) for i in range(leaves)},
          'step': np.int32(7)}


def _saved(tmp_path, steps=(1, 2, 3), **state_kwargs):
  directory = str(tmp_path / 'checkpoints')
  ckpts = checkpoint.Checkpoints(directory, keep=5)
  for step in steps:
    ckpts.save(step, _state(**state_kwargs), {'step': step})
  ckpts.close()
  return directory


def _truncate_arrays(directory, step):
  """Cuts every array data file of checkpoint `step` to 10 bytes (its metadata stays)."""
  cut = 0
  for root, _, files in os.walk(os.path.join(directory, str(step), 'state')):
    if os.path.basename(root) == 'd':
      for name in files:
        with open(os.path.join(root, name), 'r+b') as f:
          f.truncate(10)
        cut += 1
  assert cut


def _listing(path):
  return sorted(os.path.relpath(os.path.join(root, name), path)
                for root, dirs, files in os.walk(path) for name in dirs + files)


def _abstract(**state_kwargs):
  return jax.eval_shape(lambda: jax.tree.map(jnp.asarray, _state(**state_kwargs)))


def test_unreadable_bytes_are_moved_aside_and_the_previous_checkpoint_restored(
    tmp_path, capsys):
  directory = _saved(tmp_path)
  _truncate_arrays(directory, 3)
  ckpts = checkpoint.Checkpoints(directory, keep=5)
  step, state, meta = ckpts.restore_latest(_abstract())
  ckpts.close()
  assert (step, meta) == (2, {'step': 2})
  np.testing.assert_array_equal(state['params']['w2'], np.full((4, 3), 2.0))
  moved = os.listdir(tmp_path / checkpoint.UNREADABLE_DIR)
  assert len(moved) == 1 and moved[0].startswith('3-')  # Kept for inspection.
  assert sorted(os.listdir(directory)) == ['1', '2']
  warning = capsys.readouterr().err.strip().splitlines()
  assert len(warning) == 1 and 'checkpoint 3' in warning[0] and 'cannot be read' in warning[0]


def test_a_checkpoint_of_other_arrays_is_an_error_and_nothing_moves(tmp_path):
  directory = _saved(tmp_path)
  before = _listing(tmp_path)
  ckpts = checkpoint.Checkpoints(directory, keep=5)
  with pytest.raises(checkpoint.CheckpointMismatch) as info:
    ckpts.restore_latest(_abstract(width=8))  # Another model's shapes.
  message = str(info.value)
  assert '\n' not in message
  assert 'checkpoint 3' in message
  assert 'params.w0 is float32[4, 3] in the checkpoint, float32[8, 3] here' in message
  assert '(and 2 more arrays differ)' in message
  with pytest.raises(checkpoint.CheckpointMismatch, match=r'params\.w3 float32\[4, 3\] is not '
                                                          r'in the checkpoint'):
    ckpts.restore_latest(_abstract(leaves=4))  # Another structure.
  ckpts.close()
  assert _listing(tmp_path) == before


def test_read_only_skips_an_unreadable_checkpoint_and_changes_nothing(tmp_path, capsys):
  directory = _saved(tmp_path)
  _truncate_arrays(directory, 3)
  before = _listing(tmp_path)
  ckpts = checkpoint.Checkpoints(directory, keep=1, read_only=True)
  step, _, _ = ckpts.restore_latest(_abstract())
  with pytest.raises(RuntimeError, match='read-only'):
    ckpts.save(4, _state(), {})
  ckpts.close()
  assert step == 2
  assert _listing(tmp_path) == before  # Nothing moved, deleted (keep=1) or created.
  assert 'left in place' in capsys.readouterr().err


def test_results_reported_to_a_closed_event_loop_are_dropped_and_other_errors_kept(
    monkeypatch):
  """A failed restore leaves reads in flight; each reports to orbax's closed
  event loop from `call_soon_threadsafe`, as this object's finaliser does."""
  reported = []
  monkeypatch.setattr(sys, 'unraisablehook', lambda u: reported.append(str(u.exc_value)))
  checkpoint._drop_closed_loop_callbacks()  # pylint: disable=protected-access
  loop = asyncio.new_event_loop()
  loop.close()

  class LateResult:
    def __del__(self):
      loop.call_soon_threadsafe(print)

  class OtherError:
    def __del__(self):
      raise RuntimeError('another failure')

  LateResult()
  OtherError()
  gc.collect()
  assert reported == ['another failure']
