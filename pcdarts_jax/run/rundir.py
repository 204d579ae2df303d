"""What the search loop and the trainer share about a run's directory: atomic
writes, the saved config, the checks before resuming, and stop signals."""

import json
import os
import signal
import threading
from typing import Any, Callable, Dict, Iterable, Optional, Sequence

from pcdarts_jax.run import config_fields

# The per-epoch JSON-lines log of each kind of run; which one a workdir holds
# tells what kind of run it is.
SEARCH_LOG = 'genotypes.jsonl'
TRAIN_LOG = 'train_log.jsonl'
SUPERNET_LOG = 'supernet_log.jsonl'  # SGNAS's first phase


class Workdir:
  """Paths of a run's outputs (docs/reliability.md); `log_name` is
  the per-epoch JSON-lines log (genotypes.jsonl for a search)."""

  def __init__(self, root: str, log_name: str):
    self.root = root
    self.checkpoints = os.path.join(root, 'checkpoints')
    self.tensorboard = os.path.join(root, 'tensorboard')
    self.plots = os.path.join(root, 'plots')
    self.config = os.path.join(root, 'config.json')
    self.jsonl = os.path.join(root, log_name)
    self.genotype = os.path.join(root, 'genotype.json')
    self.arch = os.path.join(root, 'arch.npz')
    self.summary = os.path.join(root, 'summary.json')


def write_atomic(path: str, text: str):
  """Writes `text` to `path` through a temporary file and a rename: a reader never
  sees a half-written file, a crash never leaves one."""
  tmp = f'{path}.tmp-{os.getpid()}'
  with open(tmp, 'w') as f:
    f.write(text)
  os.replace(tmp, path)


def config_json(config) -> Dict[str, Any]:
  return json.loads(config.to_json_best_effort(sort_keys=True))


def flatten(d: Dict[str, Any], prefix: str = '') -> Dict[str, Any]:
  """{'a': {'b': 1}} -> {'a.b': 1}."""
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flatten(v, f'{prefix}{k}.'))
    else:
      out[prefix + k] = v
  return out


def has_checkpoints(directory: str) -> bool:
  return os.path.isdir(directory) and any(n.isdigit() for n in os.listdir(directory))


def saved_config(paths: Workdir) -> Optional[Dict[str, Any]]:
  """The flattened config.json of the run `paths` holds; None when there is no
  run to resume (no checkpoint: a config.json without one is from a run stopped
  before its first checkpoint, and binds nothing)."""
  if not os.path.exists(paths.config) or not has_checkpoints(paths.checkpoints):
    return None
  with open(paths.config) as f:
    return flatten(json.load(f))


def check_resumable(paths: Workdir, config, resumable: Sequence[str], kind: str,
                    extendable: Sequence[str] = ()):
  """Refuses, before anything is written, a workdir this run must not touch: a
  non-empty one with checkpoint.resume=False, a `kind` run (its log) without a
  checkpoint, or one whose saved config differs outside the `resumable` field
  prefixes. The `extendable` fields (epoch counts) may be raised, never lowered;
  fields the saved config lacks (added to the library since) are accepted, with a note.
  Raises ConfigError naming what differs."""
  root, log_path = paths.root, paths.jsonl
  if not os.path.isdir(root) or not os.listdir(root):
    return
  held = sorted(os.listdir(root))
  if not config.checkpoint.resume:
    raise config_fields.ConfigError(
        f'--workdir={root!r} is not empty ({", ".join(held[:5])}) and '
        f'checkpoint.resume=False: refusing to overwrite it; choose a new workdir, or '
        f'drop checkpoint.resume=False to resume it. Nothing was changed.')
  if os.path.exists(log_path) and not has_checkpoints(paths.checkpoints):
    raise config_fields.ConfigError(
        f'--workdir={root!r} already holds a {kind} ({log_path}) but no checkpoint to '
        f'resume it from; choose a new workdir or remove it. Nothing was changed.')
  before = saved_config(paths)
  if before is None:
    return
  now = flatten(config_json(config))
  lowered = [k for k in extendable if k in before and _is_number(now.get(k))
             and now[k] < before[k]]
  if lowered:
    raise config_fields.ConfigError(
        f'{lowered[0]}={now[lowered[0]]!r} is lower than the {before[lowered[0]]!r} of the '
        f'{kind} in --workdir={root!r}: a resumed run may raise its epochs, not lower '
        f'them. Nothing was changed.')
  # Fields the run's config.json lacks are newer than the run: they take this
  # config's values (their defaults keep the behaviour they were added with).
  added = sorted(k for k in set(now) - set(before) if not k.startswith(tuple(resumable)))
  changed = sorted(k for k in set(before) | set(now)
                   if before.get(k) != now.get(k) and k not in added
                   and not k.startswith(tuple(resumable)) and k not in extendable)
  if changed:
    details = ', '.join(f'{k}: {before.get(k)!r} -> {now.get(k)!r}' for k in changed[:6])
    raise config_fields.ConfigError(
        f'--workdir={root!r} holds a run with a different config ({details}); '
        f'resuming would mix two runs. Use the original config or a new workdir. '
        f'Nothing was changed.')
  if added:
    print(f'the {kind} in {root} predates the config field(s) '
          f'{", ".join(f"{k}={now[k]!r}" for k in added[:6])}{", ..." if len(added) > 6 else ""}: '
          f'they take these values on resuming.', flush=True)
  for k in extendable:
    if k in before and now.get(k) != before[k]:
      print(f'{k} raised from {before[k]} to {now[k]}: the run goes on to the new end; its '
            f'schedules (learning rate, temperature, drop-path) span the new total from here '
            f'on.', flush=True)


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def resumed_config(config, workdir: str, given: Iterable[str]):
  """The config a launcher runs: `config` (its file with the command line's
  overrides) for a new run; for a workdir holding a run to resume, that run's
  config.json, with the fields `given` on the command line (dotted names) taken
  from `config`, so that a resumed run needs none of its overrides retyped.
  check_resumable then decides whether the given changes may resume the run."""
  paths = Workdir(workdir, '')
  saved = saved_config(paths) if config.checkpoint.resume else None
  if saved is None:
    return config
  given = tuple(given)
  merged = config.copy_and_resolve_references()
  now = flatten(config_json(merged))
  taken = []
  for key, value in saved.items():
    if key not in now or now[key] == value or any(
        key == g or key.startswith(g + '.') for g in given):
      continue
    *parents, name = key.split('.')
    holder = merged
    for parent in parents:
      holder = holder[parent]
    holder[name] = _like(holder[name], value)
    taken.append(key)
  if taken:
    print(f'resuming the run in {workdir} with its config.json ({len(taken)} field(s) differ '
          f'from --config: {", ".join(taken[:4])}{", ..." if len(taken) > 4 else ""}); '
          f'--config.FIELD=VALUE on the command line changes a field.', flush=True)
  return merged


