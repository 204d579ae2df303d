"""The one epoch driver of every run: the search (with its progressive stages),
the trainer and SGNAS's two phases.

A run describes each of its phases as a `Phase`: its step, the state the step
carries, and its end-of-epoch work (evaluation, the epoch's record, scalars and
console line). `run_phase` does the rest the same way for every run:

- resuming: epochs from the state's step; a mid-epoch checkpoint's metric sums
  are carried into the epoch; log lines after the checkpoint are dropped;
- checkpoints every `checkpoint.every_steps` steps and at each epoch's end,
  with the meta the phase adds (data positions) and config.json with the first;
  written in the background (`checkpoint.async_save`) from a host copy, and
  waited for before the phase returns or raises;
- stop signals: a checkpoint at the next step, then `Interrupted`;
- the non-finite check on the metric sums the host fetches anyway (log lines,
  checkpoints, epoch ends): `NonFiniteError`, naming the last good checkpoint;
- progress lines, the per-epoch JSON lines, TensorBoard scalars, the epoch's
  pictures, and the clock over every session: wall seconds, and of them the
  seconds compiling, stepping, checkpointing and at epoch ends (`clock`).

It knows nothing about models or spaces. Steps are pure functions; every side
effect of a run happens here or in its phase's `end_epoch`.
"""

import contextlib
import dataclasses
import json
import math
import os
import signal
import threading
import time
from typing import Any, Callable, Dict, Iterator, NamedTuple, Optional, Sequence, Tuple

import jax
import numpy as np

from pcdarts_jax.run import checkpoint
from pcdarts_jax.run import config_fields
from pcdarts_jax.run import metrics
from pcdarts_jax.run import monitor
from pcdarts_jax.run import parallel
from pcdarts_jax.run import rundir

PROGRESS_BAR = {'auto': None, 'bar': True, 'lines': False}  # monitor.progress -> interactive


class Interrupted(Exception):
  """SIGTERM/SIGINT: a checkpoint was written; running the same command resumes."""


class NonFiniteError(RuntimeError):
  """A step went non-finite; the run stopped (the last good checkpoint is named)."""


PROGRESS_MODES = ('auto', 'bar', 'lines')  # monitor.progress


def validate_run(config):
  """The fields every run reads the same way: seed, checkpoint.*, monitor.*
  (one-line ConfigErrors naming the field and the allowed values)."""
  require, is_int = config_fields.require, config_fields.is_int
  require(is_int(config.seed) and config.seed >= 0,
          f'seed={config.seed!r} must be an integer >= 0.')
  c = config.checkpoint
  require(is_int(c.every_steps) and c.every_steps >= 0,
          f'checkpoint.every_steps={c.every_steps!r} must be an integer >= 0 '
          f'(0: only at epoch ends).')
  require(is_int(c.keep) and c.keep >= 1, f'checkpoint.keep={c.keep!r} must be an integer >= 1.')
  config_fields.require_bool(c.resume, 'checkpoint.resume')
  config_fields.require_bool(c.async_save, 'checkpoint.async_save')
  require(config.monitor.progress in PROGRESS_MODES,
          f'monitor.progress={config.monitor.progress!r} is not one of {PROGRESS_MODES}.')
  for field in ('tensorboard', 'pictures'):
    config_fields.require_bool(config.monitor[field], f'monitor.{field}')

@dataclasses.dataclass
class Epoch:
  """What a phase reports at the end of an epoch (`Phase.end_epoch`)."""
  record: Dict[str, Any]      # its JSON line's fields; the driver adds epoch, step, seconds
  scalars: Dict[str, float]   # TensorBoard; the driver adds images_per_second, epoch_seconds
  text: str                   # the console line after 'epoch e/E'; more lines after a newline
  # Drawn (on the main process, with monitor.pictures) after the scalars: writer -> None.
  pictures: Optional[Callable[[Any], None]] = None


