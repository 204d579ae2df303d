"""The PC-DARTS search supernet: partial-channel mixed op, search cell, network.

Weights live in `params`/`batch_stats`; the architecture lives in the `arch`
collection (`alphas_normal`, `alphas_reduce` of shape (edges, ops) and, with edge
normalization, `betas_normal`, `betas_reduce` of shape (edges,)).
Variants: `channel_sampling` (`first` | `random`, the latter drawing from the
Flax rng stream 'channels' | `reference_random`, the reference's random file as it
runs) and `channel_mixing` (`shuffle` | `shift`); none changes the parameters.
"""

import functools
from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pcdarts_jax.spaces import cell_scan
from pcdarts_jax.spaces.darts import batched_ops
from pcdarts_jax.run import config_fields
from pcdarts_jax.spaces.darts import genotypes
from pcdarts_jax.spaces.darts import grouped_cell
from pcdarts_jax.spaces.darts.cell_parts import (GROUPED_PRIMITIVES, edge_groups, max_pool_2x2,
                                                 mix_channels)
from pcdarts_jax.nn import initializers
from pcdarts_jax.nn import functional
from pcdarts_jax.nn import ops
from pcdarts_jax.spaces import relaxation

STEM_TYPES = ('cifar', 'imagenet')
# reference_random: PC-DARTS' model_search_random.py as it runs (see _partial_mixed_op).
CHANNEL_SAMPLINGS = ('first', 'random', 'reference_random')
CHANNEL_RNG = 'channels'  # Flax rng stream of the random channel sampling.
EDGE_IMPLS = ('auto', 'batched', 'grouped', 'scan')
# The shortest run of normal cells that `scan_cells` scans. A scanned run computes
# one preprocess it drops (cell_scan.scan_cell_run): for the 8-cell default's runs
# of 2 that cost 3% more FLOPs and 6% slower CPU steps for 11% less compile time.
MIN_SCANNED_RUN = 3
# What a SearchCell call computes: all of it, or a part (SearchCell.__call__).
CELL_PARTS = ('cell', 'preprocess', 'preprocess0', 'preprocess1', 'edges')
# edge_impl='auto' per platform a step is lowered for (jax.default_backend()
# names and jax.export's): scan until grouped has GPU timings that beat it.
AUTO_EDGE_IMPLS = {'cpu': 'scan', 'gpu': 'scan', 'cuda': 'scan', 'rocm': 'scan',
                   'tpu': 'scan'}


def resolve_edge_impl(impl: str, channel_sampling: str = 'first',
                      primitives: Sequence[str] = genotypes.PRIMITIVES,
                      platform: Optional[str] = None) -> str:
  """How a search cell runs its edges. `scan`: one edge per step of a lax.scan
  (any variant). `batched`: edges side by side on the channel axis, grouped by
  target node (batched_ops.py). `grouped`: unrolled, one stage per source node,
  each op once per stage for all its edges, the parameter-free ops shared
  (grouped_cell.py; also serves pruned DrNAS stages). Both need
  channel_sampling='first', where all edges from one input see the same
  channels. `auto`: AUTO_EDGE_IMPLS[platform] (default: jax.default_backend()),
  scan where that layout cannot run the cell. On CPU scan measured faster than
  batched and compiles sooner, and on a GPU batched crashed XLA's Triton GEMM
  tiling pass, so batched stays opt-in (docs/benchmarks.md)."""
  if impl not in EDGE_IMPLS:
    raise ValueError(f'model.edge_impl={impl!r} is not one of {EDGE_IMPLS}.')
  if impl == 'auto':
    choice = AUTO_EDGE_IMPLS.get(platform or jax.default_backend(), 'scan')
    try:
      return resolve_edge_impl(choice, channel_sampling, primitives)
    except ValueError:
      return 'scan'
  if impl in ('batched', 'grouped'):
    supported = batched_ops.BATCHED_PRIMITIVES if impl == 'batched' else GROUPED_PRIMITIVES
    if channel_sampling != 'first':
      raise ValueError(f"model.edge_impl={impl!r} needs model.channel_sampling='first' "
                       f"(got {channel_sampling!r}); use edge_impl 'auto' or 'scan'.")
    missing = [p for p in primitives if p not in supported]
    if missing:
      raise ValueError(f'model.edge_impl={impl!r} has no form of {missing}; its primitives: '
                       f'{supported}; use edge_impl \'auto\' or \'scan\'.')
  return impl


