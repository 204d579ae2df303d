"""DrNAS progressive learning (Chen et al. ICLR 2021,
github.com/xiangning-chen/DrNAS): the search runs in stages; at each boundary
the ops of every edge are pruned to the top-n by the arch parameters and the
partial-channel ops widen from C/k_old to C/k_new channels.

Config (all three the same length; empty = one stage of model.partial_channels
and every op):
  search.stage_epochs            e.g. (25, 25); must sum to search.epochs
  search.stage_partial_channels  k per stage, non-increasing, e.g. (6, 4)
  search.stage_ops               ops kept per edge, non-increasing, e.g. (7, 4)

At a boundary (outside jit): the masks come from the arch values; every op's
weights, BatchNorm statistics and SGD momentum buffers widen by copying randomly
chosen existing channels (Net2Wider: a copied input channel's weights are
divided by its number of copies, so a widened op fed the widened input computes
the widened output). The arch values, the arch optimizer state, the step and
the cosine schedule carry on; arch steps restart after `search.arch_start_epoch`
epochs of each stage. Each stage compiles once.
"""

import dataclasses
import functools
from typing import Dict, List, Optional, Tuple

import jax
import numpy as np
import optax

from pcdarts_jax.run import config_fields
from pcdarts_jax.spaces.darts import genotypes
from pcdarts_jax.spaces.darts import cell_parts
from pcdarts_jax.spaces.darts import space as darts_space
from pcdarts_jax.spaces.nb201 import space as nb201_space


# search.widen: how ops widen at a stage boundary (see transfer).
WIDEN_RULES = ('net2wider', 'reference')


@dataclasses.dataclass(frozen=True)
class Stage:
  index: int
  start_epoch: int
  epochs: int
  partial_channels: int
  ops_kept: int


def stages(config) -> List[Stage]:
  s, m = config.search, config.model
  epochs = tuple(s.stage_epochs or ())
  if not epochs:
    return [Stage(0, 0, s.epochs, config_fields.partial_channels(m),
                  len(_primitives(config)))]
  out, start = [], 0
  for i, (n, k, ops) in enumerate(zip(epochs, s.stage_partial_channels, s.stage_ops)):
    out.append(Stage(i, start, n, k, ops))
    start += n
  return out


def stage_of_epoch(config, epoch: int) -> Stage:
  for stage in reversed(stages(config)):
    if epoch >= stage.start_epoch:
      return stage
  raise ValueError(f'epoch {epoch} precedes the first stage.')


def _primitives(config) -> Tuple[str, ...]:
  if config_fields.space(config.model) == 'nb201':
    return nb201_space.PRIMITIVES
  return tuple(config.model.get('primitives', genotypes.PRIMITIVES))


def widen_index(rng: np.random.Generator, old: int, new: int) -> np.ndarray:
  """Channel sources of a widened op: the old channels, then random copies."""
  if new < old:
    raise ValueError(f'cannot narrow an op from {old} to {new} channels.')
  return np.concatenate([np.arange(old), rng.integers(0, old, new - old)])


def widen_leaf(value: np.ndarray, index: np.ndarray, old: int) -> np.ndarray:
  """Widens every axis of size `old` among the last two (conv kernels HWIO:
  input then output channels; BatchNorm vectors: the channel axis). An input
  axis (second to last of a >= 2-d kernel) is divided by the copy counts."""
  value = np.asarray(value)
  counts = np.bincount(index, minlength=old).astype(value.dtype)
  if value.ndim >= 2 and value.shape[-2] == old and old > 1:
    value = np.take(value, index, axis=-2) / counts[index][:, None]
  if value.shape[-1] == old:
    value = np.take(value, index, axis=-1)
  return value