@dataclasses.dataclass
class Phase:
  """What differs between the phases of the library's runs; `run_phase` does the rest."""
  name: str                   # 'search', 'train', 'supernet', ...: in non-finite messages
  log_path: str               # the per-epoch JSON lines
  checkpoints: checkpoint.Checkpoints
  epochs: int
  steps_per_epoch: int
  batch_size: int             # global, for images per second
  log_every_steps: int        # a progress line every N steps (0: none)
  run_step: Callable[[Any, int], Tuple[Any, Any]]   # (state, step) -> (state, device sums)
  end_epoch: Callable[[int, Any, Dict[str, float]], Epoch]  # (epoch, state, host sums)
  # Before an epoch's first step: (epoch, first step within it, state) -> state.
  begin_epoch: Optional[Callable[[int, int, Any], Any]] = None
  save_meta: Callable[[], Dict[str, Any]] = dict  # meta stored with each checkpoint
  # (state, host sums, step) -> what went wrong, or None; default: a non-finite loss sum.
  nonfinite: Optional[Callable[[Any, Dict[str, float], int], Optional[str]]] = None
  advice: str = 'Lower the learning rate or check the data.'  # after a non-finite stop
  loss_keys: Tuple[str, str] = ('loss_sum', 'count')  # the progress line's running loss
  label: str = ''             # a multi-phase run's prefix: 'supernet epoch', 'supernet/...'
  scalar_offset: int = 0      # TensorBoard step of epoch e: scalar_offset + e + 1
  # Epochs of differing lengths (a language model's windows of sampled lengths):
  # epoch -> its steps, a pure function of the epoch; None: steps_per_epoch each.
  # Global steps count on over the epochs either way.
  epoch_steps: Optional[Callable[[int], int]] = None
  _starts: list = dataclasses.field(default_factory=lambda: [0], repr=False)

  def words(self, what: str) -> str:
    return f'{self.label} {what}' if self.label else what

  def steps_in(self, epoch: int) -> int:
    """The steps of `epoch` (from 0)."""
    return self.steps_per_epoch if self.epoch_steps is None else self.epoch_steps(epoch)

  def first_step(self, epoch: int) -> int:
    """The global step before `epoch`'s first step (the sum of the earlier epochs')."""
    if self.epoch_steps is None:
      return epoch * self.steps_per_epoch
    while len(self._starts) <= epoch:
      self._starts.append(self._starts[-1] + self.steps_in(len(self._starts) - 1))
    return self._starts[epoch]

  def epoch_of(self, step: int) -> int:
    """The epoch whose steps follow global step `step` (`epochs` once all are done)."""
    if self.epoch_steps is None:
      return step // self.steps_per_epoch
    epoch = 0
    while epoch < self.epochs and self.first_step(epoch + 1) <= step:
      epoch += 1
    return epoch


@dataclasses.dataclass
class Run:
  """What the phases of one run share (`session` opens it)."""
  stop: Any                   # rundir.StopSignals: .received, .stepped()
  writer: Any = None          # monitor.SummaryWriter
  main: bool = True           # process 0 prints and writes files
  every_steps: int = 0        # checkpoint.every_steps (0: at epoch ends only)
  progress: str = 'auto'      # monitor.progress
  pictures: bool = False      # monitor.pictures
  first_save: Callable[[], None] = lambda: None  # before this session's first checkpoint
  saved: bool = False
  async_save: bool = False    # checkpoint.async_save


