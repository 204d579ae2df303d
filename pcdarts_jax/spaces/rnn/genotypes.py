"""Recurrent genotypes of the DARTS RNN space (github.com/quark0/darts, rnn/genotypes.py).

A genotype names, for each intermediate node i = 1..steps of the cell, one
(op, input) pair: the node is op applied to the highway update of state
`input` (0 = the initial state s0, j >= 1 = node j). The cell's output is the
mean of the states in `concat`, nodes 1..steps in DARTS.
"""

from typing import NamedTuple, Tuple

import numpy as np

PRIMITIVES = ('none', 'tanh', 'relu', 'sigmoid', 'identity')
STEPS = 8  # Intermediate nodes of the DARTS cell.


def num_edges(steps: int = STEPS) -> int:
  """Edges of the search cell: node i (1-based) has i predecessors, 1+2+..+steps (36)."""
  return steps * (steps + 1) // 2


class Genotype(NamedTuple):
  """recurrent: one (op, input) per node; concat: the states averaged for the output."""
  recurrent: Tuple[Tuple[str, int], ...]
  concat: Tuple[int, ...]


def make(recurrent, concat=None) -> Genotype:
  """A checked Genotype from (op, input) pairs; concat defaults to nodes 1..steps."""
  recurrent = tuple((str(op), int(j)) for op, j in recurrent)
  steps = len(recurrent)
  concat = tuple(range(1, steps + 1)) if concat is None else tuple(int(c) for c in concat)
  if not steps:
    raise ValueError('genotype.recurrent is empty: a cell needs at least one node.')
  for i, (op, j) in enumerate(recurrent):
    if op not in PRIMITIVES[1:]:
      raise ValueError(f'genotype.recurrent[{i}] op {op!r} is not one of {PRIMITIVES[1:]}.')
    if not 0 <= j <= i:
      raise ValueError(f'genotype.recurrent[{i}] input {j} is not one of 0..{i} '
                       f'(s0 or an earlier node).')
  if not concat or any(not 0 <= c <= steps for c in concat):
    raise ValueError(f'genotype.concat {concat} must name states in 0..{steps}.')
  return Genotype(recurrent, concat)


# Published cells (DARTS rnn/genotypes.py): V1 from the first-order, V2 from the
# second-order search; DARTS = DARTS_V2 (55.7 test perplexity on PTB in the paper).
DARTS_V1 = make([('relu', 0), ('relu', 1), ('tanh', 2), ('relu', 3), ('relu', 4),
                 ('identity', 1), ('relu', 5), ('relu', 1)])
DARTS_V2 = make([('sigmoid', 0), ('relu', 1), ('relu', 1), ('identity', 1), ('tanh', 2),
                 ('sigmoid', 5), ('tanh', 3), ('relu', 5)])
DARTS = DARTS_V2
PUBLISHED = {'DARTS_V1': DARTS_V1, 'DARTS_V2': DARTS_V2, 'DARTS': DARTS}


def by_name(name: str) -> Genotype:
  """A published recurrent genotype by name."""
  if name not in PUBLISHED:
    raise ValueError(f'genotype={name!r} is not one of {tuple(PUBLISHED)}.')
  return PUBLISHED[name]


def to_dict(genotype: Genotype) -> dict:
  """JSON-able form: {'recurrent': [[op, input], ...], 'concat': [...]}."""
  return {'recurrent': [[op, j] for op, j in genotype.recurrent],
          'concat': list(genotype.concat)}


def from_dict(d: dict) -> Genotype:
  """Inverse of to_dict (checked)."""
  return make(d['recurrent'], d.get('concat'))


def genotype_str(genotype: Genotype) -> str:
  """One line for logs, e.g. 'recurrent=[sigmoid<-0, relu<-1, ...] concat=1..8'."""
  nodes = ', '.join(f'{op}<-{j}' for op, j in genotype.recurrent)
  c = genotype.concat
  if c == tuple(range(c[0], c[-1] + 1)):
    concat = f'{c[0]}..{c[-1]}'
  else:
    concat = ','.join(map(str, c))
  return f'recurrent=[{nodes}] concat={concat}'


def steps_of(num_rows: int) -> int:
  """The node count whose search cell has `num_rows` edges (36 -> 8)."""
  steps = int(round((np.sqrt(8 * num_rows + 1) - 1) / 2))
  if num_edges(steps) != num_rows:
    raise ValueError(f'arch has {num_rows} rows; a cell has 1+2+..+steps rows (36 for 8 nodes).')
  return steps


def derive(arch_weights) -> Genotype:
  """The DARTS rule (model_search.py genotype()): per node, of the softmax op weights
  (excluding 'none') on its incoming edges, the input with the largest one and its
  best op. `arch_weights` are the raw arch values [edges, ops]; ties keep the first."""
  w = np.asarray(arch_weights, np.float64)
  if w.ndim != 2 or w.shape[1] != len(PRIMITIVES):
    raise ValueError(f'arch has shape {w.shape}; expected (edges, {len(PRIMITIVES)}).')
  probs = np.exp(w - w.max(axis=1, keepdims=True))
  probs /= probs.sum(axis=1, keepdims=True)
  none = PRIMITIVES.index('none')
  ops = [k for k in range(len(PRIMITIVES)) if k != none]
  recurrent, start = [], 0
  for i in range(steps_of(w.shape[0])):
    rows = probs[start:start + i + 1][:, ops]
    j = int(np.argmax(rows.max(axis=1)))  # argmax keeps the first of equal maxima.
    recurrent.append((PRIMITIVES[ops[int(np.argmax(rows[j]))]], j))
    start += i + 1
  return make(recurrent)
