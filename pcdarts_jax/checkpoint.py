"""Atomic, rotating checkpoints of a run (orbax), with fallback past a bad one.

A checkpoint holds two items: `state`, the pytree of arrays (weights, BatchNorm
statistics, arch values, optimizer states, step, rng), and `meta`, a JSON dict
(data-iterator positions, partial-epoch metric sums, ...). Orbax writes each
step into a temporary directory and renames it when complete, so a run killed
while saving leaves the previous checkpoints intact.
"""

import os
import shutil
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

import jax
import orbax.checkpoint as ocp


class Checkpoints:
  """The checkpoints of one run, in `directory/<step>/`."""

  def __init__(self, directory: str, keep: int):
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True,
            # Synchronous: the step donates the state buffers right after a save.
            enable_async_checkpointing=False),
        item_names=('state', 'meta'))

  def steps(self) -> List[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> Optional[int]:
    steps = self.steps()
    return steps[-1] if steps else None

  def save(self, step: int, state: Any, meta: Dict[str, Any]) -> float:
    """Writes checkpoint `step`; returns the seconds it took."""
    start = time.time()
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
    self._manager.wait_until_finished()
    return time.time() - start

  def restore(self, step: int, abstract_state: Any) -> Tuple[Any, Dict[str, Any]]:
    """`abstract_state` is the state's shapes, or a function of the checkpoint's
    meta giving them (the state's layout may depend on it, e.g. a later stage of
    progressive learning)."""
    if callable(abstract_state):
      meta = self._manager.restore(step, args=ocp.args.Composite(
          meta=ocp.args.JsonRestore()))['meta']
      abstract_state = abstract_state(meta)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    return restored['state'], restored['meta']

  def restore_latest(self, abstract_state: Any) -> Optional[Tuple[int, Any, Dict[str, Any]]]:
    """Newest checkpoint that restores; unreadable ones are moved aside with a
    warning (kept for inspection, never deleted). None when there is none."""
    for step in reversed(self.steps()):
      try:
        state, meta = self.restore(step, abstract_state)
        _check_shapes(state, abstract_state(meta) if callable(abstract_state)
                      else abstract_state)
        return step, state, meta
      except Exception as e:  # pylint: disable=broad-except
        moved = self._quarantine(step)
        message = (f'warning: checkpoint {step} in {self.directory} cannot be restored '
                   f'({type(e).__name__}: {str(e)[:200]}); moved to {moved}, trying the '
                   f'previous one.')
        print(message, file=sys.stderr, flush=True)
    return None

  def _quarantine(self, step: int) -> str:
    """Moves a bad step out of orbax's directory so that it can be saved again."""
    source = os.path.join(self.directory, str(step))
    target = os.path.join(os.path.dirname(self.directory), 'checkpoints_unreadable',
                          f'{step}-{int(time.time())}')
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.move(source, target)
    self._manager.reload()
    return target

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()


def _check_shapes(state, abstract_state):
  got = jax.tree.map(lambda x: (x.shape, x.dtype), state)
  want = jax.tree.map(lambda x: (x.shape, x.dtype), abstract_state)
  if got != want:
    raise ValueError('restored arrays do not match the model (shapes or dtypes differ)')


def directory_size(path: str) -> int:
  """Bytes on disk under `path`."""
  total = 0
  for root, _, files in os.walk(path):
    total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
  return total