@contextlib.contextmanager
def session(config, paths: rundir.Workdir,
            first_save: Callable[[], None] = lambda: None) -> Iterator[Run]:
  """The `Run` of `config` in `paths`: stop signals caught, a TensorBoard writer
  (closed at the end). The main process writes config.json (and `first_save()`)
  with the run's first checkpoint: a workdir stopped before it holds no run, and
  a rerun there may use another config."""
  main = parallel.is_main_process()

  def write_config():
    if main:
      rundir.write_atomic(paths.config, json.dumps(rundir.config_json(config), indent=2) + '\n')
      first_save()

  writer = monitor.SummaryWriter(paths.tensorboard, enabled=config.monitor.tensorboard and main)
  try:
    with rundir.StopSignals() as stop:
      yield Run(stop, writer, main, config.checkpoint.every_steps, config.monitor.progress,
                config.monitor.pictures, write_config,
                async_save=config.checkpoint.async_save)
  finally:
    writer.close()


def restore(checkpoints: checkpoint.Checkpoints, abstract_state,
            paths: Optional[rundir.Workdir] = None, what: str = 'run'):
  """(step, state, meta) of the newest checkpoint that restores (meta's
  `resumed_from` extended), or None for a new run. With `paths`: a workdir whose
  log shows a `what` but none of whose checkpoints restores is refused."""
  restored = checkpoints.restore_latest(abstract_state)
  if restored is None:
    if paths is not None and os.path.exists(paths.jsonl):
      raise config_fields.ConfigError(
          f'--workdir={paths.root!r} holds a {what} but none of its checkpoints could be '
          f'restored (see the warnings above); choose a new workdir.')
    return None
  step, state, meta = restored
  meta['resumed_from'] = meta.get('resumed_from', []) + [step]
  return step, state, meta


def position(step: int, steps_per_epoch: int) -> str:
  """'epoch E, step S of N' of a global step (epochs counted from 1)."""
  return (f'epoch {step // steps_per_epoch + 1}, step {step % steps_per_epoch} of '
          f'{steps_per_epoch}')


class Resumed(NamedTuple):
  """A run's newest checkpoint (`resume`). `complete`: the run had finished and
  written its outputs; nothing was changed and the caller returns them."""
  step: int
  state: Any
  meta: Dict[str, Any]
  complete: bool


def complete_text(what: str, workdir: str, extent: str, longer: str) -> str:
  """The line of a rerun of a finished run: `extent` is what it ran, `longer`
  the field to raise and what for ('--config.search.epochs to search')."""
  return (f'the {what} in {workdir} is already complete ({extent}); nothing was changed. '
          f'Raise {longer} longer.')


def resuming_text(step: int, directory: str, where: Optional[str] = None,
                  phase: Optional[str] = None) -> str:
  """The line of a resumed run: 'resuming [PHASE ]from checkpoint N[ (WHERE)] in DIR'."""
  return (f'resuming {phase + " " if phase else ""}from checkpoint {step}'
          f'{f" ({where})" if where else ""} in {directory}')


def resume(checkpoints: checkpoint.Checkpoints, abstract_state, paths: rundir.Workdir,
           what: str, *, section: str, epochs: int, total_steps: int,
           outputs: Sequence[str], finishing: str,
           steps_per_epoch: Optional[int] = None) -> Optional[Resumed]:
  """The newest checkpoint of the `what` in `paths` (`restore`; None for a new
  run), and the line saying how the run goes on. Past `total_steps` with all its
  `outputs` written, the run is complete: its checkpoints are closed. Otherwise
  it resumes at its position (epoch and step with `steps_per_epoch`, else the
  step of `total_steps`), or, past its end, redoes its final work (`finishing`
  says which). `section`: the config section whose `epochs` a rerun raises."""
  restored = restore(checkpoints, abstract_state, paths, what)
  if restored is None:
    return None
  step, state, meta = restored
  done = step >= total_steps
  if done and all(os.path.exists(p) for p in outputs):
    checkpoints.close()
    print(complete_text(what, paths.root, f'{epochs} epochs, checkpoint {step}',
                        f'--config.{section}.epochs to {section}'), flush=True)
    return Resumed(step, state, meta, True)
  where = (finishing if done else position(step, steps_per_epoch) if steps_per_epoch
           else f'step {step} of {total_steps}')
  print(resuming_text(step, paths.checkpoints, where), flush=True)
  return Resumed(step, state, meta, False)


