"""The DARTS recurrent language model in Flax (github.com/quark0/darts, rnn/model.py
RNNModel, rnn/model_search.py RNNModelSearch; regularisation of AWD-LSTM, Merity et al.).

Batch-first: tokens [B, T] -> log-probabilities [B, T, ntoken]. One recurrent layer,
unrolled over time with `jax.lax.scan`; the decoder is tied to the embedding (the
reference's nhidlast = emsize = nhid case). Variables: `params` (embedding,
decoder_bias, cell W0 and Ws), `arch` (the search model's `alphas` [36, 5]) and, in
the search model, `batch_stats` (the cell's BatchNorm running mean and variance).
Dropout masks come from the `dropout` rng and are drawn only when `train`.

Two options serve the run loop: `length` (a traced scalar) marks the first `length`
steps of a padded window as real: later steps leave the hidden state and the
BatchNorm statistics as they were, so one compiled program serves windows of any
length up to the padded one. `axis_name`: the batch is split over that pmap axis
(equal rows per device); BatchNorm uses the statistics of the whole batch and each
device's dropout masks are its rows of the masks of the whole batch, so N devices
compute what one device computes with the whole batch.
"""

from typing import NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from pcdarts_jax.run import config_fields
from pcdarts_jax.spaces.rnn import cell as cell_lib
from pcdarts_jax.spaces.rnn import genotypes

INIT_RANGE = 0.04  # The reference's INITRANGE: every weight ~ U(-0.04, 0.04).
ARCH_NAME = 'alphas'


class LMOutput(NamedTuple):
  log_probs: jax.Array       # [B, T, ntoken]
  hidden: jax.Array          # [B, nhid], the state after the last step
  raw_output: jax.Array      # [B, T, nhid], the cell's outputs (TAR)
  dropped_output: jax.Array  # [B, T, nhid], after the output dropout (AR)


def init_hidden(batch_size: int, nhid: int, dtype=jnp.float32):
  """The zero hidden state each epoch starts from."""
  return jnp.zeros((batch_size, nhid), dtype)


def _uniform(scale):
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype,
                                                                  -scale, scale)


def _keep_mask(key, p, shape, dtype):
  """Bernoulli(1 - p) / (1 - p): inverted dropout's mask."""
  return jax.random.bernoulli(key, 1.0 - p, shape).astype(dtype) / (1.0 - p)


def _rows_mask(key, p, shape, dtype, axis_name: Optional[str]):
  """A keep mask whose leading axis is the batch: this device's rows of the mask of
  the whole batch (the same key on every device), so masks do not depend on how the
  batch is split."""
  if axis_name is None:
    return _keep_mask(key, p, shape, dtype)
  rows = shape[0]
  full = _keep_mask(key, p, (rows * jax.lax.axis_size(axis_name),) + tuple(shape[1:]), dtype)
  return jax.lax.dynamic_slice_in_dim(full, jax.lax.axis_index(axis_name) * rows, rows, 0)


def step_mask(length, seq_len: int):
  """[1, seq_len] float mask of the real steps of a window padded to seq_len (None:
  all real)."""
  if length is None:
    return None
  return (jnp.arange(seq_len) < length)[None, :].astype(jnp.float32)


class DARTSCell(nn.Module):
  """The recurrent cell over a whole sequence. genotype None: the search cell (arch
  probabilities passed in, BatchNorm on the nodes); else the cell of that genotype."""
  ninp: int
  nhid: int
  steps: int = genotypes.STEPS
  genotype: Optional[genotypes.Genotype] = None
  dropouth: float = 0.0
  dropoutx: float = 0.0
  init_range: float = INIT_RANGE
  bn_momentum: float = cell_lib.BN_MOMENTUM
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, inputs, hidden, probs=None, train: bool = True, length=None):
    """inputs [B, T, ninp], hidden [B, nhid] -> (outputs [B, T, nhid], last hidden).
    length: steps from `length` on are padding (state and statistics unchanged)."""
    steps = self.steps if self.genotype is None else len(self.genotype.recurrent)
    w0 = self.param('W0', _uniform(self.init_range), (self.ninp + self.nhid, 2 * self.nhid))
    ws = self.param('Ws', _uniform(self.init_range), (steps, self.nhid, 2 * self.nhid))
    batch = inputs.shape[0]
    x_mask = h_mask = None
    if train:
      kx, kh = jax.random.split(self.make_rng('dropout'))
      if self.dropoutx:
        x_mask = _rows_mask(kx, self.dropoutx, (batch, self.ninp), inputs.dtype,
                            self.axis_name)
      if self.dropouth:
        h_mask = _rows_mask(kh, self.dropouth, (batch, self.nhid), inputs.dtype,
                            self.axis_name)
    times = jnp.arange(inputs.shape[1])
    keep = lambda t, new, old: new if length is None else jax.tree_util.tree_map(
        lambda a, b: jnp.where(t < length, a, b), new, old)

    if self.genotype is None:
      mean = self.variable('batch_stats', 'mean', jnp.zeros, (self.nhid,), inputs.dtype)
      var = self.variable('batch_stats', 'var', jnp.ones, (self.nhid,), inputs.dtype)

      def step(carry, xt):
        x_t, t = xt
        h_new, stats = cell_lib.search_step(x_t, carry[0], w0, ws, probs, x_mask, h_mask,
                                            carry[1], train, self.bn_momentum, self.axis_name)
        return keep(t, (h_new, stats), carry), h_new

      (last, stats), outs = jax.lax.scan(step, (hidden, (mean.value, var.value)),
                                         (jnp.swapaxes(inputs, 0, 1), times))
      if train and self.is_mutable_collection('batch_stats') and not self.is_initializing():
        mean.value, var.value = stats
    else:
      def step(h, xt):
        x_t, t = xt
        h_new = cell_lib.genotype_step(x_t, h, w0, ws, self.genotype, x_mask, h_mask)
        return keep(t, h_new, h), h_new

      last, outs = jax.lax.scan(step, hidden, (jnp.swapaxes(inputs, 0, 1), times))
    return jnp.swapaxes(outs, 0, 1), last