def sample_channels(rng: jax.Array, channels: int, width: int) -> jax.Array:
  """A random permutation of the channels whose first `width` entries are the
  sampled subset: [sorted sample, sorted rest]. Sorting keeps the relative
  channel order inside both parts, so K = 1 (all sampled) is the identity."""
  chosen = jax.random.permutation(rng, channels)[:width]
  mask = jnp.zeros((channels,), bool).at[chosen].set(True)
  # Stable argsort of "not sampled": sampled channels first, each part ascending.
  return jnp.argsort((~mask).astype(jnp.int32), stable=True)


def edge_normalization(betas: jax.Array, steps: int) -> jax.Array:
  """Softmax of the betas over each node's incoming edges (2, 3, 4, ... edges)."""
  return jnp.concatenate([jax.nn.softmax(betas[s:e])
                          for s, e in genotypes.node_edge_ranges(steps)])


def _partial_mixed_op(module, x, weights, channels, stride, partial_channels,
                      primitives, depthwise_impl, axis_name, train,
                      channel_sampling='first', channel_mixing='shuffle'):
  """Body of the mixed op; creates its ops in the calling (compact) `module`.

  `first`: the first C/K channels go through the ops. `random`: a fresh subset
  of C/K channels, drawn from the module's 'channels' rng stream on every call;
  the op sum is written back to the sampled channels' places and every other
  channel keeps its own place, so the result (before mixing) is
  S * MixedOp(S x) + (1 - S) * x for the sampling mask S. Without that rng
  (initialisation, evaluation) the first C/K channels are used.
  `reference_random`: what PC-DARTS' model_search_random.py computes, for
  reproducing its numbers: it draws a permutation but discards it, so the first
  C/K channels go through the ops, and it permutes nothing after the concat
  (`channel_mixing` does not apply).
  """
  k = partial_channels
  width = channels // k
  perm = None
  if channel_sampling == 'random' and k > 1:
    if module.has_rng(CHANNEL_RNG):
      perm = sample_channels(module.make_rng(CHANNEL_RNG), channels, width)
      x = jnp.take(x, perm, axis=-1)
    elif train and not module.is_initializing():
      raise ValueError(
          "model.channel_sampling='random' needs a 'channels' rng in train mode: "
          "model.apply(..., rngs={'channels': key}).")
  elif channel_sampling not in CHANNEL_SAMPLINGS:
    raise ValueError(f'model.channel_sampling={channel_sampling!r} is not one of '
                     f'{CHANNEL_SAMPLINGS}.')
  x_ops, x_bypass = x[..., :width], x[..., width:]
  out = None
  for index, primitive in enumerate(primitives):
    if primitive == 'none':  # Contributes exact zeros.
      continue
    op = ops.make_op(primitive, width, stride, affine=False,
                     depthwise_impl=depthwise_impl, search=True,
                     axis_name=axis_name, name=primitive)
    term = weights[index].astype(x_ops.dtype) * op(x_ops, train=train)
    out = term if out is None else out + term
  if out is None:  # Only `none` in the op set.
    out = jnp.zeros_like(x_ops[:, ::stride, ::stride, :])
  if k == 1:
    return out
  if stride == 2:
    x_bypass = max_pool_2x2(x_bypass)
  y = jnp.concatenate([out, x_bypass], axis=-1)
  if perm is not None:  # Every channel back to its own place.
    y = jnp.take(y, jnp.argsort(perm), axis=-1)
  if channel_sampling == 'reference_random':  # [op sum, bypass], as the reference.
    return y
  return mix_channels(y, channel_mixing, k)


