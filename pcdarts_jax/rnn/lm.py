"""What the RNN search and the RNN training share: the state, the epoch's windows,
padded window batches, evaluation over a split, and the config checks of the
sections both have.

Windows. An epoch walks the train stream [B, N] in windows of sampled lengths (the
reference's `while i < N - 2`). The lengths of epoch e are drawn by a NumPy
generator seeded with (seed, e): window k's length is a function of (seed, e, k),
so a resumed run draws what the uninterrupted one drew, and the number of steps of
each epoch (which differs between epochs) is known in advance (driver.Phase's
epoch_steps).

Padding. Each distinct window shape is its own compiled program: the sampled
lengths (train.py's N(., 5) jitter gives ~50), the tail windows at the end of a
stream, and, in the search, every length of the capped arch window. A window of
length L is padded to `padded_length(L, bucket, longest)`: L rounded up to a
multiple of `<section>.seq_len_bucket`, at most the longest window; the padded
steps leave the hidden state and BatchNorm statistics unchanged and count in no
loss (model.RNNModel's `length`). Bucket 0 keeps every length exact.
"""

import functools
from typing import Any, Dict, NamedTuple, Optional, Sequence, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np

from pcdarts_jax.run import config_fields
from pcdarts_jax.run import monitor
from pcdarts_jax.spaces.rnn import corpus as corpus_lib
from pcdarts_jax.spaces.rnn import model as model_lib
from pcdarts_jax.spaces.rnn import steps

ConfigError = config_fields.ConfigError
require = config_fields.require


@flax.struct.dataclass
class LMState:
  """The driver's state: the global step and the RNN steps' state dict (`core`)."""
  step: jax.Array
  core: Any


# ------------------------------------------------------------------- windows


@functools.lru_cache(maxsize=8)
def epoch_windows(seed: int, epoch: int, n: int, bptt: int, max_seq_len_delta: int,
                  jitter: bool) -> Tuple[Tuple[int, int], ...]:
  """((column i, sampled seq_len), ...) of epoch `epoch` over a [B, n] stream."""
  rng = np.random.default_rng([seed, epoch])
  return tuple(steps.epoch_windows(n, bptt, rng, max_seq_len_delta, jitter))


def longest_window(section) -> int:
  """The longest window a section samples: bptt, or bptt + max_seq_len_delta with the
  jitter."""
  return section.bptt + (section.max_seq_len_delta if section.seq_len_jitter else 0)


