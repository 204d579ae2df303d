"""The search cell's accelerator layout (`model.edge_impl='grouped'`).

The scanned cell runs its 14 edges one at a time, each a sequence of small ops
on C/K channels: tens of thousands of tiny kernels per step, which on a GPU cost
more in launches than in arithmetic. Here a cell runs as `steps` stages, one
per source: stage 0 the edges from the two cell inputs, stage i the edges from
node i - 1, which is complete by then. Within a stage every candidate op runs
once for all the edges that use it:

* Under `channel_sampling='first'` every edge from one source reads the same
  channel slice, so the parameter-free parts are shared exactly: the slice, its
  bypass (2x2 max-pooled at stride 2), the ReLU before the conv chains, the
  identity skip, and the two pools with their affine-free train-mode BatchNorm
  (the same input gives the same batch statistics; each edge's running
  averages still get their own update, so they evolve as in the scan).
* The conv chains (SepConv, DilConv) and the stride-2 skip (FactorizedReduce)
  have per-edge weights. Their edges are laid side by side on the channel axis
  (edge-major, as in batched_ops): a depthwise conv acts per channel unchanged
  (one per op: kernel sizes and dilations differ); the 1x1 convs of one layer
  of every chain op are one matmul batched over (op, edge) (no block-diagonal
  matrix) and their BatchNorms one normalization with per-edge statistics;
  FactorizedReduce's two 1x1 convs read the shared slice once per source, with
  the edges' kernels side by side, as one matmul batched over (source, half).
* The cell's preprocess ops (`preprocess`) are the scanned cell's with fewer
  matmuls: FactorizedReduce's halves as one, and the two 1x1 convs as one
  where s0 and s1 have one shape, their BatchNorms as one normalization.
* With `merge_separable` each chain layer's depthwise conv and 1x1 conv are
  one dense conv (kernel dw * pw, merged_kernels): the first layer of an op
  reads each source's ReLU once, all the source's edges as one conv C -> E * C
  (the sources with as many readers as one conv, a group each), the second
  SepConv layer is one conv with a group per edge. No depthwise conv is left,
  which GPUs run slowly; the step's FLOPs grow 2.7x (CIFAR search config), work
  for tensor cores.
* The mixing sums go straight into per-node accumulators (op part and bypass
  part apart, in float32 also for bfloat16 activations) in the scan's edge
  order, and a node is channel-shuffled once, when it completes: the shuffle is
  a permutation, so shuffling the sum equals summing the shuffled edges.

The variables are exactly the scanned cell's: parameters and statistics stacked
per edge under `input_edges` / `node_edges`, or, in a pruned stage of DrNAS
progressive learning (`op_mask`), each edge's own under `edge_{e}` as the
per-edge masked cell has them. A checkpoint therefore moves freely between the
layouts. In a pruned stage an op runs once for the edges of a stage that keep it.
"""

import dataclasses
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from pcdarts_jax.spaces.darts import batched_ops
from pcdarts_jax.spaces.darts import genotypes
from pcdarts_jax.nn import initializers
from pcdarts_jax.nn import ops
from pcdarts_jax.spaces.darts import cell_parts


@dataclasses.dataclass(frozen=True)
class Edge:
  """One edge of a cell, where its computation and its variables are."""
  index: int                 # e, the row of the cell's op weights
  source: int                # state index: 0, 1 the cell inputs, 2 + i node i
  target: int                # the node it feeds
  stride: int
  scope: str                 # module holding its variables
  position: Optional[int]    # its row in `scope`'s stacked variables; None: unstacked
  kept: Tuple[str, ...]      # its candidate ops (all of them unless pruned)


def cell_edges(steps: int, stride: int, primitives: Sequence[str],
               op_mask=None) -> List[Edge]:
  """The edges of a search cell in edge order, with their variables placed as
  the scanned cell places them (cell_parts.edge_groups), or, with `op_mask`
  (edges x ops, 1 = kept), as the masked per-edge cell does (`edge_{e}`)."""
  slots = {}
  for name, members in cell_parts.edge_groups(steps):
    for position, (e, _, _) in enumerate(members):
      slots[e] = (name, position)
  edges = []
  for node, (start, end) in enumerate(genotypes.node_edge_ranges(steps)):
    for j in range(end - start):
      e = start + j
      if op_mask is None:
        scope, position = slots[e]
        kept = tuple(primitives)
      else:
        scope, position = f'edge_{e}', None
        kept = tuple(p for p, on in zip(primitives, op_mask[e]) if on)
      edges.append(Edge(e, j, node, stride if j < 2 else 1, scope, position, kept))
  return edges


