"""The DARTS recurrent cell's step equations as pure functions (github.com/quark0/darts,
rnn/model.py DARTSCell and rnn/model_search.py DARTSCellSearch).

One time step maps (x_t, h_{t-1}) to h_t:

  [c0, h0] = concat(x_t * x_mask, h_{t-1} * h_mask) @ W0       (W0: [ninp + nhid, 2 nhid])
  s0 = h_{t-1} + sigmoid(c0) * (tanh(h0) - h_{t-1})
  node i from state s_j:  [c, h] = (s_j * h_mask) @ W_i;  s_j + sigmoid(c) * (op(h) - s_j)
  h_t = mean of nodes 1..steps

The masks are variational (one per sequence, drawn by the caller) and only in
training. The search cell sums each node over all its predecessors j and all ops
but 'none', weighted by softmax(arch) of edge (i, j) ('none' adds zero but keeps
its share of the softmax), and applies BatchNorm without affine to s0 and to each
node (one BN shared by all of them, as the reference's single `self.bn`).
"""

from typing import Optional, Tuple

import jax
import jax.numpy as jnp

from pcdarts_jax.spaces.rnn import genotypes

ACTIVATIONS = {
    'tanh': jnp.tanh,
    'relu': jax.nn.relu,
    'sigmoid': jax.nn.sigmoid,
    'identity': lambda h: h,
}
BN_EPS = 1e-5  # torch.nn.BatchNorm1d defaults.
BN_MOMENTUM = 0.1


def highway(s, ch, op: str):
  """s + sigmoid(c) * (op(h) - s), with [c, h] = ch split in halves on the last axis."""
  c, h = jnp.split(ch, 2, axis=-1)
  return s + jax.nn.sigmoid(c) * (ACTIVATIONS[op](h) - s)


def _masked(v, mask):
  return v if mask is None else v * mask


def init_state(x, h_prev, w0, x_mask=None, h_mask=None):
  """s0 from the input and the previous hidden state (init op tanh)."""
  xh = jnp.concatenate([_masked(x, x_mask), _masked(h_prev, h_mask)], axis=-1)
  return highway(h_prev, xh @ w0, 'tanh')


def batch_norm(s, stats, train: bool, momentum: float = BN_MOMENTUM, eps: float = BN_EPS,
               axis_name: Optional[str] = None):
  """BatchNorm1d(affine=False) over the batch axis of s [B, nhid]. Training normalises
  with the batch mean and biased variance and moves the running (mean, var) towards the
  batch mean and unbiased variance (torch's rule); evaluation uses the running ones.
  axis_name: the batch is split over that device axis (equal rows per device); the
  statistics are those of the whole batch. Returns (normalised s, new stats)."""
  mean, var = stats
  if not train:
    return (s - mean) / jnp.sqrt(var + eps), stats
  pmean = (lambda v: v) if axis_name is None else (lambda v: jax.lax.pmean(v, axis_name))
  n = s.shape[0] * (1 if axis_name is None else jax.lax.axis_size(axis_name))
  batch_mean = pmean(s.mean(axis=0))
  batch_var = pmean(jnp.mean(jnp.square(s - batch_mean), axis=0))
  out = (s - batch_mean) / jnp.sqrt(batch_var + eps)
  unbiased = batch_var * (n / max(n - 1, 1))
  stats = ((1 - momentum) * mean + momentum * batch_mean,
           (1 - momentum) * var + momentum * unbiased)
  return out, stats


def search_step(x, h_prev, w0, ws, probs, x_mask=None, h_mask=None,
                bn_stats: Optional[Tuple] = None, train: bool = True,
                bn_momentum: float = BN_MOMENTUM, axis_name: Optional[str] = None):
  """One step of the search cell. ws: [steps, nhid, 2 nhid]; probs: [edges, ops], the
  softmax of the arch values, edges ordered node by node (node 1: s0; node 2: s0, s1; ...).
  bn_stats: (running mean, running var), or None for no BatchNorm; axis_name: the
  device axis the batch is split over (BatchNorm statistics of the whole batch).
  Returns (h_t, new bn_stats)."""
  steps = ws.shape[0]
  if probs.shape != (genotypes.num_edges(steps), len(genotypes.PRIMITIVES)):
    raise ValueError(f'arch probs have shape {probs.shape}; a {steps}-node cell needs '
                     f'({genotypes.num_edges(steps)}, {len(genotypes.PRIMITIVES)}).')
  bn = (lambda s, st: (s, st)) if bn_stats is None else (
      lambda s, st: batch_norm(s, st, train, bn_momentum, axis_name=axis_name))
  s0, bn_stats = bn(init_state(x, h_prev, w0, x_mask, h_mask), bn_stats)
  states, offset = [s0], 0
  for i in range(steps):
    prev = jnp.stack(states)                                  # [i+1, B, nhid]
    c, h = jnp.split(_masked(prev, h_mask) @ ws[i], 2, axis=-1)
    c = jax.nn.sigmoid(c)
    w = probs[offset:offset + i + 1]                          # [i+1, ops]
    mixed, total = 0., 0.
    for k, name in enumerate(genotypes.PRIMITIVES):
      if name == 'none':
        continue
      wk = w[:, k][:, None, None]
      mixed = mixed + wk * ACTIVATIONS[name](h)
      total = total + wk
    # sum_k w_k (s + c (op_k(h) - s)) = total s + c (sum_k w_k op_k(h) - total s).
    s = jnp.sum(total * prev + c * (mixed - total * prev), axis=0)
    s, bn_stats = bn(s, bn_stats)
    states.append(s)
    offset += i + 1
  return jnp.mean(jnp.stack(states[1:]), axis=0), bn_stats


def genotype_step(x, h_prev, w0, ws, genotype: genotypes.Genotype, x_mask=None, h_mask=None):
  """One step of the cell of a genotype (no BatchNorm, as the reference's DARTSCell)."""
  if ws.shape[0] != len(genotype.recurrent):
    raise ValueError(f'{ws.shape[0]} node weights for a {len(genotype.recurrent)}-node genotype.')
  states = [init_state(x, h_prev, w0, x_mask, h_mask)]
  for i, (op, j) in enumerate(genotype.recurrent):
    s_prev = states[j]
    states.append(highway(s_prev, _masked(s_prev, h_mask) @ ws[i], op))
  return jnp.mean(jnp.stack([states[c] for c in genotype.concat]), axis=0)