class PartialMixedOp(nn.Module):
  """Mixed op on the first C/K channels; the rest bypasses, then channels shuffle.

  With K = 1 this is DARTS' mixed op: all channels through all ops, no shuffle.
  The bypass is max-pooled 2x2 on stride-2 edges. `channel_sampling` picks the
  processed channels (`first` | `random` | `reference_random`, see
  `_partial_mixed_op`); `channel_mixing` is the final permutation (`shuffle` |
  `shift`).
  """
  channels: int
  stride: int
  partial_channels: int = 4
  primitives: Sequence[str] = genotypes.PRIMITIVES
  depthwise_impl: str = 'auto'
  axis_name: Optional[str] = None
  train: bool = True
  channel_sampling: str = 'first'
  channel_mixing: str = 'shuffle'

  @nn.compact
  def __call__(self, x, weights):
    return _partial_mixed_op(self, x, weights, self.channels, self.stride,
                             self.partial_channels, self.primitives,
                             self.depthwise_impl, self.axis_name, self.train,
                             self.channel_sampling, self.channel_mixing)


class _EdgeScanStep(PartialMixedOp):
  """One edge per scan iteration: nodes[node] += edge_weight * MixedOp(source).

  The source is `inputs[source]` (cell inputs) or, with `from_nodes`, the
  finished node `nodes[source]`.
  """
  from_nodes: bool = False

  @nn.compact
  def __call__(self, nodes, edge, inputs):
    source, node, op_weights, edge_weight = edge
    x = (nodes if self.from_nodes else inputs)[source]
    y = _partial_mixed_op(self, x, op_weights, self.channels, self.stride,
                          self.partial_channels, self.primitives,
                          self.depthwise_impl, self.axis_name, self.train,
                          self.channel_sampling, self.channel_mixing)
    return nodes.at[node].add(edge_weight.astype(y.dtype) * y), None


def _fold_boundary(x: jax.Array) -> jax.Array:
  """Materializes a group's folded input, and so its gradient: otherwise XLA:CPU
  fuses every op's input gradient, channel slices included, into one loop per
  cell input that it cannot vectorize. A CPU-only device: other platforms'
  programs get x itself (chosen when the program is lowered), where fusion is
  what they want."""
  return jax.lax.platform_dependent(x, cpu=jax.lax.optimization_barrier, default=functional.identity)


def _edge_scan(unroll: bool):
  return nn.scan(
      _EdgeScanStep,
      variable_axes={'params': 0, 'batch_stats': 0},
      split_rngs={'params': True, CHANNEL_RNG: True},  # Each edge its own sample.
      in_axes=(0, nn.broadcast),
      unroll=True if unroll else 1)