def keep_epochs(log_path: str, epochs: int):
  """Drops the JSON lines of epochs after the first `epochs` (a resumed run
  redoes them; records number epochs from 1, as the console does)."""
  if not os.path.exists(log_path):
    return
  with open(log_path) as f:
    kept = [line for line in f if line.strip() and json.loads(line)['epoch'] <= epochs]
  rundir.write_atomic(log_path, ''.join(kept))


def last_good(checkpoints: checkpoint.Checkpoints) -> str:
  step = checkpoints.latest_step()
  return (f'checkpoint {step} in {checkpoints.directory}' if step is not None
          else 'none was written yet')


def _check_finite(phase: Phase, state, sums: Dict[str, float], step: int):
  if phase.nonfinite is not None:
    what = phase.nonfinite(state, sums, step)
  elif not math.isfinite(sums[phase.loss_keys[0]]):
    what = f'non-finite {phase.name} loss by step {step}; the state was not checkpointed.'
  else:
    what = None
  if what:
    raise NonFiniteError(f'{what} Last good checkpoint: {last_good(phase.checkpoints)}. '
                         f'{phase.advice}')


# jax.monitoring's duration events of making an XLA program: tracing to a jaxpr,
# lowering to MLIR, compiling (or reading from the persistent compilation cache).
COMPILE_EVENTS = ('/jax/core/compile/jaxpr_trace_duration',
                  '/jax/core/compile/jaxpr_to_mlir_module_duration',
                  '/jax/core/compile/backend_compile_duration')


class CompileClock:
  """Seconds spent making XLA programs while open, in any thread: every jit,
  pmap and eager op that traces, lowers or compiles reports it to jax.monitoring."""

  def __init__(self):
    self.seconds = 0.0
    self._lock = threading.Lock()

  def _listen(self, event: str, duration_secs: float, **unused):
    if event in COMPILE_EVENTS:
      with self._lock:
        self.seconds += duration_secs

  def __enter__(self) -> 'CompileClock':
    jax.monitoring.register_event_duration_secs_listener(self._listen)
    return self

  def __exit__(self, *exc):
    jax.monitoring.unregister_event_duration_listener(self._listen)


# The seconds `run_phase` keeps in meta, summed over the sessions of a run.
CLOCK_KEYS = ('wall_seconds', 'compile_seconds', 'step_seconds', 'checkpoint_seconds',
              'eval_seconds')


def clock(meta: Dict[str, Any]) -> Dict[str, Any]:
  """A phase's clock for its summary.json, over every session of the run:
  `wall_seconds` (from its first step to its last checkpoint on disk) and, of
  them, `compile_seconds` (tracing, lowering and compiling XLA programs, or
  reading them from the persistent cache), `stepping_seconds` (the steps,
  without compiling them or waiting for checkpoints), `checkpoint_seconds` (the
  steps held up by checkpoints: the host copy, and the writing unless
  checkpoint.async_save), `eval_seconds` (the epochs' end: evaluation, genotype,
  record; compiling left out); the rest is logs and pictures. `steps_per_second`
  counts the stepping seconds. Checkpoints from before these fields count 0."""
  seconds = {key: float(meta.get(key, 0.0)) for key in CLOCK_KEYS}
  stepping = seconds.pop('step_seconds')
  return {'wall_seconds': seconds['wall_seconds'],
          'compile_seconds': seconds['compile_seconds'],
          'stepping_seconds': stepping,
          'checkpoint_seconds': seconds['checkpoint_seconds'],
          'eval_seconds': seconds['eval_seconds'],
          'steps_per_second': meta.get('steps_run', 0) / stepping if stepping > 0 else None}


