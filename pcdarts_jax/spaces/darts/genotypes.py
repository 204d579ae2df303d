"""Cell genotypes: the op set, published cells, JSON I/O and derivation from arch values."""

import collections
import json
import os
from typing import Mapping, Sequence, Tuple

import numpy as np

# Order matters: it is the column order of the alphas.
PRIMITIVES = (
    'none',
    'max_pool_3x3',
    'avg_pool_3x3',
    'skip_connect',
    'sep_conv_3x3',
    'sep_conv_5x5',
    'dil_conv_3x3',
    'dil_conv_5x5',
)

Genotype = collections.namedtuple(
    'Genotype', ['normal', 'normal_concat', 'reduce', 'reduce_concat'])

ARCH_NAMES = ('alphas_normal', 'alphas_reduce', 'betas_normal', 'betas_reduce')


def _make(normal, reduce) -> Genotype:
  return Genotype(normal=list(normal), normal_concat=[2, 3, 4, 5],
                  reduce=list(reduce), reduce_concat=[2, 3, 4, 5])


DARTS_V1 = _make(
    [('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 0),
     ('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 1),
     ('sep_conv_3x3', 0), ('skip_connect', 2)],
    [('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2),
     ('max_pool_3x3', 0), ('max_pool_3x3', 0), ('skip_connect', 2),
     ('skip_connect', 2), ('avg_pool_3x3', 0)])
DARTS_V2 = _make(
    [('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0),
     ('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('skip_connect', 0),
     ('skip_connect', 0), ('dil_conv_3x3', 2)],
    [('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2),
     ('max_pool_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2),
     ('skip_connect', 2), ('max_pool_3x3', 1)])
PCDARTS = _make(
    [('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 0),
     ('dil_conv_3x3', 1), ('sep_conv_5x5', 0), ('sep_conv_3x3', 1),
     ('avg_pool_3x3', 0), ('dil_conv_3x3', 1)],
    [('sep_conv_5x5', 1), ('max_pool_3x3', 0), ('sep_conv_5x5', 1),
     ('sep_conv_5x5', 2), ('sep_conv_3x3', 0), ('sep_conv_3x3', 3),
     ('sep_conv_3x3', 1), ('sep_conv_3x3', 2)])
PC_DARTS_image = _make(  # pylint: disable=invalid-name
    [('skip_connect', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 0),
     ('skip_connect', 1), ('sep_conv_3x3', 1), ('sep_conv_3x3', 3),
     ('sep_conv_3x3', 1), ('dil_conv_5x5', 4)],
    [('sep_conv_3x3', 0), ('skip_connect', 1), ('dil_conv_5x5', 2),
     ('max_pool_3x3', 1), ('sep_conv_3x3', 2), ('sep_conv_3x3', 1),
     ('sep_conv_5x5', 0), ('sep_conv_3x3', 3)])

PUBLISHED = {
    'DARTS_V1': DARTS_V1,
    'DARTS_V2': DARTS_V2,
    'PCDARTS': PCDARTS,
    'PC_DARTS_image': PC_DARTS_image,
}


def to_dict(genotype: Genotype) -> dict:
  return {
      'normal': [[op, int(j)] for op, j in genotype.normal],
      'normal_concat': [int(i) for i in genotype.normal_concat],
      'reduce': [[op, int(j)] for op, j in genotype.reduce],
      'reduce_concat': [int(i) for i in genotype.reduce_concat],
  }


def from_dict(d: Mapping) -> Genotype:
  missing = [f for f in Genotype._fields if f not in d]
  if missing:
    raise ValueError(f'Genotype JSON lacks the fields {missing}; a genotype has '
                     f'{list(Genotype._fields)}.')
  return Genotype(
      normal=[(str(op), int(j)) for op, j in d['normal']],
      normal_concat=[int(i) for i in d['normal_concat']],
      reduce=[(str(op), int(j)) for op, j in d['reduce']],
      reduce_concat=[int(i) for i in d['reduce_concat']])


def to_json(genotype: Genotype) -> str:
  return json.dumps(to_dict(genotype))


def from_json(text: str) -> Genotype:
  return from_dict(json.loads(text))


def load_genotype(name_or_path: str) -> Genotype:
  """A published genotype by name, or a genotype.json written by a search."""
  if name_or_path in PUBLISHED:
    return PUBLISHED[name_or_path]
  if os.path.isfile(name_or_path):
    with open(name_or_path) as f:
      return from_json(f.read())
  raise ValueError(f'{name_or_path!r} is neither a published genotype '
                   f'({sorted(PUBLISHED)}) nor an existing genotype JSON file.')


def node_edge_ranges(steps: int = 4) -> Tuple[Tuple[int, int], ...]:
  """(start, end) edge indices of each intermediate node: node i has i + 2 inputs."""
  ranges, start = [], 0
  for i in range(steps):
    ranges.append((start, start + i + 2))
    start += i + 2
  return tuple(ranges)


def _softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
  x = np.asarray(x, np.float64)
  e = np.exp(x - x.max(axis=axis, keepdims=True))
  return e / e.sum(axis=axis, keepdims=True)


def edge_weights(betas: np.ndarray, steps: int = 4) -> np.ndarray:
  """Edge normalization: softmax of the betas within each node's incoming edges."""
  betas = np.asarray(betas, np.float64)
  return np.concatenate([_softmax(betas[s:e]) for s, e in node_edge_ranges(steps)])


def _parse_cell(weights: np.ndarray, primitives: Sequence[str], steps: int):
  none_index = primitives.index('none') if 'none' in primitives else None
  candidates = [k for k in range(len(primitives)) if k != none_index]
  gene = []
  for start, end in node_edge_ranges(steps):
    w = weights[start:end]
    # Python's sort is stable, so ties keep the lower input index first.
    edges = sorted(range(end - start), key=lambda j: -max(w[j][k] for k in candidates))[:2]
    for j in edges:
      best = max(candidates, key=lambda k: (w[j][k], -k))  # first max wins.
      gene.append((primitives[best], j))
  return gene


def cell_weights(alphas, betas=None, steps: int = 4) -> np.ndarray:
  """Per-edge op weights used for ranking: softmax(alphas), times normalised betas."""
  w = _softmax(alphas)
  if betas is not None:
    w = w * edge_weights(betas, steps)[:, None]
  return w


def derive_genotype(arch: Mapping[str, np.ndarray],
                    primitives: Sequence[str] = PRIMITIVES,
                    steps: int = 4) -> Genotype:
  """Derives the discrete cells from arch values (softmaxed alphas, edge-normalised).

  `arch` holds `alphas_normal`, `alphas_reduce` of shape (edges, ops) and, when the
  supernet uses edge normalization, `betas_normal`, `betas_reduce` of shape (edges,).
  """
  num_edges = sum(i + 2 for i in range(steps))
  expected = (num_edges, len(primitives))
  primitives = list(primitives)
  cells = {}
  for kind in ('normal', 'reduce'):
    alphas = np.asarray(arch[f'alphas_{kind}'])
    if alphas.shape != expected:
      raise ValueError(f'alphas_{kind} has shape {alphas.shape}; expected {expected} '
                       f'({steps} nodes, ops {primitives}).')
    betas = arch.get(f'betas_{kind}')
    cells[kind] = _parse_cell(cell_weights(alphas, betas, steps), primitives, steps)
  concat = list(range(2, 2 + steps))
  return Genotype(normal=cells['normal'], normal_concat=concat,
                  reduce=cells['reduce'], reduce_concat=list(concat))
