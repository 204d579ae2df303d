"""The NAS-Bench-201 search space (Dong & Yang ICLR 2020,
github.com/D-X-Y/AutoDL-Projects): ops, cell, macro network, genotype strings,
derivation, and the stand-alone network of a genotype.

Cell: node 0 is the cell input; node i (1..3) sums one op on every earlier node,
over the 6 edges EDGES = 1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2 (the row order of the
arch matrix); the output is node 3. Every cell keeps its channel count.

Macro network: stem conv 3x3 (3 -> C) + BN; `cells_per_stage` cells at C; a
ResNet basic block with stride 2 (C -> 2C); cells at 2C; a block (2C -> 4C);
cells at 4C; BN + ReLU, global average pool, linear. The search cells use
BatchNorm without affine parameters; the stem, the ResNet blocks and the last
BN are affine, as in NAS-Bench-201's search networks.

Architecture: ONE (6, 5) matrix `alphas` (collection `arch`, init 1e-3 N(0, 1))
shared by all cells; its mixing weights come from `relaxation.mixing_weights`
(`model.relaxation`: softmax | dirichlet | gumbel), drawn once per forward pass
for the whole network. `model.partial_channels` = K sends the first C/K channels
of each edge's input through the ops and lets the rest bypass, then shuffles
channels in K groups (PC-DARTS / DrNAS; K = 1 is the plain mixed op).
`model.op_mask` (6 x 5 of 0/1, DrNAS progressive pruning) removes ops: a masked
(edge, op) pair gets weight 0 and is neither built nor computed.

Genotype: a tuple of the 3 nodes, node i a tuple of its i (op, input) pairs in
input order; as a string `|op~0|+|op~0|op~1|+|op~0|op~1|op~2|`, the
NAS-Bench-201 format (`genotype_str` / `parse`).
"""

import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pcdarts_jax.run import config_fields
from pcdarts_jax.nn import initializers
from pcdarts_jax.nn import ops
from pcdarts_jax.spaces import cell_scan
from pcdarts_jax.spaces import relaxation
from pcdarts_jax.spaces.darts import cell_parts
from pcdarts_jax.spaces import drawing

# Order matters: the column order of `alphas`.
PRIMITIVES = ('none', 'skip_connect', 'nor_conv_1x1', 'nor_conv_3x3', 'avg_pool_3x3')
NUM_NODES = 4
# (target, source) of each edge: the row order of `alphas`.
EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))
ARCH_NAME = 'alphas'

Genotype = Tuple[Tuple[Tuple[str, int], ...], ...]


# --------------------------------------------------------------------------
# Operations and cells.


def make_op(primitive: str, channels: int, affine: bool,
            axis_name: Optional[str] = None, name: Optional[str] = None) -> nn.Module:
  """One NB-201 op, `channels` -> `channels` at stride 1."""
  if primitive == 'none':
    return ops.Zero(1, name=name)
  if primitive == 'skip_connect':
    return ops.Identity(name=name)
  if primitive == 'nor_conv_1x1':
    return ops.ReLUConvBN(channels, 1, 1, 0, affine=affine, axis_name=axis_name, name=name)
  if primitive == 'nor_conv_3x3':
    return ops.ReLUConvBN(channels, 3, 1, 1, affine=affine, axis_name=axis_name, name=name)
  if primitive == 'avg_pool_3x3':
    # Stride 1, padding 1, padded cells not counted; no BN (channels are unchanged).
    return ops.Pool('avg', 1, bn_after=False, name=name)
  raise ValueError(f'Unknown NAS-Bench-201 op {primitive!r}; known: {PRIMITIVES}.')


class MixedOp(nn.Module):
  """Weighted sum of the ops in `kept` (indices into PRIMITIVES) on the first
  C/K channels; the other channels bypass; then a channel shuffle in K groups."""
  channels: int
  kept: Tuple[int, ...] = tuple(range(len(PRIMITIVES)))
  partial_channels: int = 1
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, weights, train: bool = True):
    k = self.partial_channels
    width = self.channels // k
    x_ops, x_bypass = x[..., :width], x[..., width:]
    out = None
    for index in self.kept:
      if PRIMITIVES[index] == 'none':  # Exact zeros: nothing to add.
        continue
      op = make_op(PRIMITIVES[index], width, affine=False, axis_name=self.axis_name,
                   name=PRIMITIVES[index])
      term = weights[index].astype(x_ops.dtype) * op(x_ops, train=train)
      out = term if out is None else out + term
    if out is None:
      out = jnp.zeros_like(x_ops)
    if k == 1:
      return out
    return cell_parts.channel_shuffle(jnp.concatenate([out, x_bypass], axis=-1), k)