def widen_op(tree, primitive: str, stride: int, index: np.ndarray, old: int):
  """One op's params (or statistics, or momentum) from `old` to len(index)
  channels. Fed x[..., index], the widened op computes y[..., index]; for the
  stride-2 skip (two half-width convs, concatenated) y[..., output_index(...)]."""
  if primitive == 'skip_connect' and stride == 2:
    half_old = old // 2
    half = index[:len(index) // 2] % half_old
    full = output_index(primitive, stride, index, old)

    def fr(path, leaf):
      name = path[0].key if hasattr(path[0], 'key') else ''
      if name == 'bn':
        return widen_leaf(leaf, full, old)
      # conv_1 / conv_2: input C (copy and divide), output C/2 (copy).
      leaf = np.asarray(leaf)
      counts = np.bincount(index, minlength=old).astype(leaf.dtype)
      leaf = np.take(leaf, index, axis=-2) / counts[index][:, None]
      return np.take(leaf, half, axis=-1)
    return jax.tree_util.tree_map_with_path(fr, tree)
  return jax.tree.map(lambda leaf: widen_leaf(leaf, index, old), tree)


def output_index(primitive: str, stride: int, index: np.ndarray, old: int) -> np.ndarray:
  """Which old output channel each widened output channel copies."""
  if primitive == 'skip_connect' and stride == 2:
    half = index[:len(index) // 2] % (old // 2)
    return np.concatenate([half, half + old // 2])
  return index


def _edge_trees(cell_tree, edge: int, steps: int):
  """One edge's op subtrees from a cell: per-edge (`edge_{e}`) or scanned layout."""
  if f'edge_{edge}' in cell_tree:
    return cell_tree[f'edge_{edge}']
  group, pos = cell_parts.edge_slot(edge, steps)
  return jax.tree.map(lambda leaf: np.asarray(leaf)[pos], cell_tree.get(group, {}))


def _reference_layer_indices(layer: str, primitive: str, stride: int, draw, old: int):
  """(input index or None, output index) of one layer of an op under DrNAS's own
  widening (`wider` in its operations.py): every layer draws its output channels
  anew; a 1x1 conv's input follows the depthwise conv before it; a BatchNorm
  follows the conv before it (the pools' their own draw); the stride-2 skip's
  two half-width convs draw their input and output each, and its BatchNorm
  appends the two output draws' extra channels, as the reference does."""
  suffix = layer[len(layer.rstrip('0123456789')):]
  chained = primitive.startswith(('sep_conv', 'dil_conv'))
  if primitive == 'skip_connect' and stride == 2:
    if layer in ('conv_1', 'conv_2'):
      return draw(layer + '/in', old), draw(layer + '/out', old // 2)
    extra = [draw(f'conv_{i}/out', old // 2)[old // 2:] for i in (1, 2)]
    return None, np.concatenate([np.arange(old), *extra])
  if layer.startswith('dw'):
    return None, draw(f'dw{suffix}/out', old)
  if layer.startswith('pw'):
    return draw(f'dw{suffix}/out', old), draw(f'pw{suffix}/out', old)
  if layer.startswith('bn'):
    if chained:
      return None, draw(f'pw{suffix}/out', old)
    if 'conv' in primitive:  # ReLUConvBN ops (NAS-Bench-201's nor_conv)
      return None, draw('conv/out', old)
    return None, draw(f'{layer}/out', old)
  return draw(f'{layer}/in', old), draw(f'{layer}/out', old)


def reference_widen_op(tree, primitive: str, stride: int, draw, old: int):
  """One op's params (or statistics, or momentum) from `old` channels wider,
  copying channels without dividing (`search.widen='reference'`): not function
  preserving. `draw(role, size)` returns the index of a layer role, the same
  for every tree of one state."""
  def widen(path, leaf):
    layer = path[0].key
    leaf = np.asarray(leaf)
    in_index, out_index = _reference_layer_indices(layer, primitive, stride, draw, old)
    if in_index is not None and leaf.ndim >= 2 and leaf.shape[-2] == old:
      leaf = np.take(leaf, in_index, axis=-2)
    if leaf.shape[-1] < len(out_index):  # the layer's old output channels
      leaf = np.take(leaf, out_index, axis=-1)
    return leaf
  return jax.tree_util.tree_map_with_path(widen, tree)


def transfer(old_tree, new_shapes, model_old, model_new, rng: np.random.Generator,
             channel_index: Optional[Dict[Tuple[int, int], np.ndarray]] = None,
             space=None, rule: str = 'net2wider'):
  """Maps a params / batch_stats / momentum tree of `model_old` onto the layout
  of `model_new` (a later stage): kept ops widened, pruned ops dropped, other
  weights copied. `channel_index` {(cell, edge): index} shares one widening
  draw between the trees of one state (weights, statistics, momentum). `space`
  (default DARTS) gives each cell's channels and each edge's stride. `rule`
  (search.widen): 'net2wider', one draw per edge and copies divided (function
  preserving), or 'reference', DrNAS's draw per layer without division."""
  if rule not in WIDEN_RULES:
    raise ValueError(f'search.widen={rule!r} is not one of {WIDEN_RULES}.')
  if space is None:
    space = darts_space
  channel_index = {} if channel_index is None else channel_index
  steps = getattr(model_new, 'steps', 4)
  out = {}
  for name, subtree in new_shapes.items():
    if not name.startswith('cell_'):
      out[name] = jax.tree.map(np.asarray, old_tree[name])
      continue
    cell = int(name.split('_')[1])
    c = space.cell_channels(model_new, cell)
    old_width, new_width = c // model_old.partial_channels, c // model_new.partial_channels
    cell_out = {}
    for part, shapes in subtree.items():
      if not part.startswith('edge_'):
        cell_out[part] = jax.tree.map(np.asarray, old_tree[name][part])
        continue
      edge = int(part.split('_')[1])
      stride = space.edge_stride(model_new, cell, edge)
      ops = _edge_trees(old_tree[name], edge, steps)
      if rule == 'reference':
        def draw(role, old, op=None, cell=cell, edge=edge, k=model_old.partial_channels,
                 k_new=model_new.partial_channels):
          key = (cell, edge, op, role)
          if key not in channel_index:
            channel_index[key] = widen_index(rng, old, old * k // k_new)
          return channel_index[key]
        cell_out[part] = {
            op: reference_widen_op(ops[op], op, stride, functools.partial(draw, op=op),
                                   old_width)
            for op in shapes}
        continue
      key = (cell, edge)
      if key not in channel_index:
        channel_index[key] = widen_index(rng, old_width, new_width)
      cell_out[part] = {op: widen_op(ops[op], op, stride, channel_index[key], old_width)
                        for op in shapes}
    out[name] = cell_out
  return out


def transfer_opt_state(old_state, transfer_tree):
  """The weight optimizer's state for the widened params: momentum buffers
  (optax TraceState) through `transfer_tree`, counts and empty states kept."""
  is_trace = lambda node: isinstance(node, optax.TraceState)

  def move(node):
    if is_trace(node):
      return optax.TraceState(trace=transfer_tree(node.trace))
    return node
  return jax.tree.map(move, old_state, is_leaf=is_trace)


def validate(config, require):
  """Stage fields: equal lengths, summing to search.epochs, k and ops non-increasing."""
  s = config.search
  widen = s.widen
  require(widen in WIDEN_RULES, f'search.widen={widen!r} is not one of {WIDEN_RULES}.')
  epochs = tuple(s.stage_epochs or ())
  if not epochs:
    return
  ks, ops = tuple(s.stage_partial_channels), tuple(s.stage_ops)
  n_ops = len(_primitives(config))
  require(len(ks) == len(epochs) == len(ops),
          f'search.stage_epochs / stage_partial_channels / stage_ops need one value per '
          f'stage; got {len(epochs)} / {len(ks)} / {len(ops)}.')
  require(sum(epochs) == s.epochs and min(epochs) >= 1,
          f'search.stage_epochs={epochs} must be >= 1 each and sum to '
          f'search.epochs={s.epochs}.')
  require(all(a >= b for a, b in zip(ks, ks[1:])) and min(ks) >= 1,
          f'search.stage_partial_channels={ks} must be >= 1 and non-increasing (ops only '
          f'widen).')
  require(all(a >= b for a, b in zip(ops, ops[1:])) and 1 <= min(ops) and max(ops) <= n_ops,
          f'search.stage_ops={ops} must be non-increasing, in 1..{n_ops} (the op count).')
  k = config_fields.partial_channels(config.model)
  require(ks[0] == k,
          f'search.stage_partial_channels[0]={ks[0]} must equal model.partial_channels={k}.')
  c = config.model.init_channels
  for k in ks:
    # Stride-2 skip ops (FactorizedReduce) only sit in reduction cells, at 2C / k.
    require(c % k == 0,
            f'search.stage_partial_channels has k={k}, which does not divide '
            f'model.init_channels={c}.')
  require(not s.single_level,
          'search.stage_epochs (progressive learning) is not supported with '
          'search.single_level=True.')
