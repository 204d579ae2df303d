"""The DARTS recurrent cell space (Liu et al. ICLR 2019, github.com/quark0/darts rnn/):
an adapter over the RNN space's genotypes and language model for the space
interface of pcdarts_jax.spaces.

The search model is the language model with the search cell; its arch values are
one matrix, `alphas` [edges, 5] (36 edges for 8 nodes). The model's vocabulary
size comes from the corpus: `build_supernet` / `build_network` take it as
`ntokens`, or read the corpus of `config.data` to learn it.
"""

import os
from typing import Dict, List, Mapping, Optional

import numpy as np

from pcdarts_jax.spaces.darts import visualize
from pcdarts_jax.spaces.rnn import corpus as corpus_lib
from pcdarts_jax.spaces.rnn import genotypes
from pcdarts_jax.spaces.rnn import model as model_lib
from pcdarts_jax.spaces import drawing

Genotype = genotypes.Genotype
ARCH_NAME = model_lib.ARCH_NAME


def _ntokens(config, ntokens: Optional[int]) -> int:
  return corpus_lib.load_corpus(config.data).ntokens if ntokens is None else ntokens


def build_supernet(config, axis_name: Optional[str] = None, partial_channels=None,
                   op_masks=None, ntokens: Optional[int] = None):
  """The search language model of `config.model`. The RNN space has neither partial
  channels nor progressive op pruning: only their defaults are accepted."""
  if partial_channels not in (None, 1) or op_masks is not None:
    raise ValueError("model.space='rnn' has no partial channels or op pruning (DARTS' "
                     'recurrent cell search relaxes every op of every edge).')
  return model_lib.build_model(_ntokens(config, ntokens), config.model, None, axis_name)


def derive(arch: Mapping[str, np.ndarray], model=None) -> Genotype:
  """The DARTS rule on the softmax weights (genotypes.derive); the node count follows
  from the arch's rows."""
  return genotypes.derive(np.asarray(arch[ARCH_NAME]))


def genotype_to_dict(genotype: Genotype) -> dict:
  return genotypes.to_dict(genotype)


def genotype_from_dict(d) -> Genotype:
  return genotypes.from_dict(d)


def genotype_str(genotype: Genotype) -> str:
  return genotypes.genotype_str(genotype)


def genotype_edges(genotype: Genotype) -> Dict[str, list]:
  """{'recurrent': [(node, input, op)]}: one kept edge per node (nodes from 1)."""
  return {'recurrent': [(i + 1, int(j), op) for i, (op, j) in enumerate(genotype.recurrent)]}


def edge_labels(steps: int) -> List[str]:
  """'j->i' for every edge in the arch matrix's row order (node i from 1, input j
  from 0 = s0)."""
  return [f'{j}->{i}' for i in range(1, steps + 1) for j in range(i)]


def op_weights(arch: Mapping[str, np.ndarray]) -> np.ndarray:
  """softmax(alphas) per edge [edges, ops], in float64."""
  w = np.asarray(arch[ARCH_NAME], np.float64)
  w = np.exp(w - w.max(axis=1, keepdims=True))
  return w / w.sum(axis=1, keepdims=True)


def arch_scalars(arch: Mapping[str, np.ndarray], model=None) -> Dict[str, float]:
  """The mean per-edge entropy of softmax(alphas) and every edge's op weights."""
  weights = op_weights(arch)
  entropy = -np.sum(weights * np.log(np.maximum(weights, 1e-12)), axis=-1)
  values = {'arch/recurrent/entropy': float(entropy.mean())}
  for e, label in enumerate(edge_labels(genotypes.steps_of(weights.shape[0]))):
    for k, op in enumerate(genotypes.PRIMITIVES):
      values[f'alpha_recurrent/edge_{label}/{op}'] = float(weights[e, k])
  return values


def cell_graph(genotype: Genotype, title: str = ''):
  """A graphviz Digraph of a recurrent cell, drawn as the reference's rnn/visualize.py:
  x_t and h_{t-1} into node 0 (s0), one labelled edge into each node, the averaged
  nodes into h_t."""
  g = drawing.digraph(title)
  g.node('x_{t}', fillcolor='darkseagreen2')
  g.node('h_{t-1}', fillcolor='darkseagreen2')
  g.node('0', fillcolor='lightblue')
  g.edge('x_{t}', '0', fillcolor='gray')
  g.edge('h_{t-1}', '0', fillcolor='gray')
  for i in range(1, len(genotype.recurrent) + 1):
    g.node(str(i), fillcolor='lightblue')
  for i, (op, j) in enumerate(genotype.recurrent):
    g.edge(str(j), str(i + 1), label=op, fillcolor='gray')
  g.node('h_{t}', fillcolor='palegoldenrod')
  for i in genotype.concat:
    g.edge(str(i), 'h_{t}', fillcolor='gray')
  return g


def draw(genotype: Genotype, prefix: str) -> List[str]:
  """`prefix`_recurrent.gv, and .png / .svg where graphviz's `dot` is installed."""
  return visualize.render_graph(cell_graph(genotype, 'recurrent cell'), prefix + '_recurrent')


def heatmap(arch: Mapping[str, np.ndarray], model, path: str,
            title: Optional[str] = None) -> str:
  """PNG of softmax(alphas) per edge (rows) and op (columns), as percent above or
  below the uniform 1/5, as the DARTS space's heat map."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  weights = op_weights(arch)
  percent = visualize.percent_from_uniform(weights)
  labels = edge_labels(genotypes.steps_of(weights.shape[0]))
  fig, ax = plt.subplots(figsize=(2.2 + len(genotypes.PRIMITIVES) * 0.9,
                                  1.5 + 0.22 * len(labels)))
  limit = max(float(np.abs(percent).max()), 1e-3)  # White is uniform, whatever the spread.
  image = ax.imshow(percent, cmap='RdBu_r', vmin=-limit, vmax=limit, aspect='auto')
  ax.set_title('recurrent: softmax(alpha), % from uniform', fontsize=10)
  ax.set_xticks(range(len(genotypes.PRIMITIVES)), genotypes.PRIMITIVES, rotation=60,
                ha='right', fontsize=8)
  ax.set_yticks(range(len(labels)), labels, fontsize=7)
  for (i, j), text in np.ndenumerate(visualize.percent_labels(percent)):
    ax.text(j, i, text, ha='center', va='center', fontsize=6,
            color='white' if abs(percent[i, j]) > 0.6 * limit else 'black')
  fig.colorbar(image, ax=ax, fraction=0.05)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path


def build_network(genotype: Genotype, config, axis_name: Optional[str] = None,
                  ntokens: Optional[int] = None):
  """The language model of a recurrent genotype (no BatchNorm, as the reference's
  DARTSCell), sized by `config.model`."""
  return model_lib.build_model(_ntokens(config, ntokens), config.model, genotype, axis_name)
