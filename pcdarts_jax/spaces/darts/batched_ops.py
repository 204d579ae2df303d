"""The search cell's candidate ops for a group of edges at once, edges along channels.

A PC-DARTS edge works on C/K channels: 4 to 16 with the paper's settings. With
one edge at a time the channel axis, the minor one in NHWC, is far narrower than
a vector register, and every op is a separate small kernel. Here the E edges of
a group are laid side by side on the channel axis, (N, H, W, E * C/K), edge-major:
depthwise convs, pools, ReLU and the affine-free BatchNorms are per channel, so
they act on the whole group unchanged; the 1x1 convs become one block-diagonal
matmul. A group of 8 edges then runs as one op sequence on 32 to 128 channels.

The variables have exactly the tree and shapes that the scanned cell
(`supernet._edge_scan`) creates: every per-edge parameter and BatchNorm
statistic is stacked on a leading edge axis under the op's name. A call can use
a subset of the stacked edges (`positions`), so one module serves the node
edges in several groups. Checkpoints move freely between the two
implementations.
"""

from typing import Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from pcdarts_jax.nn import initializers
from pcdarts_jax.nn import ops

# Primitives with a batched form; a cell with any other one runs the scan.
BATCHED_PRIMITIVES = ('none', 'max_pool_3x3', 'avg_pool_3x3', 'skip_connect',
                      'sep_conv_3x3', 'sep_conv_5x5', 'sep_conv_7x7',
                      'dil_conv_3x3', 'dil_conv_5x5')
# 1x1 convs of at most this many input channels per edge run as one dense
# block-diagonal matmul (E x the FLOPs, one GEMM); wider ones as a batched einsum.
BLOCK_DIAGONAL_MAX_WIDTH = 16


def stacked_kernel_init(key, shape, dtype=jnp.float32):
  """kernel_init per edge: the fan-in of a (E, ..., C_out) kernel excludes E."""
  keys = jax.random.split(key, shape[0])
  return jax.vmap(lambda k: initializers.kernel_init(k, shape[1:], dtype))(keys)


def fold(x: jax.Array) -> jax.Array:
  """(N, H, W, E, C) -> (N, H, W, E * C)."""
  return x.reshape(*x.shape[:-2], x.shape[-2] * x.shape[-1])


def unfold(x: jax.Array, edges: int) -> jax.Array:
  """(N, H, W, E * C) -> (N, H, W, E, C)."""
  return x.reshape(*x.shape[:-1], edges, x.shape[-1] // edges)


def _select(stacked: jax.Array, positions: Tuple[int, ...]) -> jax.Array:
  if positions == tuple(range(stacked.shape[0])):
    return stacked
  return stacked[np.asarray(positions)]


class _Kernel(nn.Module):
  """A per-edge kernel stacked on a leading edge axis (`kernel`, as nn.scan stores it)."""
  shape: Tuple[int, ...]  # one edge's kernel
  edges: int

  @nn.compact
  def __call__(self, positions):
    kernel = self.param('kernel', stacked_kernel_init, (self.edges, *self.shape),
                        jnp.float32)
    return _select(kernel, positions)


def depthwise(module_name: str, x, edges, positions, kernel_size, stride, padding,
              dilation, impl):
  """Per-edge depthwise convs of relu(the folded `x`) as one depthwise conv (the
  ReLU inside: see ops.depthwise's relu_input)."""
  width = x.shape[-1] // len(positions)
  kernel = _Kernel((kernel_size, kernel_size, 1, width), edges, name=module_name)(positions)
  kernel = jnp.moveaxis(kernel, 0, 3).reshape(kernel_size, kernel_size, 1, -1)
  return ops.depthwise(x, kernel.astype(x.dtype), stride, padding, dilation, impl,
                     relu_input=True)


def pointwise(module_name: str, x, edges, positions, features, stride=1):
  """Per-edge 1x1 convs (C/K -> `features`) of the folded `x`."""
  count = len(positions)
  width = x.shape[-1] // count
  kernel = _Kernel((1, 1, width, features), edges, name=module_name)(positions)
  kernel = kernel[:, 0, 0].astype(x.dtype)  # (E, C_in, C_out)
  if stride > 1:
    x = x[:, ::stride, ::stride, :]
  if width <= BLOCK_DIAGONAL_MAX_WIDTH:
    eye = jnp.eye(count, dtype=x.dtype)
    block = jnp.einsum('eio,ef->eifo', kernel, eye).reshape(count * width, count * features)
    return jnp.einsum('nhwc,cd->nhwd', x, block)
  return fold(jnp.einsum('nhwei,eio->nhweo', unfold(x, count), kernel))


class StackedBatchNorm(nn.Module):
  """Affine-free BatchNorm of the folded channels, statistics stacked per edge.

  Same statistics, update rule and variance formula as ops.batch_norm (Flax's
  nn.BatchNorm); the running averages of the edges not in `positions` stay.
  """
  edges: int
  train: bool
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, positions):
    count = len(positions)
    width = x.shape[-1] // count
    ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, (self.edges, width), jnp.float32)
    ra_var = self.variable('batch_stats', 'var', jnp.ones, (self.edges, width), jnp.float32)
    if not self.train:
      dtype = jnp.promote_types(x.dtype, jnp.float32)
      mean = _select(ra_mean.value, positions).reshape(-1).astype(dtype)
      var = _select(ra_var.value, positions).reshape(-1).astype(dtype)
      return ((x.astype(dtype) - mean) * lax.rsqrt(var + ops.BN_EPSILON)).astype(x.dtype)
    initializing = self.is_initializing()
    y, mean, var = ops.batch_normalize(x, ops.BN_EPSILON,
                                       None if initializing else self.axis_name)
    if not initializing and self.is_mutable_collection('batch_stats'):
      index = np.asarray(positions)
      momentum = ops.BN_MOMENTUM
      for variable, batch in ((ra_mean, mean), (ra_var, var)):
        old = variable.value[index]
        batch = lax.stop_gradient(batch).reshape(count, width).astype(old.dtype)
        variable.value = variable.value.at[index].set(momentum * old + (1 - momentum) * batch)
    return y


