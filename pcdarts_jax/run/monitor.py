"""Watching a run: TensorBoard event files, a per-epoch progress display, and
scalar summaries of the architecture.

The event writer uses the `tensorboard` package's own protobufs and file writer,
so it needs neither TensorFlow nor a running TensorBoard.
"""

import glob
import os
import socket
import struct
import sys
import time
from typing import Callable, Dict, Mapping, Optional

import jax


class SummaryWriter:
  """Scalars and PNG images to `logdir`/events.out.tfevents.* (TensorBoard format).

  Records are written with tensorboard's RecordWriter into a plain file: its
  EventFileWriter would import all of TensorFlow just to create a directory.
  """

  def __init__(self, logdir: str, enabled: bool = True):
    self.enabled = enabled
    if not enabled:
      return
    from tensorboard.compat.proto import event_pb2  # pylint: disable=g-import-not-at-top
    from tensorboard.summary.writer import record_writer  # pylint: disable=g-import-not-at-top
    os.makedirs(logdir, exist_ok=True)
    now = time.time()
    path = os.path.join(logdir, f'events.out.tfevents.{now:.0f}.{socket.gethostname()}.'
                                f'{os.getpid()}.pcdarts')
    self._writer = record_writer.RecordWriter(open(path, 'wb'))
    self._write(event_pb2.Event(wall_time=now, file_version='brain.Event:2'))

  def _write(self, event):
    self._writer.write(event.SerializeToString())

  def scalars(self, step: int, values: Mapping[str, float]):
    if not self.enabled or not values:
      return
    from tensorboard.compat.proto import summary_pb2  # pylint: disable=g-import-not-at-top
    summary = summary_pb2.Summary(value=[
        summary_pb2.Summary.Value(tag=tag, simple_value=float(v)) for tag, v in values.items()])
    self._add(step, summary)

  def image_png(self, step: int, tag: str, png_path: str):
    if not self.enabled:
      return
    from tensorboard.compat.proto import summary_pb2  # pylint: disable=g-import-not-at-top
    with open(png_path, 'rb') as f:
      encoded = f.read()
    width, height = struct.unpack('>II', encoded[16:24])  # The PNG IHDR chunk.
    image = summary_pb2.Summary.Image(height=height, width=width, colorspace=4,
                                      encoded_image_string=encoded)
    self._add(step, summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, image=image)]))

  def _add(self, step: int, summary):
    from tensorboard.compat.proto import event_pb2  # pylint: disable=g-import-not-at-top
    self._write(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))

  def flush(self):
    if self.enabled:
      self._writer.flush()

  def close(self):
    if self.enabled and not self._writer.closed:
      self._writer.close()


def read_scalars(logdir: str) -> Dict[str, Dict[int, float]]:
  """{tag: {step: value}} of every scalar in the event files under `logdir`."""
  from tensorboard.backend.event_processing import event_file_loader  # pylint: disable=g-import-not-at-top
  scalars: Dict[str, Dict[int, float]] = {}
  for path in sorted(glob.glob(os.path.join(logdir, '**', 'events.out.tfevents.*'),
                               recursive=True)):
    for event in event_file_loader.LegacyEventFileLoader(path).Load():
      for value in event.summary.value:
        if value.HasField('simple_value'):
          scalars.setdefault(value.tag, {})[event.step] = value.simple_value
  return scalars


# Seconds spent in, and the number of, the compiling first calls of announced
# steps in this process: Progress leaves them out of its rates.
_compiling = {'seconds': 0.0, 'steps': 0}


def announce_compile(step_fn: Callable, what: str) -> Callable:
  """`step_fn` (jitted or pmapped), saying so around its first call, where JAX
  compiles it: 'compiling the search step...' and then the seconds it took
  (compiling and the first step; from the persistent cache, little)."""
  compiled = False

  def step(*args, **kwargs):
    nonlocal compiled
    if compiled:
      return step_fn(*args, **kwargs)
    say = jax.process_index() == 0
    if say:
      print(f'compiling {what}...', flush=True)
    start = time.perf_counter()
    # Waiting for the first result puts the time where it belongs (once per step function).
    out = jax.block_until_ready(step_fn(*args, **kwargs))
    compiled = True
    seconds = time.perf_counter() - start
    _compiling['seconds'] += seconds
    _compiling['steps'] += 1
    if say:
      print(f'compiled {what} in {seconds:.1f}s', flush=True)
    return out

  return step


def _clock(seconds: float) -> str:
  minutes, seconds = divmod(int(round(seconds)), 60)
  if minutes >= 60:
    return f'{minutes // 60}:{minutes % 60:02d}:{seconds:02d}'
  return f'{minutes}:{seconds:02d}'


class Progress:
  """One epoch's progress: a tqdm bar on an interactive terminal, otherwise a
  plain line every `log_every` steps (0 = none).

  Rates and the time left leave out the steps that compiled (announce_compile),
  and their time: a minute or more on a CPU, it would make the early estimates
  many times too slow. The bar appears after the epoch's first step, so that
  the 'compiling' lines come before it and its own clock starts after them."""

  def __init__(self, epoch: int, epochs: int, total_steps: int, batch_size: int,
               log_every: int, interactive: Optional[bool] = None, initial: int = 0):
    self.epoch, self.epochs, self.total = epoch, epochs, total_steps
    self.batch_size, self.log_every = batch_size, log_every
    self.done = initial
    self._start, self._start_done = time.time(), initial
    self._compiling_before = dict(_compiling)
    self._interactive = sys.stderr.isatty() if interactive is None else interactive
    self._bar = None

  def steps_per_second(self) -> Optional[float]:
    """Over this epoch's compiled steps; None before there are any."""
    steps = self.done - self._start_done - (_compiling['steps'] -
                                            self._compiling_before['steps'])
    seconds = (time.time() - self._start -
               (_compiling['seconds'] - self._compiling_before['seconds']))
    return steps / max(seconds, 1e-9) if steps > 0 else None

  def images_per_second(self) -> Optional[float]:
    rate = self.steps_per_second()
    return None if rate is None else rate * self.batch_size

  def seconds_left(self) -> Optional[float]:
    """Of this epoch, at the measured rate."""
    rate = self.steps_per_second()
    return None if rate is None else (self.total - self.done) / rate

  def update(self, metrics: Optional[Mapping[str, float]] = None):
    """One step done; `metrics` (loss, accuracy so far) when known."""
    self.done += 1
    if self._bar is None and self._interactive:
      import tqdm  # pylint: disable=g-import-not-at-top
      self._bar = tqdm.tqdm(total=self.total, initial=self.done, unit='step', leave=False,
                            desc=f'epoch {self.epoch + 1}/{self.epochs}', dynamic_ncols=True)
    elif self._bar is not None:
      self._bar.update(1)
    postfix = {}
    if self.images_per_second() is not None:
      postfix['img/s'] = f'{self.images_per_second():.1f}'
    if metrics:
      postfix.update({k: f'{v:.4f}' for k, v in metrics.items()})
    if self._bar is not None:
      self._bar.set_postfix(postfix, refresh=False)
    elif self.log_every and self.done % self.log_every == 0:
      if self.seconds_left() is not None:
        postfix['left'] = _clock(self.seconds_left())
      text = ' '.join(f'{k} {v}' for k, v in postfix.items())
      print(f'  epoch {self.epoch + 1}/{self.epochs} step {self.done}/{self.total} {text}',
            flush=True)

  def close(self):
    if self._bar is not None:
      self._bar.close()
