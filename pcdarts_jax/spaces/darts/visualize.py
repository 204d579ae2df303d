"""Pictures of a search: cells as graphs (graphviz) and arch-weight heat-maps.

Cells are drawn as in the DARTS figures: the two cell inputs c_{k-2} and c_{k-1}
on the left, the intermediate nodes, and the output c_{k} that concatenates
them, every edge labelled with its operation. Rendering needs graphviz's `dot`
program (Debian/Ubuntu: `apt-get install graphviz`); without it the .gv source
is still written.
"""

import os
import shutil
from typing import List, Mapping, Optional, Sequence, Tuple

from absl import logging
import numpy as np

from pcdarts_jax.spaces.darts import genotypes
from pcdarts_jax.spaces import drawing

_warned_no_dot = False


def have_dot() -> bool:
  return shutil.which('dot') is not None


def cell_graph(cell: Sequence[Tuple[str, int]], concat: Sequence[int], title: str = ''):
  """A graphviz Digraph of one cell (genotype list of (op, input) pairs, two per node)."""
  g = drawing.digraph(title)
  g.node('c_{k-2}', fillcolor='darkseagreen2')
  g.node('c_{k-1}', fillcolor='darkseagreen2')
  steps = len(cell) // 2
  for i in range(steps):
    g.node(str(i), fillcolor='lightblue')
  for i in range(steps):
    for op, j in cell[2 * i:2 * i + 2]:
      source = 'c_{k-2}' if j == 0 else 'c_{k-1}' if j == 1 else str(j - 2)
      g.edge(source, str(i), label=op, fillcolor='gray')
  g.node('c_{k}', fillcolor='palegoldenrod')
  for i in concat:
    g.edge(str(i - 2), 'c_{k}', fillcolor='gray')
  return g


def draw_cell(cell, concat, path: str, title: str = '',
              formats: Sequence[str] = ('png', 'svg')) -> List[str]:
  """Writes `path`.gv and, when `dot` is installed, `path`.png / .svg; returns the paths."""
  return render_graph(cell_graph(cell, concat, title), path, formats)


def render_graph(g, path: str, formats: Sequence[str] = ('png', 'svg')) -> List[str]:
  """Writes graphviz graph `g` as `path`.gv and, when `dot` is installed, as
  `path`.<format> for each format; returns the paths written."""
  global _warned_no_dot
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  written = [path + '.gv']
  with open(written[0], 'w') as f:
    f.write(g.source)
  if not formats:
    return written
  if not have_dot():
    if not _warned_no_dot:
      logging.warning('graphviz `dot` not found: writing cell pictures as .gv source only '
                      '(install graphviz, e.g. apt-get install graphviz, to get PNG/SVG).')
      _warned_no_dot = True
    return written
  for fmt in formats:
    g.format = fmt
    # `render` writes path.fmt next to the source; cleanup=False keeps our .gv.
    written.append(g.render(filename=os.path.basename(path) + '.gv',
                            directory=os.path.dirname(os.path.abspath(path)),
                            outfile=f'{path}.{fmt}', cleanup=False))
  return written


def draw_genotype(genotype: genotypes.Genotype, path_prefix: str,
                  formats: Sequence[str] = ('png', 'svg')) -> List[str]:
  """Both cells: `path_prefix`_normal.* and `path_prefix`_reduce.*."""
  return (draw_cell(genotype.normal, genotype.normal_concat, path_prefix + '_normal',
                    'normal cell', formats) +
          draw_cell(genotype.reduce, genotype.reduce_concat, path_prefix + '_reduce',
                    'reduction cell', formats))


def edge_labels(steps: int = 4) -> List[str]:
  """'source->node' for every edge in the supernet's order, named as in the cell
  pictures: sources k-2 and k-1 are the cell inputs, nodes are numbered from 0."""
  labels = []
  for node, (start, end) in enumerate(genotypes.node_edge_ranges(steps)):
    labels += [f'{("k-2", "k-1")[j] if j < 2 else j - 2}->{node}' for j in range(end - start)]
  return labels


def percent_from_uniform(weights: np.ndarray) -> np.ndarray:
  """Each op weight as percent above (+) or below (-) the uniform weight of its
  edge (1 / the ops left on it; pruned ops have weight 0 and stay 0). Early in a
  search every weight rounds to 1/8 = 0.12-0.13; this is what tells them apart."""
  weights = np.asarray(weights, np.float64)
  kept = np.maximum((weights > 0).sum(-1, keepdims=True), 1)
  return np.where(weights > 0, (weights * kept - 1.0) * 100.0, 0.0)


def percent_labels(percent: np.ndarray) -> np.ndarray:
  """'+3.2%' / '-41%': one decimal while small, where early searches differ."""
  return np.vectorize(lambda p: f'{p:+.1f}%' if abs(p) < 10 else f'{p:+.0f}%')(percent)


def arch_heatmap(arch: Mapping[str, np.ndarray], primitives: Sequence[str], steps: int,
                 path: str, title: Optional[str] = None) -> str:
  """PNG of softmax(alphas) per edge for both cells, as percent from uniform
  (red above, blue below), and the normalised betas."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  has_betas = 'betas_normal' in arch
  cells = ('normal', 'reduce')
  columns = 4 if has_betas else 2
  widths = [len(primitives), 1.2] * 2 if has_betas else [len(primitives)] * 2
  fig, axes = plt.subplots(1, columns, figsize=(2.2 + sum(widths) * 0.55, 6.5),
                           gridspec_kw={'width_ratios': widths}, squeeze=False)
  axes = axes[0]
  labels = edge_labels(steps)
  for c, cell in enumerate(cells):
    ax = axes[c * (2 if has_betas else 1)]
    percent = percent_from_uniform(genotypes.cell_weights(arch[f'alphas_{cell}']))
    # Symmetric limits: white is uniform, whatever the spread.
    limit = max(float(np.abs(percent).max()), 1e-3)
    image = ax.imshow(percent, cmap='RdBu_r', vmin=-limit, vmax=limit, aspect='auto')
    ax.set_title(f'{cell}: softmax(alpha), % from uniform')
    ax.set_xticks(range(len(primitives)), primitives, rotation=60, ha='right', fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    for (i, j), text in np.ndenumerate(percent_labels(percent)):
      ax.text(j, i, text, ha='center', va='center', fontsize=6,
              color='white' if abs(percent[i, j]) > 0.6 * limit else 'black')
    fig.colorbar(image, ax=ax, fraction=0.05)
    if has_betas:
      ax = axes[c * 2 + 1]
      betas = genotypes.edge_weights(arch[f'betas_{cell}'], steps)[:, None]
      ax.imshow(betas, cmap='magma', vmin=0.0, vmax=1.0, aspect='auto')
      ax.set_title('beta', fontsize=9)
      ax.set_xticks([])
      ax.set_yticks(range(len(labels)), labels, fontsize=8)
      for i, b in enumerate(betas[:, 0]):
        ax.text(0, i, f'{b:.2f}', ha='center', va='center', fontsize=7,
                color='white' if b < 0.6 else 'black')
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path
