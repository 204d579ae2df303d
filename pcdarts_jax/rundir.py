"""What the search loop and the trainer share about a run's directory: atomic
writes, the saved config, the checks before resuming, and stop signals."""

import json
import os
import signal
import threading
from typing import Any, Dict, Sequence

from pcdarts_jax import config_validation


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


def check_resumable(paths: Workdir, config, resumable: Sequence[str], kind: str):
  """Refuses, before anything is written, a workdir this run must not touch: a
  non-empty one with checkpoint.resume=False, a `kind` run (its log) without a
  checkpoint, or one whose saved config differs outside the `resumable` field
  prefixes. Raises ConfigError naming what differs."""
  root, config_path, log_path = paths.root, paths.config, paths.jsonl
  if not os.path.isdir(root) or not os.listdir(root):
    return
  held = sorted(os.listdir(root))
  if not config.checkpoint.resume:
    raise config_validation.ConfigError(
        f'--workdir={root!r} is not empty ({", ".join(held[:5])}) and '
        f'checkpoint.resume=False: refusing to overwrite it; choose a new workdir, or '
        f'drop checkpoint.resume=False to resume it. Nothing was changed.')
  if os.path.exists(log_path) and not has_checkpoints(paths.checkpoints):
    raise config_validation.ConfigError(
        f'--workdir={root!r} already holds a {kind} ({log_path}) but no checkpoint to '
        f'resume it from; choose a new workdir or remove it. Nothing was changed.')
  if os.path.exists(config_path):
    with open(config_path) as f:
      before = flatten(json.load(f))
    now = flatten(config_json(config))
    changed = sorted(k for k in set(before) | set(now)
                     if before.get(k) != now.get(k) and not k.startswith(tuple(resumable)))
    if changed:
      details = ', '.join(f'{k}: {before.get(k)!r} -> {now.get(k)!r}' for k in changed[:6])
      raise config_validation.ConfigError(
          f'--workdir={root!r} holds a run with a different config ({details}); '
          f'resuming would mix two runs. Use the original config or a new workdir. '
          f'Nothing was changed.')


class StopSignals:
  """Turns SIGTERM/SIGINT into a flag checked after each step (a second SIGINT
  interrupts at once). Only in the main thread, where Python allows handlers."""

  def __init__(self):
    self.received = None
    self._previous = {}

  def _handle(self, signum, frame):
    if self.received is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.received = signum
    print(f'\nreceived {signal.Signals(signum).name}: stopping after this step and '
          f'writing a checkpoint...', flush=True)

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