def padded_length(length: int, bucket: int, longest: int) -> int:
  """`length` rounded up to a multiple of `bucket`, at most `longest` (bucket 0: exact)."""
  if not bucket:
    return length
  return max(length, min(-(-length // bucket) * bucket, longest))


def window(stream: np.ndarray, i: int, seq_len: int, bucket: int = 0,
           longest: Optional[int] = None):
  """(inputs, targets, real length L) at column i of stream [B, N]: the reference's
  batch (L = min(seq_len, N - 1 - i)), zero-padded to padded_length(L, bucket, longest)."""
  x, y = corpus_lib.get_batch(stream, i, seq_len)
  length = x.shape[1]
  padded = padded_length(length, bucket, longest if longest is not None else seq_len)
  if padded > length:
    pad = ((0, 0), (0, padded - length))
    x, y = np.pad(x, pad), np.pad(y, pad)
  return x, y, length


def streams(corpus: corpus_lib.Corpus, section, name: str,
            arch: bool = False) -> Dict[str, np.ndarray]:
  """The batch-first streams of a run (`name`: its config section), as the reference
  batchifies them: train with `batch_size` rows, the valid split with
  `eval_batch_size` rows, the test split with `test_batch_size` rows and (`arch`:
  the search) the arch stream, the valid split with `batch_size` rows."""
  out = {}
  for stream, split, field in (('train', 'train', 'batch_size'),
                               ('search', 'valid', 'batch_size'),
                               ('valid', 'valid', 'eval_batch_size'),
                               ('test', 'test', 'test_batch_size')):
    if stream == 'search' and not arch:
      continue
    ids, rows = getattr(corpus, split), section[field]
    require(len(ids) // rows >= 3,
            f'{name}.{field}={rows} leaves {len(ids) // rows} tokens per row of the '
            f'{len(ids)}-token {split} split; allowed: 1..{len(ids) // 3}.')
    out[stream] = corpus_lib.batchify(ids, rows)
  return out


def load_corpus(data_config) -> corpus_lib.Corpus:
  try:
    return corpus_lib.load_corpus(data_config)
  except (OSError, ValueError) as e:
    raise ConfigError(str(e)) from None


# ---------------------------------------------------------------- evaluation


def split_windows(data: np.ndarray, bptt: int):
  """(inputs [W, B, bptt], targets, real lengths [W]) of the evaluation windows of a
  [B, N] split (steps of bptt; the tail window padded)."""
  xs, ys, lengths = [], [], []
  for i in corpus_lib.eval_chunks(data.shape[1], bptt):
    x, y, length = window(data, i, bptt, bptt, bptt)
    xs.append(x)
    ys.append(y)
    lengths.append(length)
  return np.stack(xs), np.stack(ys), np.asarray(lengths, np.int32)


class Split(NamedTuple):
  """A split's evaluation windows, on the device."""
  inputs: jax.Array
  targets: jax.Array
  lengths: jax.Array
  tokens: int


def eval_split(data: np.ndarray, bptt: int) -> Split:
  x, y, lengths = split_windows(data, bptt)
  return Split(jnp.asarray(x), jnp.asarray(y), jnp.asarray(lengths),
               int(data.shape[0] * (data.shape[1] - 1)))


def make_evaluator(model, what: str):
  """evaluate(params, arch, batch_stats, split) -> mean token NLL over the split (its
  perplexity is exp of it): one compiled scan over the split's windows on one device,
  the hidden state carried from zeros, per-window sums added on the host in float64.
  `model` is the single-device model (no axis name)."""
  eval_step = steps.make_eval_step(model)

  @jax.jit
  def window_sums(params, arch, batch_stats, inputs, targets, lengths):
    hidden = model_lib.init_hidden(inputs.shape[1], model.nhid)

    def body(h, w):
      summed, h = eval_step(params, arch, batch_stats, h, *w)
      return h, summed

    return jax.lax.scan(body, hidden, (inputs, targets, lengths))[1]

  run = monitor.announce_compile(window_sums, what)

  def evaluate(params, arch, batch_stats, split: Split) -> float:
    sums = run(params, arch, batch_stats, split.inputs, split.targets, split.lengths)
    return float(np.sum(np.asarray(jax.device_get(sums), np.float64))) / split.tokens

  return evaluate


def loss_record(loss_sum: float, count: float) -> Dict[str, float]:
  """{'loss', 'perplexity'} of summed token NLL; {} when nothing was counted."""
  if not count:
    return {}
  loss = loss_sum / count
  return {'loss': loss, 'perplexity': steps.perplexity(loss)}


def evaluation(loss: float) -> Dict[str, float]:
  return {'loss': loss, 'perplexity': steps.perplexity(loss)}


def step_sums(metrics: Dict[str, jax.Array], rows: int, length, arch_rows: int = 0,
              arch_length=None, axis_name: Optional[str] = None) -> Dict[str, jax.Array]:
  """A step's metric sums for the driver: token-weighted NLL sums of the weight step
  (and the arch step), added over the devices, and the (device-wide) gradient norms."""
  tokens = jnp.asarray(rows * length, jnp.float32)
  sums = {'loss_sum': metrics['loss'] * tokens, 'count': tokens}
  if arch_length is not None:
    arch_tokens = jnp.asarray(arch_rows * arch_length, jnp.float32)
    sums.update(arch_loss_sum=metrics['arch_loss'] * arch_tokens, arch_count=arch_tokens)
  if axis_name is not None:
    sums = jax.lax.psum(sums, axis_name)
  sums['grad_norm_sum'] = metrics['grad_norm']
  if 'arch_grad_norm' in metrics:
    sums['arch_grad_norm_sum'] = metrics['arch_grad_norm']
  sums['steps'] = jnp.ones((), jnp.float32)
  return sums


def zero_hidden_where(core: Dict, fresh) -> Dict:
  """`core` with zero hidden states where `fresh` (an epoch's first window)."""
  return {k: (jnp.where(fresh, jnp.zeros_like(v), v) if k in ('hidden', 'hidden_valid')
              else v) for k, v in core.items()}


class CompiledByShape:
  """A pmapped step announced (monitor.announce_compile) once per window shape, since
  each padded length compiles its own program."""

  def __init__(self, fn, what: str):
    self._fn, self._what, self._by_shape = fn, what, {}

  def __call__(self, shape_key: Sequence[int], *args):
    key = tuple(shape_key)
    if key not in self._by_shape:
      lengths = ' / '.join(str(k) for k in key)
      self._by_shape[key] = monitor.announce_compile(
          self._fn, f'{self._what} (windows of {lengths} steps)')
    return self._by_shape[key](*args)

  @property
  def shapes(self) -> int:
    return len(self._by_shape)


# -------------------------------------------------------------- config checks


def _integer(value, name: str, low: int):
  require(config_fields.is_int(value) and value >= low,
          f'{name}={value!r} must be an integer >= {low}.')


def _number(value, name: str, low: float, low_open: bool = False):
  ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and
        (value > low if low_open else value >= low))
  require(ok, f'{name}={value!r} must be a number {">" if low_open else ">="} {low}.')


def validate_windows(section, name: str, num_devices: int):
  """The fields the search and training sections share (windows, SGD, regularisers)."""
  for field in ('epochs', 'batch_size', 'eval_batch_size', 'test_batch_size'):
    _integer(section[field], f'{name}.{field}', 1)
  _integer(section.bptt, f'{name}.bptt', 2)
  config_fields.require_bool(section.seq_len_jitter, f'{name}.seq_len_jitter')
  for field in ('max_seq_len_delta', 'seq_len_bucket', 'log_every_steps'):
    _integer(section[field], f'{name}.{field}', 0)
  _number(section.learning_rate, f'{name}.learning_rate', 0.0, low_open=True)
  for field in ('weight_decay', 'grad_clip', 'alpha', 'beta'):
    _number(section[field], f'{name}.{field}', 0.0)
  require(section.batch_size % num_devices == 0,
          f'{name}.batch_size={section.batch_size} is not divisible by the {num_devices} '
          f'devices (allowed: multiples of {num_devices}).')




def validate_space(config):
  require(config_fields.space(config.model) == 'rnn',
          f"model.space={config_fields.space(config.model)!r}: the RNN method runs "
          f"model.space='rnn' configs.")
