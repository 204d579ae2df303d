"""Atomic, rotating checkpoints of a run (orbax), with fallback past a bad one.

A checkpoint holds two items: `state`, the pytree of arrays (weights, BatchNorm
statistics, arch values, optimizer states, step, rng), and `meta`, a JSON dict
(data-iterator positions, partial-epoch metric sums, ...). Orbax writes each
step into a temporary directory and renames it when complete, so a run killed
while saving leaves the previous checkpoints intact.

A save may return before its files are written (`save(..., wait=False)`): it
takes a host copy of the state first, so the caller's next step may donate the
device buffers, and orbax writes the copy in a background thread. Everything
that reads the checkpoints (`steps`, `restore`, `close`, `figures`) first waits
for a pending save, and the next save waits for the one before it.

Two ways a checkpoint can fail to restore, told apart: its bytes are unreadable
(truncated or damaged files; the run falls back to the previous checkpoint and
moves the bad one aside), or it is intact but holds other arrays than the state
asked for (another model or config; `CheckpointMismatch`, nothing is moved).
"""

import json
import logging
import os
import shutil
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

import jax
import orbax.checkpoint as ocp
from etils import epath

UNREADABLE_DIR = 'checkpoints_unreadable'  # next to the checkpoints directory


class CheckpointMismatch(ValueError):
  """An intact checkpoint whose arrays are not those of the state to restore."""


class Checkpoints:
  """The checkpoints of one run, in `directory/<step>/`. read_only: never creates,
  writes, deletes or moves anything (evaluation of someone's run)."""

  def __init__(self, directory: str, keep: int, read_only: bool = False):
    self.directory = os.path.abspath(directory)
    self.read_only = read_only
    _drop_closed_loop_callbacks()
    _drop_wait_warnings()
    # The newest save: its step, when it began, the seconds its caller waited,
    # and when its files were complete (orbax's post-finalization callback).
    self._newest: Optional[Dict[str, Any]] = None
    # Read-only by never saving, deleting or creating (orbax's own read_only
    # option logs a warning on every use).
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None if read_only else keep, create=not read_only,
        # Saves write in a background thread; `save(wait=True)` waits for it.
        enable_async_checkpointing=not read_only,
        async_options=None if read_only else ocp.AsyncOptions(
            post_finalization_callback=self._written))
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=('state', 'meta'))

  def _written(self):
    if self._newest is not None:
      self._newest.setdefault('written', time.time())

  def wait(self) -> float:
    """Waits for a pending save to be complete on disk; returns the seconds waited."""
    start = time.time()
    self._manager.wait_until_finished()
    return time.time() - start

  def steps(self) -> List[int]:
    self.wait()
    return sorted(self._manager.all_steps())

  def latest_step(self) -> Optional[int]:
    steps = self.steps()
    return steps[-1] if steps else None

  def save(self, step: int, state: Any, meta: Dict[str, Any], wait: bool = True) -> float:
    """Writes checkpoint `step`; returns the seconds the caller waited. wait=False
    returns once the state is copied to the host (`jax.device_get`; arrays already
    on the host are used as they are, so the caller must not change them in
    place) and `meta` to a snapshot; the files are written in the background."""
    if self.read_only:
      raise RuntimeError(f'{self.directory} was opened read-only.')
    start = time.time()
    self._manager.wait_until_finished()  # The previous save (orbax would wait, too).
    # Copies the save owns: the caller's next step may donate the device buffers,
    # and its meta dict changes after the save.
    state = jax.device_get(state)
    meta = json.loads(json.dumps(meta))
    self._newest = {'step': step, 'start': start, 'async': not wait}
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
    if wait:
      self._manager.wait_until_finished()
    self._newest['save_seconds'] = time.time() - start
    return self._newest['save_seconds']

  def figures(self) -> Dict[str, Any]:
    """Of the newest save of this object, once its files are complete:
    `save_seconds` (its caller waited), `write_seconds` (from its start until
    its files were complete), `size_bytes` and `async` (None where there was no save)."""
    self.wait()
    newest = self._newest
    if newest is None:
      return {'save_seconds': None, 'write_seconds': None, 'size_bytes': None, 'async': None}
    written = newest.get('written', newest['start'] + newest['save_seconds'])
    return {'save_seconds': newest['save_seconds'],
            'write_seconds': max(written - newest['start'], newest['save_seconds']),
            'size_bytes': directory_size(os.path.join(self.directory, str(newest['step']))),
            'async': newest['async']}

  def restore(self, step: int, abstract_state: Any) -> Tuple[Any, Dict[str, Any]]:
    """`abstract_state` is the state's shapes, or a function of the checkpoint's
    meta giving them (the state's layout may depend on it, e.g. a later stage of
    progressive learning); None restores the arrays as saved (nested dicts).
    Raises CheckpointMismatch when the saved arrays (names, shapes, dtypes) are
    not those of `abstract_state`, read from the checkpoint's metadata before
    any array; any other exception means unreadable bytes."""
    self.wait()
    if callable(abstract_state):
      meta = self._manager.restore(step, args=ocp.args.Composite(
          meta=ocp.args.JsonRestore()))['meta']
      abstract_state = abstract_state(meta)
    if abstract_state is not None:
      saved = ocp.StandardCheckpointHandler().metadata(
          epath.Path(self.directory) / str(step) / 'state')
      difference = _difference(_named(saved.tree), _named(abstract_state))
      if difference:
        raise CheckpointMismatch(
            f'checkpoint {step} in {self.directory} holds other arrays than this run '
            f'expects: {difference}')
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    return restored['state'], restored['meta']

  def restore_latest(self, abstract_state: Any) -> Optional[Tuple[int, Any, Dict[str, Any]]]:
    """Newest checkpoint that restores; None when there is none. One whose bytes
    are unreadable is moved aside with a warning (kept for inspection, never
    deleted; left in place when read-only) and the previous one is tried. A
    checkpoint that reads but does not fit `abstract_state` raises
    CheckpointMismatch, and nothing is moved."""
    for step in reversed(self.steps()):
      try:
        state, meta = self.restore(step, abstract_state)
        return step, state, meta
      except CheckpointMismatch:
        raise
      except Exception as e:  # pylint: disable=broad-except
        reason = f'{type(e).__name__}: {str(e)[:200]}'
        if self.read_only:
          where = 'left in place'
        else:
          where = f'moved to {self._quarantine(step)}'
        print(f'warning: checkpoint {step} in {self.directory} cannot be read ({reason}); '
              f'{where}, trying the previous one.', file=sys.stderr, flush=True)
    return None

  def _quarantine(self, step: int) -> str:
    """Moves a bad step out of orbax's directory so that it can be saved again."""
    source = os.path.join(self.directory, str(step))
    target = os.path.join(os.path.dirname(self.directory), UNREADABLE_DIR,
                          f'{step}-{int(time.time())}')
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.move(source, target)
    self._manager.reload()
    return target

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()