def kept_ops(op_mask, edge: int) -> Tuple[int, ...]:
  """Indices of the ops edge `edge` computes under `op_mask` (None: all)."""
  if op_mask is None:
    return tuple(range(len(PRIMITIVES)))
  return tuple(k for k, keep in enumerate(op_mask[edge]) if keep)


class SearchCell(nn.Module):
  """The 4-node search cell: every edge a mixed op, weights (6, 5) per call."""
  channels: int
  partial_channels: int = 1
  op_mask: Optional[Tuple[Tuple[int, ...], ...]] = None
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, weights, train: bool = True):
    nodes: List[Optional[jax.Array]] = [x] + [None] * (NUM_NODES - 1)
    # EDGES is ordered so that each source node is complete before it is read.
    for e, (i, j) in enumerate(EDGES):
      y = MixedOp(self.channels, kept_ops(self.op_mask, e), self.partial_channels,
                  self.axis_name, name=f'edge_{e}')(nodes[j], weights[e], train)
      nodes[i] = y if nodes[i] is None else nodes[i] + y
    return nodes[-1]


class ResNetBasicBlock(nn.Module):
  """NAS-Bench-201's ResNet basic block between stages: conv_a (ReLU, conv 3x3
  at `stride`, BN), conv_b (ReLU, conv 3x3, BN), plus a shortcut: at stride 2 a
  2x2 average pool and a 1x1 conv (no BN); else a ReLU-conv 1x1-BN when the
  channel count changes, else the identity. No activation after the sum."""
  features: int
  stride: int = 2
  affine: bool = True
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool = True):
    common = dict(affine=self.affine, axis_name=self.axis_name)
    y = ops.ReLUConvBN(self.features, 3, self.stride, 1, name='conv_a', **common)(x, train)
    y = ops.ReLUConvBN(self.features, 3, 1, 1, name='conv_b', **common)(y, train)
    if self.stride == 2:
      shortcut = nn.avg_pool(x, (2, 2), (2, 2)).astype(x.dtype)
      shortcut = ops.conv(self.features, 1, name='shortcut')(shortcut)
    elif x.shape[-1] != self.features:
      shortcut = ops.ReLUConvBN(self.features, 1, 1, 0, name='shortcut', **common)(x, train)
    else:
      shortcut = x
    return shortcut + y


def _stem(x, channels, train, axis_name):
  x = ops.conv(channels, 3, 1, 1, 'stem_conv')(x)
  return ops.batch_norm(train, True, 'stem_bn', axis_name)(x)


def _head(x, num_classes, train, axis_name):
  x = nn.relu(ops.batch_norm(train, True, 'last_bn', axis_name)(x))
  out = jnp.mean(x.astype(jnp.promote_types(x.dtype, jnp.float32)), axis=(1, 2))
  return nn.Dense(num_classes, kernel_init=initializers.kernel_init,
                  bias_init=initializers.bias_init_for(out.shape[-1]),
                  name='classifier')(out)