class BatchedOp(nn.Module):
  """One candidate op for a group of edges (named like the op in the scanned cell)."""
  primitive: str
  edges: int
  stride: int
  train: bool
  depthwise_impl: str = 'auto'
  axis_name: Optional[str] = None

  def _bn(self, name, x, positions):
    return StackedBatchNorm(self.edges, self.train, self.axis_name, name=name)(x, positions)

  @nn.compact
  def __call__(self, x, positions):
    p, s, impl = self.primitive, self.stride, self.depthwise_impl
    count = len(positions)
    width = x.shape[-1] // count
    if p in ('max_pool_3x3', 'avg_pool_3x3'):
      return self._bn('bn', ops.pool_3x3(x, p[:3], s), positions)
    if p == 'skip_connect':
      if s == 1:
        return x
      # FactorizedReduce per edge: two stride-2 1x1 convs, the second on x
      # shifted by a pixel, each edge's halves side by side.
      x = ops.relu(x)
      half = width // 2
      a = pointwise('conv_1', x, self.edges, positions, half, 2)
      b = pointwise('conv_2', ops.pixel_shifted(x), self.edges, positions, half, 2)
      y = fold(jnp.concatenate([unfold(a, count), unfold(b, count)], axis=-1))
      return self._bn('bn', y, positions)
    if p.startswith('sep_conv_'):
      k = int(p[-1])
      x = depthwise('dw1', x, self.edges, positions, k, s, k // 2, 1, impl)
      x = pointwise('pw1', x, self.edges, positions, width)
      x = self._bn('bn1', x, positions)
      x = depthwise('dw2', x, self.edges, positions, k, 1, k // 2, 1, impl)
      x = pointwise('pw2', x, self.edges, positions, width)
      return self._bn('bn2', x, positions)
    if p.startswith('dil_conv_'):
      k = int(p[-1])
      x = depthwise('dw', x, self.edges, positions, k, s, k - 1, 2, impl)
      x = pointwise('pw', x, self.edges, positions, width)
      return self._bn('bn', x, positions)
    raise ValueError(f'{p!r} has no batched form; batched primitives: {BATCHED_PRIMITIVES}.')


class BatchedMixedOps(nn.Module):
  """The mixed ops (before the partial-channel bypass) of a group of edges.

  `x`: (N, H, W, E * C/K), edge e's op input in channels [e*C/K, (e+1)*C/K);
  `weights`: (E, ops) mixing weights; `positions`: the E edges' places in the
  stacked variables. Returns sum_o weights[e, o] * op_o(x_e), folded the same way.
  """
  edges: int
  stride: int
  primitives: Sequence[str]
  train: bool
  depthwise_impl: str = 'auto'
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, weights, positions: Tuple[int, ...]):
    count = len(positions)
    width = x.shape[-1] // count
    out = None
    for index, primitive in enumerate(self.primitives):
      if primitive == 'none':  # Contributes exact zeros.
        continue
      y = BatchedOp(primitive, self.edges, self.stride, self.train, self.depthwise_impl,
                    self.axis_name, name=primitive)(x, positions)
      scale = jnp.repeat(weights[:, index].astype(y.dtype), width)
      out = y * scale if out is None else out + y * scale
    if out is None:
      out = jnp.zeros_like(x[:, ::self.stride, ::self.stride, :])
    return out