def _leaf_name(path) -> str:
  """Orbax's name of a leaf: its key path joined by dots (params.cell_0.kernel)."""
  keys = (getattr(k, 'key', getattr(k, 'idx', getattr(k, 'name', k))) for k in path)
  return '.'.join(str(k) for k in keys)


def _named(tree) -> Dict[str, Tuple[Tuple[int, ...], str]]:
  """{leaf name: (shape, dtype)} of arrays, ShapeDtypeStructs or orbax metadata."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {_leaf_name(path): (tuple(leaf.shape), str(leaf.dtype)) for path, leaf in leaves}


def _difference(saved: Dict[str, Any], wanted: Dict[str, Any]) -> str:
  """The first array that differs between two `_named` trees, and how many more."""
  problems = []
  for name in sorted(set(saved) | set(wanted)):
    if name not in saved:
      problems.append(f'{name} {_describe(wanted[name])} is not in the checkpoint')
    elif name not in wanted:
      problems.append(f'the checkpoint has {name} {_describe(saved[name])}, which this run '
                      f'does not')
    elif saved[name] != wanted[name]:
      problems.append(f'{name} is {_describe(saved[name])} in the checkpoint, '
                      f'{_describe(wanted[name])} here')
  if not problems:
    return ''
  more = f' (and {len(problems) - 1} more arrays differ)' if len(problems) > 1 else ''
  return problems[0] + more


def _describe(shape_dtype) -> str:
  shape, dtype = shape_dtype
  return f'{dtype}{list(shape)}'


def _drop_closed_loop_callbacks():
  """A restore that fails on one array leaves orbax's reads of the others in
  flight; orbax closes its event loop at once, and each read that completes
  afterwards reports `RuntimeError: Event loop is closed` from
  `call_soon_threadsafe` (hundreds of tracebacks around the one useful warning).
  Nothing waits for those results: drop exactly these reports, pass on the rest."""
  previous = sys.unraisablehook
  if getattr(previous, 'drops_closed_loop_callbacks', False):
    return

  def hook(unraisable):
    error, tb = unraisable.exc_value, unraisable.exc_traceback
    frames = []
    while tb is not None:
      frames.append(tb.tb_frame.f_code.co_name)
      tb = tb.tb_next
    if (isinstance(error, RuntimeError) and str(error) == 'Event loop is closed'
        and 'call_soon_threadsafe' in frames):
      return
    previous(unraisable)

  hook.drops_closed_loop_callbacks = True
  sys.unraisablehook = hook


class _WaitWarnings(logging.Filter):
  """Drops orbax's 'Waiting for previous save to complete took N seconds': it
  adds up every wait of the manager, the waits of synchronous saves too, and
  the run reports the seconds its checkpoints held it up (checkpoint_seconds)."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith('Waiting for previous save to complete took')


def _drop_wait_warnings():
  logger = logging.getLogger('absl')
  if not any(isinstance(f, _WaitWarnings) for f in logger.filters):
    logger.addFilter(_WaitWarnings())


def directory_size(path: str) -> int:
  """Bytes on disk under `path`."""
  total = 0
  for root, _, files in os.walk(path):
    total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
  return total