class SearchNetwork(nn.Module):
  """The NB-201 search supernet; `__call__(x, train, temperature)` -> logits.

  `temperature`: the Gumbel-softmax tau (gumbel relaxation only). The stochastic
  relaxations draw one sample per call from the 'relax' rng stream, shared by
  all cells (without that rng: their mean / the plain softmax).
  """
  init_channels: int = 16
  num_classes: int = 10
  cells_per_stage: int = 5
  partial_channels: int = 1
  relaxation: str = 'softmax'  # softmax | dirichlet (DrNAS) | gumbel
  op_mask: Optional[Tuple[Tuple[int, ...], ...]] = None  # (6, 5) of 0/1; None: all ops
  axis_name: Optional[str] = None
  dtype: str = 'float32'  # activations; params, arch, BN statistics and logits stay float32
  # A stage's cells as one lax.scan over their stacked variables: one compiled cell
  # per stage instead of cells_per_stage (spaces/cell_scan.py); same variables.
  # Off by default: on CPU the scanned stages stepped 21x slower (docs/searching.md).
  scan_cells: bool = False

  primitives = PRIMITIVES  # Not a field: the op set of this space is fixed.
  edges = EDGES

  def mixing_weights(self, alphas, temperature=1.0):
    mask = None if self.op_mask is None else jnp.asarray(self.op_mask, jnp.float32)
    draw = self.has_rng(relaxation.RELAX_RNG) and not self.is_initializing()
    rng = self.make_rng(relaxation.RELAX_RNG) if draw else None
    return relaxation.mixing_weights(self.relaxation, alphas, rng, temperature, mask)

  @nn.compact
  def __call__(self, x, train: bool = True, temperature=1.0):
    init = lambda: 1e-3 * jax.random.normal(self.make_rng('params'),
                                            (len(EDGES), len(PRIMITIVES)))
    alphas = self.variable('arch', ARCH_NAME, init).value
    weights = self.mixing_weights(alphas, temperature)
    x = ops.network_input(x, self.dtype)
    c = self.init_channels
    x = _stem(x, c, train, self.axis_name)
    cell = 0
    for stage in range(3):
      if stage:
        c *= 2
        x = ResNetBasicBlock(c, 2, True, self.axis_name, name=f'resblock_{stage}')(x, train)
      names = [f'cell_{cell + i}' for i in range(self.cells_per_stage)]
      cell += self.cells_per_stage
      if self.scan_cells and len(names) > 1 and not self.is_initializing():
        x = cell_scan.scan_identical_cells(
            self, SearchCell(c, self.partial_channels, self.op_mask, self.axis_name,
                             parent=None), names, x,
            cell_inputs=lambda x: (x,), next_carry=lambda _, y: y, args=(weights, train))
        continue
      for name in names:
        x = SearchCell(c, self.partial_channels, self.op_mask, self.axis_name,
                       name=name)(x, weights, train)
    return _head(x, self.num_classes, train, self.axis_name)


class Cell(nn.Module):
  """A discrete NB-201 cell: one op per edge (affine BN); `none` edges add nothing."""
  genotype: Genotype
  channels: int
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool = True):
    nodes = [x]
    for i, node in enumerate(self.genotype, start=1):
      total = None
      for op, j in node:
        if op == 'none':
          continue
        y = make_op(op, self.channels, affine=True, axis_name=self.axis_name,
                    name=f'edge_{EDGES.index((i, j))}')(nodes[j], train=train)
        total = y if total is None else total + y
      nodes.append(jnp.zeros_like(x) if total is None else total)
    return nodes[-1]


class Network(nn.Module):
  """The stand-alone NB-201 network of a genotype (same macro structure as the
  supernet, affine BN everywhere). Returns `(logits, None)`, the trainer's
  (logits, auxiliary logits) convention; there is no auxiliary head or drop-path.
  """
  genotype: Genotype
  init_channels: int = 16
  num_classes: int = 10
  cells_per_stage: int = 5
  axis_name: Optional[str] = None
  dtype: str = 'float32'

  @nn.compact
  def __call__(self, x, train: bool = True, drop_path_prob=None):
    del drop_path_prob  # NB-201 networks train without drop-path.
    x = ops.network_input(x, self.dtype)
    c = self.init_channels
    x = _stem(x, c, train, self.axis_name)
    cell = 0
    for stage in range(3):
      if stage:
        c *= 2
        x = ResNetBasicBlock(c, 2, True, self.axis_name, name=f'resblock_{stage}')(x, train)
      for _ in range(self.cells_per_stage):
        x = Cell(self.genotype, c, self.axis_name, name=f'cell_{cell}')(x, train)
        cell += 1
    return _head(x, self.num_classes, train, self.axis_name), None


# --------------------------------------------------------------------------
# Builders from a config.