def stage_of(edge: Edge) -> int:
  """Stage 0 reads the cell inputs; stage i >= 1 reads node i - 1."""
  return max(edge.source - 1, 0)


def _runs(indices: Sequence[int]) -> List[Tuple[int, int]]:
  """[start, stop) runs of consecutive values in `indices`, in order."""
  runs: List[List[int]] = []
  for i in indices:
    if runs and runs[-1][1] == i:
      runs[-1][1] = i + 1
    else:
      runs.append([i, i + 1])
  return [(a, b) for a, b in runs]


def take_rows(x: jax.Array, indices: Sequence[int], axis: int = 0) -> jax.Array:
  """x's entries at the static `indices` along `axis`, as slices of their
  consecutive runs and one concatenate. Indexing with an array would be a
  gather, and its gradient a scatter-add: on a GPU a kernel of its own each,
  where slices and a concatenate fuse with what reads them."""
  indices = [int(i) for i in indices]
  if indices == list(range(x.shape[axis])):
    return x
  parts = [lax.slice_in_dim(x, a, b, axis=axis) for a, b in _runs(indices)]
  return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=axis)


def set_rows(x: jax.Array, indices: Sequence[int], values: jax.Array) -> jax.Array:
  """x with its rows at the static, distinct `indices` replaced by the rows of
  `values` (in that order): slices and one concatenate, not a scatter."""
  where = {int(p): i for i, p in enumerate(indices)}
  pieces: List[Tuple[jax.Array, int, int]] = []  # (source, start, stop)
  for p in range(x.shape[0]):
    source, row = (values, where[p]) if p in where else (x, p)
    if pieces and pieces[-1][0] is source and pieces[-1][2] == row:
      pieces[-1] = (source, pieces[-1][1], row + 1)
    else:
      pieces.append((source, row, row + 1))
  parts = [lax.slice_in_dim(source, a, b) for source, a, b in pieces]
  return parts[0] if len(parts) == 1 else jnp.concatenate(parts)


class _VariablesAt(nn.Module):
  """A level of the variable tree: `make(module)` runs in the module at
  `path` below this one, creating or reading its variables there. The levels
  are the scanned cell's modules (group or edge, op, op part)."""

  @nn.compact
  def __call__(self, path: Tuple[str, ...], make: Callable[[nn.Module], jax.Array]):
    if path:
      return _VariablesAt(name=path[0])(path[1:], make)
    return make(self)