class RNNModel(nn.Module):
  """Embedding -> DARTS cell -> tied decoder -> log-softmax. genotype None: the search
  model (arch `alphas` [edges, 5] ~ 1e-3 N(0, 1), as RNNModelSearch)."""
  ntoken: int
  emsize: int
  nhid: int
  steps: int = genotypes.STEPS
  genotype: Optional[genotypes.Genotype] = None
  # Dropout rates (0 = off; the reference's values are in the configs):
  dropout: float = 0.0     # on the cell's output (locked)
  dropouth: float = 0.0    # on h_{t-1} and the nodes' inputs (variational)
  dropoutx: float = 0.0    # on x_t (variational)
  dropouti: float = 0.0    # on the embedded input (locked)
  dropoute: float = 0.0    # whole words of the embedding matrix
  init_range: float = INIT_RANGE
  axis_name: Optional[str] = None  # the pmap axis the batch is split over

  @nn.compact
  def __call__(self, tokens, hidden, train: bool = True, length=None) -> LMOutput:
    """length: the real steps of a padded window (None: all; see the module doc)."""
    if self.emsize != self.nhid:
      raise ValueError(f'model.emsize ({self.emsize}) must equal model.nhid ({self.nhid}): '
                       'the decoder is tied to the embedding.')
    embedding = self.param('embedding', _uniform(self.init_range), (self.ntoken, self.emsize))
    decoder_bias = self.param('decoder_bias', nn.initializers.zeros, (self.ntoken,))
    probs = None
    if self.genotype is None:
      init = lambda: 1e-3 * jax.random.normal(
          self.make_rng('params'), (genotypes.num_edges(self.steps), len(genotypes.PRIMITIVES)),
          jnp.float32)
      probs = jax.nn.softmax(self.variable('arch', ARCH_NAME, init).value, axis=-1)
    if train:
      ke, ki, ko = jax.random.split(self.make_rng('dropout'), 3)
    emb = embedding[tokens]
    if train and self.dropoute:
      # Embedding dropout drops whole words: one kept/dropped flag per vocabulary row.
      emb = emb * _keep_mask(ke, self.dropoute, (self.ntoken, 1), emb.dtype)[tokens]
    batch = tokens.shape[0]
    if train and self.dropouti:
      emb = emb * _rows_mask(ki, self.dropouti, (batch, 1, self.emsize), emb.dtype,
                             self.axis_name)
    raw, last = DARTSCell(self.emsize, self.nhid, self.steps, self.genotype, self.dropouth,
                          self.dropoutx, self.init_range, axis_name=self.axis_name,
                          name='cell')(emb, hidden, probs, train, length)
    out = raw
    if train and self.dropout:
      out = out * _rows_mask(ko, self.dropout, (batch, 1, self.nhid), out.dtype, self.axis_name)
    logits = out @ embedding.T + decoder_bias
    return LMOutput(jax.nn.log_softmax(logits, axis=-1), last, raw, out)


DROPOUTS = ('dropout', 'dropouth', 'dropoutx', 'dropouti', 'dropoute')


def validate_model(m, search: bool = True):
  """The `model` section of an RNN config (search: the node count of the search cell);
  ConfigError (one line naming the field and what is allowed)."""
  require = config_fields.require
  for name in ('emsize', 'nhid') + (('steps',) if search else ()):
    value = m[name]
    require(config_fields.is_int(value) and value >= 1,
            f'model.{name}={value!r} must be an integer >= 1.')
  require(m.emsize == m.nhid, f'model.emsize={m.emsize} must equal model.nhid={m.nhid}: the '
                              f'decoder is tied to the embedding.')
  require(isinstance(m.init_range, (int, float)) and m.init_range > 0,
          f'model.init_range={m.init_range!r} must be a number > 0.')
  for name in DROPOUTS:
    value = m[name]
    require(isinstance(value, (int, float)) and 0 <= value < 1,
            f'model.{name}={value!r} must be a number in [0, 1).')


def build_model(ntoken: int, model_config, genotype: Optional[genotypes.Genotype] = None,
                axis_name: Optional[str] = None):
  """The RNNModel of a config's `model` section (the search model when genotype is None);
  axis_name: the pmap axis the batch is split over (None: one device)."""
  m = model_config
  return RNNModel(ntoken=ntoken, emsize=m.emsize, nhid=m.nhid, steps=m.steps,
                  genotype=genotype, dropout=m.dropout, dropouth=m.dropouth,
                  dropoutx=m.dropoutx, dropouti=m.dropouti, dropoute=m.dropoute,
                  init_range=m.init_range, axis_name=axis_name)


def init_variables(model: RNNModel, rng, batch_size: int = 2, seq_len: int = 2):
  """{'params', 'arch' (search), 'batch_stats' (search)} of a fresh model."""
  tokens = jnp.zeros((batch_size, seq_len), jnp.int32)
  hidden = init_hidden(batch_size, model.nhid)
  init = jax.jit(lambda key: model.init({'params': key}, tokens, hidden, train=False))
  return dict(init(rng))