def check_op_mask(op_mask) -> Optional[Tuple[Tuple[int, ...], ...]]:
  """`model.op_mask` as a hashable (6, 5) tuple of 0/1, or None; every edge must
  keep at least one op."""
  if op_mask is None:
    return None
  mask = np.asarray(op_mask)
  if mask.shape != (len(EDGES), len(PRIMITIVES)) or not np.isin(mask, (0, 1)).all():
    raise ValueError(f'model.op_mask must be a {len(EDGES)}x{len(PRIMITIVES)} matrix of 0/1 '
                     f'(edges {edge_labels()} x ops {PRIMITIVES}); got shape {mask.shape}.')
  empty = [edge_labels()[e] for e in range(len(EDGES)) if not mask[e].any()]
  if empty:
    raise ValueError(f'model.op_mask removes every op of edge(s) {empty}; keep at least one.')
  return tuple(tuple(int(v) for v in row) for row in mask)


def _check_channels(model, k=None):
  c = model.init_channels
  k = config_fields.partial_channels(model) if k is None else k
  if not isinstance(k, int) or k < 1 or c % k:
    raise ValueError(f'model.partial_channels={k!r} must be a positive integer dividing '
                     f'model.init_channels={c}.')
  config_fields.require_dtype(config_fields.field(model, 'dtype', 'float32'))


def build_supernet(config, axis_name: Optional[str] = None,
                   partial_channels: Optional[int] = None, op_masks=None,
                   depthwise_impl: Optional[str] = None) -> SearchNetwork:
  """The NB-201 supernet of `config.model` (`init_channels`, `num_classes`,
  `cells_per_stage`, `partial_channels`, `relaxation`, `op_mask`, `dtype`).

  `partial_channels` and `op_masks` override the config for a stage of DrNAS
  progressive learning; `op_masks` is the (6, 5) mask itself or a mapping with
  one entry (e.g. {'alphas': mask} or {'cell': mask}). `depthwise_impl` is
  accepted as every space's is and unused: NB-201's ops have no depthwise
  convolutions.
  """
  del depthwise_impl
  model = config.model if hasattr(config, 'model') else config
  if partial_channels is None:
    partial_channels = config_fields.partial_channels(model)
  _check_channels(model, partial_channels)
  relax = config_fields.field(model, 'relaxation', 'softmax')
  if relax not in relaxation.RELAXATIONS:
    raise ValueError(f'model.relaxation={relax!r} is not one of {relaxation.RELAXATIONS}.')
  mask = config_fields.field(model, 'op_mask', None)
  if op_masks is not None:
    if isinstance(op_masks, Mapping):
      if len(op_masks) != 1:
        raise ValueError(f'op_masks for the NB-201 space holds one (6, 5) mask; got the '
                         f'keys {sorted(op_masks)}.')
      op_masks = next(iter(op_masks.values()))
    mask = op_masks
  return SearchNetwork(
      init_channels=model.init_channels, num_classes=model.num_classes,
      cells_per_stage=config_fields.field(model, 'cells_per_stage', 5),
      partial_channels=partial_channels, relaxation=relax,
      op_mask=check_op_mask(mask), axis_name=axis_name,
      dtype=config_fields.model_dtype(model),
      scan_cells=config_fields.field(model, 'scan_cells', False))


def build_network(genotype, config, axis_name: Optional[str] = None) -> Network:
  """The stand-alone network of `genotype` (a genotype tuple or its string)."""
  model = config.model if hasattr(config, 'model') else config
  _check_channels(model, 1)  # K is a search setting
  if isinstance(genotype, str):
    genotype = parse(genotype)
  else:
    genotype = parse(genotype_str(genotype))  # Validates and normalises to tuples.
  return Network(genotype=genotype, init_channels=model.init_channels,
                 num_classes=model.num_classes,
                 cells_per_stage=config_fields.field(model, 'cells_per_stage', 5),
                 axis_name=axis_name, dtype=config_fields.model_dtype(model))