class EdgeVariables:
  """Per-edge kernels and BatchNorm statistics of a cell's ops, for any subset
  of its edges, at the scanned cell's paths. Create it inside the cell's
  compact call."""

  def __init__(self, edges: Sequence[Edge], steps: int, axis_name: Optional[str],
               initializing: bool):
    self.axis_name = None if initializing else axis_name
    self._stacked = {name: len(members) for name, members in cell_parts.edge_groups(steps)}
    self._scopes = {}
    for edge in edges:  # in edge order, one module per scope
      if edge.scope not in self._scopes:
        self._scopes[edge.scope] = _VariablesAt(name=edge.scope)

  def _by_scope(self, edges):
    """(scope, edges) runs of consecutive edges sharing a scope."""
    runs = []
    for edge in edges:
      if runs and runs[-1][0] == edge.scope:
        runs[-1][1].append(edge)
      else:
        runs.append((edge.scope, [edge]))
    return runs

  def _rows(self, stacked: jax.Array, members: Sequence[Edge]) -> jax.Array:
    if members[0].position is None:
      return stacked[None]
    return take_rows(stacked, [m.position for m in members])

  def kernels(self, edges: Sequence[Edge], primitive: str, part: str,
              shape: Tuple[int, ...]) -> jax.Array:
    """(len(edges), *shape): the edges' `primitive/part/kernel` (float32)."""
    parts = []
    for scope, members in self._by_scope(edges):
      count = self._stacked.get(scope) if members[0].position is not None else None

      def make(module, count=count):
        if count is None:
          return module.param('kernel', initializers.kernel_init, shape, jnp.float32)
        return module.param('kernel', batched_ops.stacked_kernel_init, (count, *shape),
                            jnp.float32)

      parts.append(self._rows(self._scopes[scope]((primitive, part), make), members))
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts)

  def statistics(self, edges: Sequence[Edge], primitive: str, part: str, width: int,
                 batch: Optional[Tuple[jax.Array, jax.Array]] = None):
    """The edges' running mean and variance, (len(edges), width) each; with
    `batch` (mean, var) of that shape, first moved towards it as ops.BatchNorm
    does (only where batch_stats is mutable and not while initializing)."""
    means, variances, start = [], [], 0
    for scope, members in self._by_scope(edges):
      count = self._stacked.get(scope) if members[0].position is not None else None
      rows = slice(start, start + len(members))
      start += len(members)

      def make(module, count=count, members=members, rows=rows):
        shape = (width,) if count is None else (count, width)
        mean = module.variable('batch_stats', 'mean', jnp.zeros, shape, jnp.float32)
        var = module.variable('batch_stats', 'var', jnp.ones, shape, jnp.float32)
        if (batch is not None and not module.is_initializing()
            and module.is_mutable_collection('batch_stats')):
          for variable, values in zip((mean, var), batch):
            values = lax.stop_gradient(values[rows]).astype(jnp.float32)
            if count is None:
              new = ops.BN_MOMENTUM * variable.value + (1 - ops.BN_MOMENTUM) * values[0]
            else:
              index = [m.position for m in members]
              new = set_rows(variable.value, index,
                             ops.BN_MOMENTUM * take_rows(variable.value, index)
                             + (1 - ops.BN_MOMENTUM) * values)
            variable.value = new
        return self._rows(mean.value, members), self._rows(var.value, members)

      mean, var = self._scopes[scope]((primitive, part), make)
      means.append(mean)
      variances.append(var)
    return jnp.concatenate(means), jnp.concatenate(variances)

  def batch_norm(self, groups: Sequence[Tuple[Sequence[Edge], str, str]], x: jax.Array,
                 train: bool) -> jax.Array:
    """Affine-free BatchNorm of the folded x, (N, H, W, E * width) with the
    edges of `groups` [(edges, primitive, part)] side by side in that order,
    each edge with its own statistics (as each edge's ops.BatchNorm in the scan)."""
    count = sum(len(edges) for edges, _, _ in groups)
    width = x.shape[-1] // count
    if train:
      y, mean, var = ops.batch_normalize(x, ops.BN_EPSILON, self.axis_name)
      mean, var = mean.reshape(count, width), var.reshape(count, width)
      start = 0
      for edges, primitive, part in groups:
        rows = slice(start, start + len(edges))
        start += len(edges)
        self.statistics(edges, primitive, part, width, (mean[rows], var[rows]))
      return y
    means, variances = zip(*(self.statistics(edges, primitive, part, width)
                             for edges, primitive, part in groups))
    return _normalize_with(x, jnp.concatenate(means).reshape(-1),
                           jnp.concatenate(variances).reshape(-1))

  def shared_batch_norm(self, edges: Sequence[Edge], primitive: str, x: jax.Array,
                        train: bool) -> jax.Array:
    """`primitive/bn` of edges that all see the same (N, H, W, width) x: in
    train mode one normalization and the same batch statistics for every edge,
    (N, H, W, 1, width); in eval mode each edge's running statistics,
    (N, H, W, E, width)."""
    count, width = len(edges), x.shape[-1]
    if train:
      y, mean, var = ops.batch_normalize(x, ops.BN_EPSILON, self.axis_name)
      self.statistics(edges, primitive, 'bn', width,
                      (jnp.broadcast_to(mean, (count, width)),
                       jnp.broadcast_to(var, (count, width))))
      return y[..., None, :]
    mean, var = self.statistics(edges, primitive, 'bn', width)
    return _normalize_with(x[..., None, :], mean, var)


def _normalize_with(x, mean, var):
  """(x - mean) / sqrt(var + eps) with running statistics, as nn.BatchNorm does
  in eval mode, in x's dtype."""
  dtype = jnp.promote_types(x.dtype, jnp.float32)
  y = (x.astype(dtype) - mean.astype(dtype)) * lax.rsqrt(var.astype(dtype) + ops.BN_EPSILON)
  return y.astype(x.dtype)