def clock_text(summary: Dict[str, Any]) -> str:
  """'Ws in total: Cs compiling, Ss stepping, Ks checkpointing, Es evaluating'
  of a `clock`."""
  return (f"{summary['wall_seconds']:.1f}s in total: {summary['compile_seconds']:.1f}s "
          f"compiling, {summary['stepping_seconds']:.1f}s stepping, "
          f"{summary['checkpoint_seconds']:.1f}s checkpointing, "
          f"{summary['eval_seconds']:.1f}s evaluating")


def run_steps(run: Run, phase: Phase, state, epoch: int, first: int, sums, progress,
              save: Callable[[int, Any, Dict[str, float]], None]):
  """Steps `first`.. of `epoch`; returns (state, the epoch's host sums, checked).

  Sums are added on the device, starting from `sums` (those carried from a
  mid-epoch checkpoint, or None). The host fetches them only to log (every
  `log_every_steps`) or to checkpoint (every `run.every_steps`, or when a stop
  signal arrived; never at the epoch's last step, where the epoch-end checkpoint
  serves), and checks them before `save(step, state, host sums)`; after a
  signal's checkpoint it raises Interrupted, saying how to resume."""
  spe, before = phase.steps_in(epoch), phase.first_step(epoch)
  loss_sum, count = phase.loss_keys
  for i in range(first, spe):
    done = before + i + 1
    state, step_sums = phase.run_step(state, done - 1)
    sums = metrics.accumulate(sums, step_sums)
    run.stop.stepped()  # Compiled and dispatched: a stop signal now gets its checkpoint.
    saving = i + 1 < spe and (run.stop.received is not None or
                              bool(run.every_steps and done % run.every_steps == 0))
    logging_now = phase.log_every_steps and done % phase.log_every_steps == 0
    fetched = None
    if saving or logging_now:
      fetched = metrics.host_sums(sums)
      _check_finite(phase, state, fetched, done)
    progress.update(fetched and {'loss': fetched[loss_sum] / max(fetched[count], 1.0)})
    if saving:
      save(done, state, fetched)
      if run.stop.received is not None:
        progress.close()
        raise Interrupted(
            f'stopped by {signal.Signals(run.stop.received).name} after '
            f'{phase.words("step")} {done}; checkpoint {done} written to '
            f'{phase.checkpoints.directory}. Run the same command again to resume.')
  progress.close()
  fetched = metrics.host_sums(sums)
  _check_finite(phase, state, fetched, before + spe)
  return state, fetched


def run_phase(run: Run, phase: Phase, state, meta: Dict[str, Any]):
  """The epochs of `phase` from the state's step to `phase.epochs`; returns
  (state, meta). `state` is replicated over the local devices and has a `step`;
  `meta` is what the next checkpoint stores besides it (restored or new). The
  driver keeps in it: the carried metric sums, the clock over every session
  (wall_seconds, compile_seconds, step_seconds with steps_run,
  checkpoint_seconds, eval_seconds: see `clock`), and `checkpoint` (figures of
  the newest save, `Checkpoints.figures`; a checkpoint holds those of the save
  before it). A pending checkpoint is complete when it returns or raises
  (Interrupted, NonFiniteError, any error)."""
  with CompileClock() as compiles:
    try:
      return _run_epochs(run, phase, state, meta, compiles)
    finally:
      phase.checkpoints.wait()