def cell_channels(model: SearchNetwork, cell: int) -> int:
  """Channel count of search cell `cell` (C, 2C, 4C by stage); its ops see
  that divided by `model.partial_channels`, all at stride 1."""
  return model.init_channels * 2 ** (cell // model.cells_per_stage)


def edge_stride(model: SearchNetwork, cell: int, edge: int) -> int:
  """Every NB-201 cell op runs at stride 1 (the ResNet blocks reduce)."""
  del model, cell, edge
  return 1


def prune_masks(arch: Mapping[str, np.ndarray], keep: int,
                previous: Optional[Mapping[str, np.ndarray]] = None) -> Dict[str, np.ndarray]:
  """{'alphas': (6, 5) 0/1 mask}: per edge the `keep` ops of largest alpha among
  those `previous` kept (ties: the lower op index); for `build_supernet(...,
  op_masks=...)` at a progressive-learning stage boundary."""
  alphas = np.asarray(arch[ARCH_NAME], np.float64)
  if previous is not None:
    alphas = np.where(np.asarray(next(iter(previous.values()))) > 0, alphas, -np.inf)
  order = np.argsort(-alphas, axis=-1, kind='stable')[:, :keep]
  mask = np.zeros(alphas.shape, np.int32)
  np.put_along_axis(mask, order, 1, axis=-1)
  return {ARCH_NAME: mask}


# --------------------------------------------------------------------------
# Genotypes.


def edge_labels() -> List[str]:
  """'j->i' for every edge, in arch-row order."""
  return [f'{j}->{i}' for i, j in EDGES]


def genotype_str(genotype: Genotype) -> str:
  """`|op~0|+|op~0|op~1|+|op~0|op~1|op~2|`, the NAS-Bench-201 architecture string."""
  return '+'.join('|' + '|'.join(f'{op}~{j}' for op, j in node) + '|' for node in genotype)


def parse(text: str) -> Genotype:
  """The genotype of an NAS-Bench-201 architecture string (inverse of `genotype_str`)."""
  form = '|op~0|+|op~0|op~1|+|op~0|op~1|op~2|'
  if not isinstance(text, str):
    raise ValueError(f'an NB-201 genotype string looks like {form!r}; got {text!r}.')
  parts = text.strip().split('+')
  if len(parts) != NUM_NODES - 1:
    raise ValueError(f'NB-201 genotype {text!r} has {len(parts)} nodes separated by "+"; '
                     f'expected {NUM_NODES - 1}, as in {form!r}.')
  nodes = []
  for i, part in enumerate(parts, start=1):
    if len(part) < 2 or part[0] != '|' or part[-1] != '|':
      raise ValueError(f'NB-201 genotype {text!r}: node {i} {part!r} must start and end '
                       f'with "|", as in {form!r}.')
    genes = part[1:-1].split('|')
    if len(genes) != i:
      raise ValueError(f'NB-201 genotype {text!r}: node {i} has {len(genes)} inputs; it '
                       f'must have {i} (one from each of nodes 0..{i - 1}).')
    node = []
    for j, gene in enumerate(genes):
      op, sep, source = gene.partition('~')
      if not sep or op not in PRIMITIVES:
        raise ValueError(f'NB-201 genotype {text!r}: {gene!r} is not "op~input" with op '
                         f'one of {PRIMITIVES}.')
      if source != str(j):
        raise ValueError(f'NB-201 genotype {text!r}: input {j} of node {i} reads '
                         f'{source!r}; inputs are listed in order 0..{i - 1}.')
      node.append((op, j))
    nodes.append(tuple(node))
  return tuple(nodes)


def genotype_edges(genotype: Genotype) -> Dict[str, list]:
  """{'cell': [(node, input, op)]}: every edge of the one cell type, nodes 1..3."""
  return {'cell': [(i, int(j), op) for i, node in enumerate(genotype, start=1)
                   for op, j in node]}


def genotype_to_dict(genotype: Genotype) -> dict:
  return {'arch_str': genotype_str(genotype),
          'nodes': [[[op, int(j)] for op, j in node] for node in genotype]}


def genotype_from_dict(d: Mapping) -> Genotype:
  if 'arch_str' in d:
    return parse(d['arch_str'])
  if 'nodes' in d:
    return parse(genotype_str(d['nodes']))
  raise ValueError(f'an NB-201 genotype dict needs "arch_str" (or "nodes"); got keys '
                   f'{sorted(d)}.')


def _mask_of(model) -> Optional[np.ndarray]:
  mask = getattr(model, 'op_mask', None) if model is not None else None
  return None if mask is None else np.asarray(mask, bool)


def _softmax(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  e = np.exp(x - x.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def op_weights(arch: Mapping[str, np.ndarray], model=None) -> np.ndarray:
  """softmax(alphas) per edge, masked ops zeroed and the rest renormalised."""
  alphas = np.asarray(arch[ARCH_NAME], np.float64)
  expected = (len(EDGES), len(PRIMITIVES))
  if alphas.shape != expected:
    raise ValueError(f'{ARCH_NAME} has shape {alphas.shape}; an NB-201 cell has {expected} '
                     f'(edges {edge_labels()} x ops {PRIMITIVES}).')
  mask = _mask_of(model)
  if mask is None:
    return _softmax(alphas)
  return _softmax(np.where(mask, alphas, -np.inf))


def derive(arch: Mapping[str, np.ndarray], model=None) -> Genotype:
  """Argmax op per edge (masked ops excluded; ties: the first op).

  The ranking is that of softmax(alphas), as DrNAS derives; it is the same for
  every relaxation: the Dirichlet mean, elu(alpha) + 1 normalised, and the
  Gumbel-softmax at any temperature are increasing in alpha, so they all have
  the argmax of alpha.
  """
  best = np.argmax(op_weights(arch, model), axis=-1)
  nodes = [[] for _ in range(NUM_NODES - 1)]
  for e, (i, j) in enumerate(EDGES):
    nodes[i - 1].append((PRIMITIVES[int(best[e])], j))
  return tuple(tuple(sorted(node, key=lambda gene: gene[1])) for node in nodes)


# --------------------------------------------------------------------------
# Monitoring.


def arch_scalars(arch: Mapping[str, np.ndarray], model=None) -> Dict[str, float]:
  """Mean per-edge entropy of the op weights, and every edge's op weights."""
  weights = op_weights(arch, model)
  entropy = -np.sum(weights * np.log(np.maximum(weights, 1e-12)), axis=-1)
  values = {'arch/cell/entropy': float(entropy.mean())}
  for e, label in enumerate(edge_labels()):
    for k, op in enumerate(PRIMITIVES):
      values[f'alpha_cell/edge_{label}/{op}'] = float(weights[e, k])
  return values


def cell_graph(genotype: Genotype, title: str = ''):
  """A graphviz Digraph of the cell: nodes 0..3, each edge labelled with its op
  (`none` edges are left out)."""
  g = drawing.digraph(title)
  g.node('0', label='in (0)', fillcolor='darkseagreen2')
  g.node('1', fillcolor='lightblue')
  g.node('2', fillcolor='lightblue')
  g.node('3', label='out (3)', fillcolor='palegoldenrod')
  for i, node in enumerate(genotype, start=1):
    for op, j in node:
      if op != 'none':
        g.edge(str(j), str(i), label=op, fillcolor='gray')
  return g


def draw(genotype: Genotype, prefix: str, formats: Sequence[str] = ('png', 'svg')) -> List[str]:
  """Writes `prefix`_cell.gv (and .png / .svg with graphviz's `dot`)."""
  from pcdarts_jax.spaces.darts import visualize  # pylint: disable=g-import-not-at-top
  return visualize.render_graph(cell_graph(genotype, genotype_str(genotype)),
                                prefix + '_cell', formats)


def heatmap(arch: Mapping[str, np.ndarray], model, path: str,
            title: Optional[str] = None) -> str:
  """PNG of the op weights (softmax of alphas) per edge."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  weights = op_weights(arch, model)
  fig, ax = plt.subplots(figsize=(5.5, 4))
  image = ax.imshow(weights, cmap='viridis', aspect='auto')
  ax.set_title(title or 'softmax(alpha)')
  ax.set_xticks(range(len(PRIMITIVES)), PRIMITIVES, rotation=45, ha='right', fontsize=8)
  ax.set_yticks(range(len(EDGES)), edge_labels(), fontsize=8)
  for (i, j), w in np.ndenumerate(weights):
    ax.text(j, i, f'{w:.3f}', ha='center', va='center', fontsize=7,
            color='white' if w < (weights.min() + weights.max()) / 2 else 'black')
  fig.colorbar(image, ax=ax, fraction=0.05)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path