def _like(current, value):
  """A JSON value in the type of the config field it replaces (lists -> tuples)."""
  if isinstance(current, tuple) and isinstance(value, list):
    return tuple(_like(c, v) for c, v in zip(current + (None,) * len(value), value))
  if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
    return float(value)
  return value


class StopSignals:
  """SIGTERM/SIGINT -> a flag the loop checks after each step: it writes a
  checkpoint and stops. Before the first step has run (while the step compiles,
  minutes on a CPU) nothing is unsaved, so a signal exits at once; so does a
  second SIGINT. Such an exit prints one line and exits with status 128 + the
  signal (130 for SIGINT, 143 for SIGTERM).

  Python runs signal handlers only between bytecodes of the main thread, which
  waits inside XLA's compiler; a watcher thread reads the signal numbers from
  the interpreter's wakeup fd instead (the compiler releases the GIL). Only in
  the main thread, where Python allows handlers."""

  def __init__(self, exit_now: Callable[[int], None] = os._exit):  # pylint: disable=protected-access
    self.received = None
    self._stepped = False
    self._exit_now = exit_now
    self._previous = {}
    self._previous_fd = None
    self._pipe = None

  def stepped(self):
    """Called after each step: a first signal now waits for the checkpoint."""
    self._stepped = True

  def _signal(self, signum: int):
    name = signal.Signals(signum).name
    if not self._stepped or (self.received is not None and signum == signal.SIGINT):
      why = ('before the first step, while compiling: nothing to save'
             if not self._stepped else 'again: the steps since the last checkpoint are lost')
      print(f'\nreceived {name} {why}; exiting now (status {128 + signum}).', flush=True)
      self._exit_now(128 + signum)
      return
    if self.received is None:
      self.received = signum
      print(f'\nreceived {name}: stopping after this step and writing a checkpoint '
            f'(SIGINT again exits at once)...', flush=True)

  def _watch(self, read_fd: int):
    while True:
      data = os.read(read_fd, 64)
      if not data:  # The write end was closed: the context has exited.
        os.close(read_fd)
        return
      for signum in data:
        if signum in (signal.SIGINT, signal.SIGTERM):
          self._signal(signum)

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      read_fd, write_fd = os.pipe()
      os.set_blocking(write_fd, False)
      self._pipe = write_fd
      self._previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
      for sig in (signal.SIGTERM, signal.SIGINT):
        # The watcher acts; the handler only keeps Python from raising KeyboardInterrupt.
        self._previous[sig] = signal.signal(sig, lambda signum, frame: None)
      threading.Thread(target=self._watch, args=(read_fd,), daemon=True,
                       name='stop-signals').start()
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    if self._pipe is not None:
      signal.set_wakeup_fd(self._previous_fd)
      os.close(self._pipe)
      self._pipe = None
