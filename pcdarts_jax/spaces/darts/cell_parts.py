"""Pieces of the search cell shared by its layouts (supernet.py's scanned and
batched edges, grouped_cell.py's merged ones): where each edge's parameters sit,
the channel shuffle/shift after a partial-channel mixed op, the stride-2 bypass."""

import jax
import jax.numpy as jnp

from pcdarts_jax.spaces.darts import genotypes

CHANNEL_MIXINGS = ('shuffle', 'shift')
# Primitives of the grouped layout (grouped_cell.py).
GROUPED_PRIMITIVES = ('none', 'max_pool_3x3', 'avg_pool_3x3', 'skip_connect',
                      'sep_conv_3x3', 'sep_conv_5x5', 'sep_conv_7x7',
                      'dil_conv_3x3', 'dil_conv_5x5')


def channel_shuffle(x: jax.Array, groups: int) -> jax.Array:
  """NHWC channel shuffle: channels viewed as (groups, C/groups), transposed."""
  *lead, channels = x.shape
  x = x.reshape(*lead, groups, channels // groups)
  x = jnp.swapaxes(x, -1, -2)
  return x.reshape(*lead, channels)


def channel_shift(x: jax.Array, width: int) -> jax.Array:
  """NHWC channel shift: the first `width` channels move to the end."""
  return jnp.concatenate([x[..., width:], x[..., :width]], axis=-1)


def mix_channels(x: jax.Array, mixing: str, groups: int) -> jax.Array:
  """The mixed op's final channel permutation: `shuffle` (K groups) or `shift`."""
  if mixing == 'shuffle':
    return channel_shuffle(x, groups)
  if mixing == 'shift':
    return channel_shift(x, x.shape[-1] // groups)
  raise ValueError(f'model.channel_mixing={mixing!r} is not one of {CHANNEL_MIXINGS}.')


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max pool, stride 2 (the bypass of a stride-2 edge), as a max over a
  reshape: same values as nn.max_pool, with an elementwise gradient instead of
  reduce_window's select-and-scatter, which is slow on XLA:CPU. Odd trailing
  rows/columns are dropped, as nn.max_pool's VALID padding does."""
  n, h, w, c = x.shape
  x = x[:, :h - h % 2, :w - w % 2, :]
  return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def edge_groups(steps: int = 4):
  """The cell's edges in the two scans a cell runs, as (name, [(edge, node, j)]).

  `input_edges`: every edge from the cell inputs (j < 2), strided in reduction
  cells; `node_edges`: edges from intermediate nodes (j >= 2), node by node, so
  each source node is complete before it is read. Edge e's parameters sit at
  its position in its group along the leading axis.
  """
  from_inputs, from_nodes = [], []
  for node, (start, end) in enumerate(genotypes.node_edge_ranges(steps)):
    for j in range(end - start):
      (from_inputs if j < 2 else from_nodes).append((start + j, node, j))
  return (('input_edges', from_inputs), ('node_edges', from_nodes))


def edge_slot(edge: int, steps: int = 4):
  """(group name, position) of edge `edge`'s stacked parameters in a search cell."""
  for name, members in edge_groups(steps):
    for pos, (e, _, _) in enumerate(members):
      if e == edge:
        return name, pos
  raise ValueError(f'edge {edge} is out of range for a cell of {steps} nodes.')