def edge_pointwise(x: jax.Array, kernels: jax.Array) -> jax.Array:
  """Per-edge 1x1 convs of the folded x (N, H, W, E * C_in) with kernels
  (E, 1, 1, C_in, C_out): one matmul batched over the edges."""
  count = kernels.shape[0]
  y = jnp.einsum('mei,eio->meo', x.reshape(-1, count, x.shape[-1] // count),
                 kernels[:, 0, 0].astype(x.dtype))
  return y.reshape(*x.shape[:-1], -1)


def shared_pointwise(x: jax.Array, kernels: jax.Array, stride: int) -> jax.Array:
  """The 1x1 convs (E, 1, 1, C_in, C_out) of E edges that read the same x
  (N, H, W, C_in), at `stride`: one matmul with the kernels side by side.
  Returns (N, H', W', E, C_out)."""
  count, _, _, c_in, c_out = kernels.shape
  x = x[:, ::stride, ::stride, :]
  side_by_side = jnp.moveaxis(kernels[:, 0, 0], 0, 1).reshape(c_in, count * c_out)
  y = jnp.dot(x.reshape(-1, c_in), side_by_side.astype(x.dtype))
  return y.reshape(*x.shape[:-1], count, c_out)


def _conv(x, kernel, stride, padding, dilation, groups):
  return lax.conv_general_dilated(
      x, kernel.astype(x.dtype), window_strides=(stride, stride),
      padding=ops.padding_pairs(padding), rhs_dilation=(dilation, dilation),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=groups)


def _side_by_side(kernels: jax.Array) -> jax.Array:
  """(E, k, k, C, C_out) -> (k, k, C, E * C_out), edge-major outputs."""
  count, k, _, c, c_out = kernels.shape
  return jnp.moveaxis(kernels, 0, 3).reshape(k, k, c, count * c_out)


def edge_depthwise(x: jax.Array, kernels: jax.Array, stride: int, padding: int,
                   dilation: int, impl: str, relu_input: bool) -> jax.Array:
  """Per-edge depthwise convs of the folded x (N, H, W, E * C) with kernels
  (E, k, k, 1, C): one depthwise conv over all E * C channels (ops.depthwise),
  except that `dense` (a dense conv with a diagonal kernel, a fast compile for
  tiny widths on CPU) stays per edge, a conv of E groups: a dense kernel across
  all the edges' channels would cost E times the scan's FLOPs."""
  if ops.resolve_depthwise_impl(impl, x.dtype) != 'dense':
    return ops.depthwise(x, _side_by_side(kernels).astype(x.dtype), stride, padding, dilation,
                         impl, relu_input=relu_input)
  if relu_input:
    x = ops.relu(x)
  width = kernels.shape[-1]
  dense = kernels[..., 0, :, None] * jnp.eye(width, dtype=kernels.dtype)  # (E, k, k, C, C)
  return _conv(x, _side_by_side(dense), stride, padding, dilation, kernels.shape[0])


def _chain_layers(primitive: str):
  """(depthwise, 1x1, BatchNorm part names, kernel size, padding, dilation, strided)
  per ReLU -> depthwise -> 1x1 -> BatchNorm layer of a conv op (ops.SepConv,
  ops.DilConv)."""
  k = int(primitive[-1])
  if primitive.startswith('sep_conv_'):
    return (('dw1', 'pw1', 'bn1', k, k // 2, 1, True),
            ('dw2', 'pw2', 'bn2', k, k // 2, 1, False))
  return (('dw', 'pw', 'bn', k, k - 1, 2, True),)


class _Stage:
  """The shared inputs of one stage: the sources' op slices, their ReLUs and bypasses."""

  def __init__(self, states, members: Sequence[Edge], width: int, partial_channels: int):
    self.members = members
    self.stride = members[0].stride
    self.width = width  # of the op slices
    self.x = {}
    self.bypass = {}
    self._relu = {}
    for edge in members:
      s = edge.source
      if s in self.x:
        continue
      self.x[s] = states[s][..., :width] if partial_channels > 1 else states[s]
      if partial_channels > 1:
        rest = states[s][..., width:]
        self.bypass[s] = cell_parts.max_pool_2x2(rest) if self.stride == 2 else rest

  def relu(self, source: int) -> jax.Array:
    if source not in self._relu:
      self._relu[source] = ops.relu(self.x[source])
    return self._relu[source]


def _on_edges(members: Sequence[Edge], users: Sequence[Edge], y: jax.Array) -> jax.Array:
  """An op's output for its users, (N, H', W', len(users), width), laid on
  `members` (zeros for the edges that pruned the op)."""
  if len(users) == len(members):
    return y
  rows = {edge.index: i for i, edge in enumerate(users)}
  zeros = jnp.zeros_like(y[..., 0, :])
  return jnp.stack([y[..., rows[edge.index], :] if edge.index in rows else zeros
                    for edge in members], axis=-2)


def _per_source_on_edges(members: Sequence[Edge], users: Sequence[Edge],
                         per_source: Dict[int, jax.Array]) -> jax.Array:
  """An op output computed per source, (N, H', W', R, width) with one row per
  user of that source in edge order, or R = 1 when all its users share it, laid
  on `members` (zeros for the edges that pruned the op)."""
  if len(per_source) == 1 and len(users) == len(members):
    return next(iter(per_source.values()))
  by_edge, row = {}, {}
  for edge in users:
    y = per_source[edge.source]
    i = row.setdefault(edge.source, 0)
    row[edge.source] += 1
    by_edge[edge.index] = y[..., i if y.shape[-2] > 1 else 0, :]
  zeros = jnp.zeros_like(next(iter(by_edge.values())))
  return jnp.stack([by_edge.get(edge.index, zeros) for edge in members], axis=-2)


def merged_kernels(depthwise: jax.Array, pointwise: jax.Array) -> jax.Array:
  """One dense k x k kernel per edge for a depthwise conv followed by a 1x1
  conv: (E, k, k, 1, C) and (E, 1, 1, C, C_out) -> (E, k, k, C, C_out),
  K[e, i, j, c, o] = dw[e, i, j, 0, c] * pw[e, 0, 0, c, o]. Both convs are
  linear with nothing between them, so one conv with K is the pair; autodiff
  through the product gives each kernel its own gradient."""
  return depthwise[:, :, :, 0, :, None] * pointwise[:, 0, 0][:, None, None]


def _source_groups(users: Sequence[Edge]) -> List[List[Tuple[int, List[Edge]]]]:
  """The edges of `users` by source, the sources with as many readers together:
  [[(source, its readers in edge order), ...], ...], fewest readers first, the
  sources of a group in order."""
  readers: Dict[int, List[Edge]] = {}
  for edge in users:
    readers.setdefault(edge.source, []).append(edge)
  groups: Dict[int, List[Tuple[int, List[Edge]]]] = {}
  for source in sorted(readers):
    groups.setdefault(len(readers[source]), []).append((source, readers[source]))
  return [groups[count] for count in sorted(groups)]


def _merged_first_layer(stage: _Stage, groups, kernels: jax.Array, stride: int,
                        padding: int, dilation: int) -> jax.Array:
  """The first ReLU -> depthwise -> 1x1 layer of an op's edges as dense convs
  with merged kernels (E, k, k, C, C) in `groups`' edge order (_source_groups):
  every edge of a source reads the same ReLU, so a source's edges are one conv
  C -> E_s * C, and the sources with as many readers one conv with a group per
  source. Returns the folded (N, H', W', E * C)."""
  outputs, row = [], 0
  for group in groups:
    rows = sum(len(readers) for _, readers in group)  # the group's edges, source-major
    kernel = _side_by_side(kernels[row:row + rows])
    row += rows
    x = jnp.concatenate([stage.relu(source) for source, _ in group], axis=-1)
    outputs.append(_conv(x, kernel, stride, padding, dilation, len(group)))
  return outputs[0] if len(outputs) == 1 else jnp.concatenate(outputs, axis=-1)


def _conv_chains(stage: _Stage, variables: EdgeVariables,
                 chains: Sequence[Tuple[str, Sequence[Edge]]], depthwise_impl: str,
                 train: bool, merge_separable: bool = False) -> Dict[str, jax.Array]:
  """The SepConv and DilConv ops of a stage, [(primitive, its edges)]:
  {primitive: (N, H', W', E, width)}. Layer by layer (ReLU -> depthwise -> 1x1
  -> BatchNorm), one depthwise conv per op (their kernel sizes and dilations
  differ), then the 1x1 convs of every op and edge as one edge-batched matmul
  and their BatchNorms as one normalization.

  `merge_separable`: each depthwise conv and its 1x1 conv as one dense conv
  (merged_kernels), a GPU's tensor-core form. The first layer then reads each
  source's ReLU once (_merged_first_layer), the second is a conv with a group
  per edge. The edges run source by source and are put back in edge order at
  the end."""
  chains = [(p, users) for p, users in chains if users]
  width = stage.width
  groups = {p: _source_groups(users) for p, users in chains}
  order = {p: ([edge for group in groups[p] for _, edges in group for edge in edges]
               if merge_separable else list(users)) for p, users in chains}
  x = {} if merge_separable else {
      p: batched_ops.fold(jnp.stack([stage.relu(edge.source) for edge in users], axis=-2))
      for p, users in chains}
  for layer in range(max((len(_chain_layers(p)) for p, _ in chains), default=0)):
    active = [p for p, _ in chains if len(_chain_layers(p)) > layer]
    outputs, pointwise_kernels, norms = [], [], []
    for p in active:
      dw, pw, bn, k, padding, dilation, strided = _chain_layers(p)[layer]
      edges, stride = order[p], stage.stride if strided else 1
      depthwise = variables.kernels(edges, p, dw, (k, k, 1, width))
      pointwise = variables.kernels(edges, p, pw, (1, 1, width, width))
      norms.append((edges, p, bn))
      if not merge_separable:
        # The first layer's ReLU is the shared one; the second's is inside the
        # depthwise form, as in ops.SepConv.
        outputs.append(edge_depthwise(x[p], depthwise, stride, padding, dilation,
                                      depthwise_impl, relu_input=layer > 0))
        pointwise_kernels.append(pointwise)
      elif layer == 0:
        outputs.append(_merged_first_layer(stage, groups[p], merged_kernels(depthwise, pointwise),
                                           stride, padding, dilation))
      else:
        outputs.append(_conv(ops.relu(x[p]), _side_by_side(merged_kernels(depthwise, pointwise)),
                             stride, padding, dilation, len(edges)))
    y = jnp.concatenate(outputs, axis=-1)
    if not merge_separable:
      y = edge_pointwise(y, jnp.concatenate(pointwise_kernels))
    y = variables.batch_norm(norms, y, train)
    ends = np.cumsum([len(order[p]) * width for p in active])
    for p, part in zip(active, jnp.split(y, ends[:-1], axis=-1)):
      x[p] = part
  result = {}
  for p, users in chains:
    y = batched_ops.unfold(x[p], len(users))
    if order[p] != list(users):  # back to edge order
      rows = {edge.index: i for i, edge in enumerate(order[p])}
      y = take_rows(y, [rows[edge.index] for edge in users], axis=-2)
    result[p] = y
  return result


def _strided_halves(r: jax.Array) -> List[jax.Array]:
  """FactorizedReduce's two stride-2 1x1 conv inputs as slices: the even pixels
  of r and of r shifted by one pixel (ops.pixel_shifted)."""
  return [r[:, ::2, ::2, :], ops.pixel_shifted(r)[:, ::2, ::2, :]]


def _factorized_reduce_per_source(stage: _Stage, variables: EdgeVariables,
                                  users: Sequence[Edge], half: int) -> Dict[int, jax.Array]:
  """The stride-2 skips (FactorizedReduce's two 1x1 convs, before its
  BatchNorm) of the edges `users`, per source: {source: (N, H/2, W/2, E, 2 *
  half)} for its E readers, each edge's halves side by side. The sources with
  as many readers (_source_groups) run as one matmul batched over (source,
  half): each half reads its strided (and for the second, pixel-shifted) slice
  once, with its readers' kernels side by side."""
  per_source = {}
  for group in _source_groups(users):
    count = len(group[0][1])
    halves, kernels = [], []
    for source, readers in group:
      r = stage.relu(source)
      halves += _strided_halves(r)
      for part in ('conv_1', 'conv_2'):
        k = variables.kernels(readers, 'skip_connect', part,
                              (1, 1, r.shape[-1], half))[:, 0, 0]  # (E, C_in, half)
        kernels.append(jnp.moveaxis(k, 0, 1).reshape(r.shape[-1], count * half))
    y = edge_pointwise(jnp.concatenate(halves, axis=-1), jnp.stack(kernels)[:, None, None])
    lead = y.shape[:-1]
    y = jnp.swapaxes(y.reshape(*lead, len(group), 2, count, half), -3, -2)
    y = y.reshape(*lead, len(group), count, 2 * half)
    for i, (source, _) in enumerate(group):
      per_source[source] = y[..., i, :, :]
  return per_source


def _stage_op_outputs(stage: _Stage, variables: EdgeVariables, primitives: Sequence[str],
                      depthwise_impl: str, train: bool,
                      merge_separable: bool = False) -> List[Tuple[int, jax.Array]]:
  """[(op index, its output on the stage's edges, (N, H', W', E or 1, width))]
  in op order, each op computed once for all the stage's edges that keep it."""
  outputs = []
  s = stage.stride
  chains = _conv_chains(stage, variables, [
      (p, [edge for edge in stage.members if p in edge.kept]) for p in primitives
      if p.startswith(('sep_conv_', 'dil_conv_'))], depthwise_impl, train, merge_separable)
  for op_index, p in enumerate(primitives):
    users = [edge for edge in stage.members if p in edge.kept]
    if p == 'none' or not users:  # `none` contributes exact zeros.
      continue
    sources = sorted({edge.source for edge in users})
    if p in ('max_pool_3x3', 'avg_pool_3x3'):
      per_source = {}
      for source in sources:
        readers = [edge for edge in users if edge.source == source]
        pooled = ops.pool_3x3(stage.x[source], p[:3], s, depthwise_impl)
        per_source[source] = variables.shared_batch_norm(readers, p, pooled, train)
      outputs.append((op_index, _per_source_on_edges(stage.members, users, per_source)))
      continue
    if p == 'skip_connect' and s == 1:
      per_source = {source: stage.x[source][..., None, :] for source in sources}
      outputs.append((op_index, _per_source_on_edges(stage.members, users, per_source)))
      continue
    if p == 'skip_connect':  # FactorizedReduce per edge, both convs reading the shared slice
      width = stage.x[sources[0]].shape[-1]
      if width % 2:
        raise ValueError(
            f'FactorizedReduce needs an even channel count, got {width}.')
      per_source = _factorized_reduce_per_source(stage, variables, users, width // 2)
      if len(sources) > 1:  # the users' rows in edge order
        y = _per_source_on_edges(users, users, per_source)
      else:
        y = per_source[sources[0]]
      y = variables.batch_norm([(users, p, 'bn')], batched_ops.fold(y), train)
      y = batched_ops.unfold(y, len(users))
    elif p in chains:
      y = chains[p]
    else:
      raise ValueError(f'model.edge_impl=grouped has no form of {p!r}; grouped primitives: '
                       f'{cell_parts.GROUPED_PRIMITIVES}.')
    outputs.append((op_index, _on_edges(stage.members, users, y)))
  return outputs


def _bn_statistics(module: _VariablesAt, width: int,
                   batch: Optional[Tuple[jax.Array, jax.Array]] = None):
  """ops.running_statistics of `module`'s BatchNorm (`bn`, as ops.batch_norm
  names it)."""
  return module(('bn',), lambda m: ops.running_statistics(m, width, batch))


def _normalize_blocks(modules: Sequence[_VariablesAt], y: jax.Array, train: bool,
                      axis_name: Optional[str]) -> jax.Array:
  """Affine-free BatchNorm of y (N, H, W, M * C) whose M channel blocks are the
  outputs of M modules, each with its own `bn` statistics: one normalization
  (the statistics are per channel, so the same as M)."""
  width = y.shape[-1] // len(modules)
  if train:
    y, mean, var = ops.batch_normalize(y, ops.BN_EPSILON, axis_name)
    for i, module in enumerate(modules):
      block = slice(i * width, (i + 1) * width)
      _bn_statistics(module, width, (mean[block], var[block]))
    return y
  means, variances = zip(*(_bn_statistics(module, width) for module in modules))
  return _normalize_with(y, jnp.concatenate(means), jnp.concatenate(variances))


def _axis_name(cell) -> Optional[str]:
  """The device axis `cell`'s BatchNorms average over (none while initializing)."""
  return None if cell.is_initializing() else cell.axis_name


def _preprocess_kernel(module: _VariablesAt, part: str, shape) -> jax.Array:
  return module((part,), lambda m: m.param('kernel', initializers.kernel_init, shape,
                                           jnp.float32))


def _relu_conv_bn(cell, module: _VariablesAt, x: jax.Array, train: bool) -> jax.Array:
  """One ReLUConvBN of `cell` by itself, its variables under `module`."""
  c = cell.channels
  r = ops.relu(x)
  y = jnp.dot(r.reshape(-1, r.shape[-1]),
              _preprocess_kernel(module, 'conv', (1, 1, r.shape[-1], c))[0, 0].astype(r.dtype))
  return _normalize_blocks([module], y.reshape(*r.shape[:-1], c), train, _axis_name(cell))


def _factorized_reduce(cell, module: _VariablesAt, x: jax.Array, train: bool) -> jax.Array:
  """FactorizedReduce of `cell` (its two 1x1 convs as one matmul batched over the
  two), its variables under `module`."""
  c = cell.channels
  if c % 2:
    raise ValueError(f'FactorizedReduce needs an even channel count, got {c}.')
  kernels = jnp.stack([_preprocess_kernel(module, part, (1, 1, x.shape[-1], c // 2))
                       for part in ('conv_1', 'conv_2')])
  y = edge_pointwise(jnp.concatenate(_strided_halves(ops.relu(x)), -1), kernels)
  return _normalize_blocks([module], y, train, _axis_name(cell))


def preprocess_input(cell, index: int, x: jax.Array, train: bool) -> jax.Array:
  """`cell`'s preprocess{index} alone, on x, as `preprocess` computes it where
  the two inputs differ in shape."""
  module = _VariablesAt(name=f'preprocess{index}')
  if index == 0 and cell.reduction_prev:
    return _factorized_reduce(cell, module, x, train)
  return _relu_conv_bn(cell, module, x, train)


def preprocess(cell, s0: jax.Array, s1: jax.Array, train: bool) -> Tuple[jax.Array, jax.Array]:
  """The preprocess ops of `cell` (a supernet.SearchCell, from inside its
  compact call), as its own ops.ReLUConvBN (FactorizedReduce for s0 after a
  reduction cell) compute them, with their variables at the same paths, in
  fewer matmuls: FactorizedReduce's two 1x1 convs as one batched over the two;
  the two ReLUConvBNs, where s0 and s1 have one shape, as one (batched over
  the two, or with the kernels side by side where both read one tensor: the
  CIFAR stem's output) and their BatchNorms as one normalization."""
  c = cell.channels
  modules = [_VariablesAt(name=f'preprocess{i}') for i in range(2)]

  if cell.reduction_prev:
    s0 = _factorized_reduce(cell, modules[0], s0, train)
  elif s0 is s1 or s0.shape == s1.shape:
    kernels = jnp.stack([_preprocess_kernel(module, 'conv', (1, 1, s1.shape[-1], c))
                         for module in modules])
    if s0 is s1:
      y = batched_ops.fold(shared_pointwise(ops.relu(s1), kernels, 1))
    else:
      y = edge_pointwise(jnp.concatenate([ops.relu(s0), ops.relu(s1)], -1), kernels)
    y = _normalize_blocks(modules, y, train, _axis_name(cell))
    return y[..., :c], y[..., c:]
  else:
    s0 = _relu_conv_bn(cell, modules[0], s0, train)
  return s0, _relu_conv_bn(cell, modules[1], s1, train)


def grouped_edges(cell, s0: jax.Array, s1: jax.Array, op_weights: jax.Array,
                  edge_weights: jax.Array, train: bool) -> jax.Array:
  """The edges of `cell` (a supernet.SearchCell, from inside its compact call)
  on its preprocessed inputs: the concatenation of its last `multiplier` nodes."""
  k = cell.partial_channels
  width = cell.channels // k
  stride = 2 if cell.reduction else 1
  edges = cell_edges(cell.steps, stride, cell.primitives, cell.op_mask)
  variables = EdgeVariables(edges, cell.steps, cell.axis_name, cell.is_initializing())
  dtype = s1.dtype
  # The mixing sums in float32 even for bfloat16 activations: the softmaxed
  # weights of the ops differ by less than bfloat16 resolves near 1/8.
  acc_dtype = jnp.promote_types(dtype, jnp.float32)
  n, h, w = s1.shape[0], s1.shape[1] // stride, s1.shape[2] // stride
  op_sums: List[Optional[jax.Array]] = [None] * cell.steps
  bypass_sums: List[Optional[jax.Array]] = [None] * cell.steps
  states = [s0, s1]
  for index in range(cell.steps):
    members = [edge for edge in edges if stage_of(edge) == index]
    stage = _Stage(states, members, width, k)
    rows = [edge.index for edge in members]
    scale = take_rows(edge_weights, rows).astype(acc_dtype)
    stage_weights = take_rows(op_weights, rows)
    # sum over ops of weight * output, for all the stage's edges at once
    mixed = None
    for op_index, y in _stage_op_outputs(stage, variables, cell.primitives,
                                         cell.depthwise_impl, train, cell.merge_separable):
      term = stage_weights[:, op_index].astype(acc_dtype)[:, None] * y.astype(acc_dtype)
      mixed = term if mixed is None else mixed + term
    if mixed is not None:
      mixed = scale[:, None] * mixed
    for i, edge in enumerate(members):  # edge order: each node sums its edges as the scan does
      t = edge.target
      if mixed is not None:
        out = mixed[..., i, :]
        op_sums[t] = out if op_sums[t] is None else op_sums[t] + out
      if k > 1:
        bypass = scale[i] * stage.bypass[edge.source].astype(acc_dtype)
        bypass_sums[t] = bypass if bypass_sums[t] is None else bypass_sums[t] + bypass
    # Node `index` has all its edges now (its last one reads node index - 1).
    node = op_sums[index]
    if node is None:  # only `none` on its edges
      node = jnp.zeros((n, h, w, width), acc_dtype)
    if k > 1:
      node = cell_parts.mix_channels(jnp.concatenate([node, bypass_sums[index]], -1),
                                   cell.channel_mixing, k)
    states.append(node.astype(dtype))
  return jnp.concatenate(states[-cell.multiplier:], axis=-1)