def _run_epochs(run: Run, phase: Phase, state, meta: Dict[str, Any], compiles: CompileClock):
  start_step = int(jax.device_get(parallel.unreplicate(state.step)))
  start_epoch = phase.epoch_of(start_step)
  if run.main:
    keep_epochs(phase.log_path, start_epoch)
  for key in CLOCK_KEYS:
    meta.setdefault(key, 0.0)
  meta.setdefault('steps_run', 0)
  meta['checkpoint'] = dict(meta.get('checkpoint') or {'save_seconds': None, 'size_bytes': None})
  counted = [time.time(), compiles.seconds]  # wall and compile seconds counted up to here
  blocked = [0.0]  # seconds the steps waited for checkpoints in this session

  def count_clock():
    now = time.time()
    meta['wall_seconds'] += now - counted[0]
    meta['compile_seconds'] += compiles.seconds - counted[1]
    counted[:] = [now, compiles.seconds]

  def newest_figures():
    figures = phase.checkpoints.figures()  # Waits for the save before.
    if figures['save_seconds'] is not None:
      meta['checkpoint'] = figures

  def save(step: int, state, host_sums):
    if run.main and not run.saved:
      run.first_save()
    run.saved = True
    start, compiled = time.time(), compiles.seconds
    newest_figures()
    meta.update(phase.save_meta(), sums=host_sums)
    count_clock()
    # Every process passes the same values; orbax writes them once. The save
    # takes a host copy before the next step donates the state's buffers.
    phase.checkpoints.save(step, parallel.unreplicate(state), meta, wait=not run.async_save)
    seconds = time.time() - start - (compiles.seconds - compiled)  # Slicing may compile.
    blocked[0] += seconds
    meta['checkpoint_seconds'] += seconds

  for epoch in range(start_epoch, phase.epochs):
    epoch_start = time.time()
    spe, end = phase.steps_in(epoch), phase.first_step(epoch + 1)
    first = start_step - phase.first_step(epoch) if epoch == start_epoch else 0
    if phase.begin_epoch is not None:
      state = phase.begin_epoch(epoch, first, state)
    # Resumed mid-epoch: the sums of the steps before the checkpoint, added on the
    # device in float32 as the uninterrupted run adds them.
    carried = ({k: np.float32(v) for k, v in meta['sums'].items()}
               if first and meta.get('sums') else None)
    progress = monitor.Progress(epoch, phase.epochs, spe, phase.batch_size,
                                phase.log_every_steps, PROGRESS_BAR[run.progress],
                                initial=first)
    loop_start, compiled, saving = time.time(), compiles.seconds, blocked[0]
    state, sums = run_steps(run, phase, state, epoch, first, carried, progress, save)
    # The steps' time, without compiling them and without mid-epoch checkpoints.
    step_seconds = (time.time() - loop_start - (compiles.seconds - compiled) -
                    (blocked[0] - saving))
    meta['steps_run'] += spe - first
    meta['step_seconds'] += step_seconds
    eval_start, compiled = time.time(), compiles.seconds
    result = phase.end_epoch(epoch, state, sums)
    meta['eval_seconds'] += time.time() - eval_start - (compiles.seconds - compiled)
    seconds = time.time() - epoch_start
    record = {'epoch': epoch + 1, 'step': end, **result.record,
              'seconds': seconds}
    if run.main:
      with open(phase.log_path, 'a') as f:
        f.write(json.dumps(record) + '\n')
    scalars = {**result.scalars, 'epoch_seconds': seconds,
               'images_per_second': (spe - first) * phase.batch_size / max(step_seconds, 1e-9)}
    prefix = f'{phase.label}/' if phase.label else ''
    run.writer.scalars(phase.scalar_offset + epoch + 1,
                       {prefix + k: v for k, v in scalars.items()})
    if result.pictures is not None and run.pictures and run.main:
      result.pictures(run.writer)
    run.writer.flush()
    if run.main:
      line, newline, more = result.text.partition('\n')
      print(f'{phase.words("epoch")} {epoch + 1}/{phase.epochs} {line} ({seconds:.1f}s)'
            f'{newline}{more}', flush=True)
    save(end, state, None)
    if run.stop.received is not None and epoch + 1 < phase.epochs:
      raise Interrupted(
          f'stopped by {signal.Signals(run.stop.received).name} after '
          f'{phase.words("epoch")} {epoch + 1}; checkpoint written to '
          f'{phase.checkpoints.directory}. Run the same command again to resume.')
  meta['checkpoint_seconds'] += phase.checkpoints.wait()  # The last save, on disk.
  newest_figures()
  count_clock()
  return state, meta