class SearchCell(nn.Module):
  """A search cell: two preprocessed inputs, `steps` nodes, every edge a mixed op.

  Edge e = offset(node) + j (j: input state) enters its node weighted by
  edge_weights[e] (edge normalization; None for plain DARTS); its ops are mixed
  by op_weights[e]. The edges run as two `lax.scan`s (see `edge_groups`) over
  stacked per-edge parameters: the mixed op is compiled twice per cell instead of
  14 times, so a gradient compiles several times sooner. `unroll_edges=True`
  unrolls the scans (same parameters); with the custom VJPs of ops.py it does
  not step faster and compiles much longer with twice the step memory
  (docs/benchmarks.md).
  """
  channels: int
  reduction: bool
  reduction_prev: bool
  steps: int = 4
  multiplier: int = 4
  partial_channels: int = 4
  primitives: Sequence[str] = genotypes.PRIMITIVES
  depthwise_impl: str = 'auto'
  unroll_edges: bool = False
  axis_name: Optional[str] = None
  channel_sampling: str = 'first'
  channel_mixing: str = 'shuffle'
  # DrNAS progressive learning: per edge, 1 = op kept. Kept ops differ from edge
  # to edge, so the edges become separate modules (`edge_{e}`) computing only
  # their kept ops (no scan over stacked parameters).
  op_mask: Optional[Tuple[Tuple[int, ...], ...]] = None
  edge_impl: str = 'auto'  # auto | batched | grouped | scan (resolve_edge_impl)
  # grouped layout: each depthwise conv and its 1x1 conv as one dense conv
  # (grouped_cell.merged_kernels); the same variables.
  merge_separable: bool = False

  def _batched_edges(self, s0, s1, op_weights, edge_weights, train):
    """All edges as 4 channel-batched groups: the 8 edges from the cell inputs,
    then, node by node, the edges from earlier nodes into it. Since the channel
    shuffle is a permutation, a node is mix(concat(sum of its edges' op outputs,
    sum of their bypassed channels)): one shuffle per node, not per edge."""
    c, k = self.channels, self.partial_channels
    width = c // k
    stride = 2 if self.reduction else 1
    groups = dict(edge_groups(self.steps))

    def mixed(name, count, group_stride):
      return batched_ops.BatchedMixedOps(
          count, group_stride, tuple(self.primitives), train, self.depthwise_impl,
          self.axis_name, name=name)

    def bypass(x, pool):
      x = x[..., width:]
      return max_pool_2x2(x) if pool else x

    ops_sum = [None] * self.steps
    bypass_sum = [None] * self.steps

    def accumulate(members, y, sources):
      y = batched_ops.unfold(y, len(members))
      for index, ((e, node, j), source) in enumerate(zip(members, sources)):
        scale = edge_weights[e].astype(y.dtype)
        term = scale * y[..., index, :]
        ops_sum[node] = term if ops_sum[node] is None else ops_sum[node] + term
        if k > 1:
          term = scale * source
          bypass_sum[node] = term if bypass_sum[node] is None else bypass_sum[node] + term

    members = groups['input_edges']
    inputs = [s0, s1]
    edges = np.array([e for e, _, _ in members])
    x = _fold_boundary(jnp.concatenate([inputs[j][..., :width] for _, _, j in members], -1))
    y = mixed('input_edges', len(members), stride)(
        x, op_weights[edges], tuple(range(len(members))))
    input_bypass = [bypass(s, stride == 2) for s in inputs] if k > 1 else [None, None]
    accumulate(members, y, [input_bypass[j] for _, _, j in members])

    node_members = groups['node_edges']
    node_ops = mixed('node_edges', len(node_members), 1)
    nodes = []
    for node in range(self.steps):
      if node > 0:  # Edges from the finished nodes 0..node-1 into this one.
        chosen = [(pos, m) for pos, m in enumerate(node_members) if m[1] == node]
        positions = tuple(pos for pos, _ in chosen)
        members = [m for _, m in chosen]
        edges = np.array([e for e, _, _ in members])
        x = _fold_boundary(
            jnp.concatenate([nodes[j - 2][..., :width] for _, _, j in members], -1))
        y = node_ops(x, op_weights[edges], positions)
        accumulate(members, y, [bypass(nodes[j - 2], False) if k > 1 else None
                                for _, _, j in members])
      if k == 1:
        nodes.append(ops_sum[node])
      else:
        nodes.append(mix_channels(jnp.concatenate([ops_sum[node], bypass_sum[node]], -1),
                                  self.channel_mixing, k))
    return jnp.concatenate(nodes[-self.multiplier:], axis=-1)

  def _masked_edges(self, s0, s1, op_weights, edge_weights, train):
    states = [s0, s1]
    stride = 2 if self.reduction else 1
    for start, end in genotypes.node_edge_ranges(self.steps):
      node = None
      for j in range(end - start):
        e = start + j
        kept = [k for k, on in enumerate(self.op_mask[e]) if on]
        op = PartialMixedOp(self.channels, stride if j < 2 else 1, self.partial_channels,
                            tuple(self.primitives[k] for k in kept), self.depthwise_impl,
                            self.axis_name, train, self.channel_sampling,
                            self.channel_mixing, name=f'edge_{e}')
        y = op(states[j], op_weights[e][np.array(kept)])
        y = edge_weights[e].astype(y.dtype) * y
        node = y if node is None else node + y
      states.append(node)
    return jnp.concatenate(states[-self.multiplier:], axis=-1)

  def _preprocess_input(self, index: int, x, train: bool, impl: str):
    """preprocess{index} alone on x: FactorizedReduce for s0 after a reduction
    cell, else ReLUConvBN (the grouped layout's form for its cells)."""
    if impl == 'grouped':
      return grouped_cell.preprocess_input(self, index, x, train)
    c, name, bn_axis = self.channels, f'preprocess{index}', dict(axis_name=self.axis_name)
    if index == 0 and self.reduction_prev:
      return ops.FactorizedReduce(c, affine=False, name=name, **bn_axis)(x, train)
    return ops.ReLUConvBN(c, 1, 1, 0, affine=False, name=name, **bn_axis)(x, train)

  @nn.compact
  def __call__(self, s0, s1, op_weights, edge_weights, train: bool = True,
               part: str = 'cell'):
    """The cell's output, or one part of it (`part`, see CELL_PARTS):
    `preprocess` gives both preprocessed inputs, `preprocess0` / `preprocess1`
    one of them (the other input is ignored), `edges` the output from inputs
    already preprocessed. A run of cells is pipelined by parts (cell_scan.py)."""
    if part not in CELL_PARTS:
      raise ValueError(f'SearchCell part={part!r} is not one of {CELL_PARTS}.')
    impl = resolve_edge_impl(self.edge_impl, self.channel_sampling, self.primitives)
    if part in ('preprocess0', 'preprocess1'):
      index = int(part[-1])
      return self._preprocess_input(index, (s0, s1)[index], train, impl)
    if part != 'edges':
      if impl == 'grouped':
        s0, s1 = grouped_cell.preprocess(self, s0, s1, train)  # same ops, fewer matmuls
      else:
        s0, s1 = (self._preprocess_input(i, x, train, impl) for i, x in enumerate((s0, s1)))
      if part == 'preprocess':
        return s0, s1
    if edge_weights is None:
      edge_weights = jnp.ones(op_weights.shape[:1], op_weights.dtype)
    if impl == 'grouped':  # also serves op masks: an op once per stage for the edges keeping it
      return grouped_cell.grouped_edges(self, s0, s1, op_weights, edge_weights, train)
    if self.op_mask is not None:
      return self._masked_edges(s0, s1, op_weights, edge_weights, train)
    if impl == 'batched':
      return self._batched_edges(s0, s1, op_weights, edge_weights, train)
    c = self.channels
    inputs = jnp.stack([s0, s1])
    stride = 2 if self.reduction else 1
    n, h, w = s1.shape[0], s1.shape[1] // stride, s1.shape[2] // stride
    nodes = jnp.zeros((self.steps, n, h, w, c), s1.dtype)
    for (name, members), group_stride in zip(edge_groups(self.steps), (stride, 1)):
      edges, targets, sources = (np.array(v) for v in zip(*members))
      if name == 'node_edges':
        sources = sources - 2
      scan = _edge_scan(self.unroll_edges)(
          c, group_stride, self.partial_channels, self.primitives,
          self.depthwise_impl, self.axis_name, train,
          channel_sampling=self.channel_sampling, channel_mixing=self.channel_mixing,
          from_nodes=name == 'node_edges', name=name)
      nodes, _ = scan(nodes, (sources, targets, op_weights[edges],
                              edge_weights[edges]), inputs)
    return jnp.concatenate(list(nodes[-self.multiplier:]), axis=-1)


class SearchNetwork(nn.Module):
  """The PC-DARTS search network (CIFAR stem, or the stride-8 ImageNet stem)."""
  init_channels: int = 16
  num_classes: int = 10
  layers: int = 8
  steps: int = 4
  multiplier: int = 4
  stem_multiplier: int = 3
  partial_channels: int = 4
  edge_normalization: bool = True
  primitives: Sequence[str] = genotypes.PRIMITIVES
  stem: str = 'cifar'
  depthwise_impl: str = 'auto'
  unroll_edges: bool = False
  axis_name: Optional[str] = None
  channel_sampling: str = 'first'   # first | random ('channels' rng per apply) | reference_random
  channel_mixing: str = 'shuffle'   # shuffle | shift
  dtype: str = 'float32'            # activations; params, arch, BN stats and logits stay float32
  relaxation: str = 'softmax'       # softmax | dirichlet (DrNAS) | gumbel | gdas: relaxation.py
  # DrNAS progressive learning: {'normal': mask, 'reduce': mask} as nested
  # tuples (edges x ops, 1 = kept); pruned ops get no weight and are not built.
  op_masks: Optional[Any] = None
  edge_impl: str = 'auto'           # auto | batched | grouped | scan: see resolve_edge_impl
  merge_separable: bool = False     # grouped layout: depthwise + 1x1 convs as one dense conv
  # Runs of consecutive normal cells as one lax.scan over the cells' stacked
  # variables: the run's cell compiles once (spaces/cell_scan.py).
  scan_cells: bool = True

  def _arch(self, name, shape):
    init = lambda: 1e-3 * jax.random.normal(self.make_rng('params'), shape)
    return self.variable('arch', name, init).value

  def _stem(self, x, train):
    c = self.stem_multiplier * self.init_channels
    bn = lambda name: ops.batch_norm(train, True, name, self.axis_name)
    if self.stem == 'cifar':
      s = bn('stem_bn')(ops.conv(c, 3, 1, 1, 'stem_conv')(x))
      return s, s
    s0 = ops.conv(c // 2, 3, 2, 1, 'stem0_conv1')(x)
    s0 = nn.relu(bn('stem0_bn1')(s0))
    s0 = bn('stem0_bn2')(ops.conv(c, 3, 2, 1, 'stem0_conv2')(s0))
    s1 = bn('stem1_bn')(ops.conv(c, 3, 2, 1, 'stem1_conv')(nn.relu(s0)))
    return s0, s1

  @nn.compact
  def __call__(self, x, train: bool = True, temperature=1.0):
    """Logits. `temperature`: the Gumbel-softmax tau (gumbel relaxation only).
    The stochastic relaxations draw a fresh sample per call, for each cell type,
    from the 'relax' rng stream (without it: their mean / the plain softmax)."""
    num_edges = sum(i + 2 for i in range(self.steps))
    shape = (num_edges, len(self.primitives))
    alphas = {kind: self._arch(f'alphas_{kind}', shape) for kind in ('normal', 'reduce')}
    draw = self.has_rng(relaxation.RELAX_RNG) and not self.is_initializing()
    masks = dict(self.op_masks) if self.op_masks is not None else {}
    op_weights = {
        k: relaxation.mixing_weights(
            self.relaxation, a, self.make_rng(relaxation.RELAX_RNG) if draw else None,
            temperature, None if k not in masks else jnp.asarray(masks[k], a.dtype))
        for k, a in alphas.items()}
    edge_w = {'normal': None, 'reduce': None}
    if self.edge_normalization:
      for kind in ('normal', 'reduce'):
        edge_w[kind] = edge_normalization(self._arch(f'betas_{kind}', (num_edges,)),
                                          self.steps)

    x = ops.network_input(x, self.dtype)
    s0, s1 = self._stem(x, train)
    c_curr = self.init_channels
    reduction_prev = self.stem == 'imagenet'
    reductions = reduction_layers(self.layers)
    i = 0
    while i < self.layers:
      reduction = i in reductions
      if reduction:
        c_curr *= 2
      kind = 'reduce' if reduction else 'normal'
      cell = functools.partial(
          SearchCell, c_curr, reduction, reduction_prev, self.steps, self.multiplier,
          self.partial_channels, self.primitives, self.depthwise_impl, self.unroll_edges,
          self.axis_name, channel_sampling=self.channel_sampling,
          channel_mixing=self.channel_mixing,
          op_mask=dict(self.op_masks)[kind] if self.op_masks else None,
          edge_impl=self.edge_impl, merge_separable=self.merge_separable)
      # A normal cell whose s1 has its output's shape starts a run with the normal
      # cells after it: one compiled cell (cell_scan.py); the same variables.
      run = 1
      if (self.scan_cells and not reduction and not self.is_initializing()
          and s1.shape == s1.shape[:-1] + (self.multiplier * c_curr,)):
        while i + run < self.layers and i + run not in reductions:
          run += 1
      if run >= MIN_SCANNED_RUN:
        first = cell(parent=None)
        s0, s1 = cell_scan.scan_cell_run(
            self, first, first.clone(reduction_prev=False),
            [f'cell_{j}' for j in range(i, i + run)], s0, s1,
            args=(op_weights[kind], edge_w[kind], train), rng_name=CHANNEL_RNG)
      else:
        run = 1
        s0, s1 = s1, cell(name=f'cell_{i}')(s0, s1, op_weights[kind], edge_w[kind], train)
      reduction_prev = reduction
      i += run
    out = jnp.mean(s1.astype(jnp.promote_types(s1.dtype, jnp.float32)), axis=(1, 2))
    return nn.Dense(self.num_classes, kernel_init=initializers.kernel_init,
                    bias_init=initializers.bias_init_for(out.shape[-1]),
                    name='classifier')(out)


def reduction_layers(layers: int):
  return (layers // 3, 2 * layers // 3)


def build_supernet(config, axis_name: Optional[str] = None, partial_channels=None,
                   op_masks=None, depthwise_impl: Optional[str] = None) -> SearchNetwork:
  """The search supernet described by `config.model` (a search config or its model
  part); `partial_channels` and `op_masks` ({'normal': mask, 'reduce': mask},
  edges x ops, 1 = kept) override it for a stage of DrNAS progressive learning,
  `depthwise_impl` the form of its depthwise convolutions (the search passes
  the one its architect can differentiate: search.architect.depthwise_impl)."""
  model = config.model if hasattr(config, 'model') else config
  get = lambda name, default: config_fields.field(model, name, default)
  return SearchNetwork(
      init_channels=model.init_channels,
      num_classes=model.num_classes,
      layers=model.layers,
      steps=get('steps', 4),
      multiplier=get('multiplier', 4),
      stem_multiplier=get('stem_multiplier', 3),
      partial_channels=partial_channels or config_fields.partial_channels(model),
      edge_normalization=get('edge_normalization', True),
      primitives=tuple(get('primitives', genotypes.PRIMITIVES)),
      stem=get('stem', 'cifar'),
      depthwise_impl=depthwise_impl or get('depthwise_impl', 'auto'),
      unroll_edges=get('unroll_edges', False),
      axis_name=axis_name,
      channel_sampling=get('channel_sampling', 'first'),
      channel_mixing=get('channel_mixing', 'shuffle'),
      dtype=config_fields.model_dtype(model),
      relaxation=get('relaxation', 'softmax'),
      edge_impl=get('edge_impl', 'auto'),
      merge_separable=get('merge_separable', False),
      scan_cells=get('scan_cells', True),
      op_masks=None if op_masks is None else tuple(
          (kind, tuple(tuple(int(v) for v in row) for row in np.asarray(op_masks[kind])))
          for kind in ('normal', 'reduce')))
