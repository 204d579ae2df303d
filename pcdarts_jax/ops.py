"""The DARTS candidate operations as Flax linen modules (NHWC).

Layouts and hyperparameters follow the reference DARTS / PC-DARTS code: convs
have no bias, BatchNorm uses eps 1e-5 and PyTorch momentum 0.1 (Flax 0.9), and
`affine=False` BatchNorms (the search supernet) carry no scale or shift.
"""

from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from pcdarts_jax import initializers

BN_MOMENTUM = 0.9  # PyTorch momentum 0.1.
BN_EPSILON = 1e-5
DEPTHWISE_IMPLS = ('auto', 'conv', 'shifted', 'dense')


def resolve_depthwise_impl(impl: str) -> str:
  """`auto` picks shifted multiply-adds on CPU, where XLA's grouped conv is slow."""
  if impl not in DEPTHWISE_IMPLS:
    raise ValueError(
        f'model.depthwise_impl={impl!r} is not one of {DEPTHWISE_IMPLS}.')
  if impl == 'auto':
    return 'shifted' if jax.default_backend() == 'cpu' else 'conv'
  return impl


def _pair(padding: int) -> Tuple[Tuple[int, int], Tuple[int, int]]:
  return ((padding, padding), (padding, padding))


class BatchNorm(nn.BatchNorm):
  """nn.BatchNorm whose output keeps the input's dtype: under bfloat16 the
  statistics (and the running averages) stay float32, the activations bfloat16."""

  def __call__(self, x, *args, **kwargs):
    return super().__call__(x, *args, **kwargs).astype(x.dtype)


def batch_norm(train: bool, affine: bool, name: Optional[str] = None,
               axis_name: Optional[str] = None) -> nn.BatchNorm:
  return BatchNorm(
      use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
      use_scale=affine, use_bias=affine, axis_name=axis_name, name=name)


class DepthwiseConv(nn.Module):
  """Depthwise k x k conv (no bias) with a choice of implementation.

  Both implementations share one parameter, `kernel` of shape (k, k, 1, C) as
  `nn.Conv(feature_group_count=C)` stores it, so a checkpoint works with either.
  `shifted` sums k*k strided slices of the padded input scaled per channel; it
  computes exactly the same function as the grouped conv.
  """
  kernel_size: int
  stride: int = 1
  padding: int = 0
  dilation: int = 1
  impl: str = 'auto'

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    k = self.kernel_size
    kernel = self.param('kernel', initializers.kernel_init,
                        (k, k, 1, channels), jnp.float32)
    return depthwise(x, kernel.astype(x.dtype), self.stride, self.padding, self.dilation,
                     self.impl)


def depthwise(x: jax.Array, kernel: jax.Array, stride: int = 1, padding: int = 0,
              dilation: int = 1, impl: str = 'auto') -> jax.Array:
  """The depthwise conv of DepthwiseConv as a function of its kernel (k, k, 1, C)."""
  channels = x.shape[-1]
  k = kernel.shape[0]
  impl = resolve_depthwise_impl(impl)
  if impl in ('conv', 'dense'):
    groups = channels
    if impl == 'dense':
      kernel = kernel[..., 0, :, None] * jnp.eye(channels, dtype=x.dtype)
      groups = 1
    return lax.conv_general_dilated(
        x, kernel, window_strides=(stride, stride), padding=_pair(padding),
        rhs_dilation=(dilation,) * 2, dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
        feature_group_count=groups)
  p, d, s = padding, dilation, stride
  xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  height, width = x.shape[1], x.shape[2]
  out_h = (height + 2 * p - d * (k - 1) - 1) // s + 1
  out_w = (width + 2 * p - d * (k - 1) - 1) // s + 1
  out = None
  for i in range(k):
    for j in range(k):
      tap = lax.slice(
          xp, (0, i * d, j * d, 0),
          (xp.shape[0], i * d + (out_h - 1) * s + 1, j * d + (out_w - 1) * s + 1, channels),
          (1, s, s, 1))
      term = tap * kernel[i, j, 0]
      out = term if out is None else out + term
  return out


class Pointwise(nn.Module):
  """1x1 conv (no bias) as a matmul: cheaper to compile and batches well under vmap.

  The kernel has nn.Conv's layout, (1, 1, C_in, C_out).
  """
  features: int
  stride: int = 1

  @nn.compact
  def __call__(self, x):
    kernel = self.param('kernel', initializers.kernel_init,
                        (1, 1, x.shape[-1], self.features), jnp.float32)
    if self.stride > 1:
      x = x[:, ::self.stride, ::self.stride, :]
    return jnp.einsum('nhwc,cd->nhwd', x, kernel[0, 0].astype(x.dtype))


class Conv(nn.Module):
  """Bias-free conv computed in the input's dtype (float32 kernel cast at use).

  Same parameter as nn.Conv (`kernel`, (kh, kw, C_in, C_out)), so checkpoints
  and the PyTorch import are unchanged.
  """
  features: int
  kernel_size: Tuple[int, int]
  strides: Tuple[int, int] = (1, 1)
  padding: Tuple[Tuple[int, int], Tuple[int, int]] = ((0, 0), (0, 0))

  @nn.compact
  def __call__(self, x):
    kernel = self.param('kernel', initializers.kernel_init,
                        (*self.kernel_size, x.shape[-1], self.features), jnp.float32)
    return lax.conv_general_dilated(
        x, kernel.astype(x.dtype), window_strides=self.strides, padding=self.padding,
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def conv(features: int, kernel_size, stride=1, padding=0, name=None) -> nn.Module:
  if kernel_size == 1 and padding == 0 and isinstance(stride, int):
    return Pointwise(features, stride, name=name)
  if isinstance(kernel_size, int):
    kernel_size = (kernel_size, kernel_size)
  if isinstance(stride, int):
    stride = (stride, stride)
  if isinstance(padding, int):
    padding = _pair(padding)
  return Conv(features, tuple(kernel_size), tuple(stride), tuple(map(tuple, padding)),
              name=name)


class Zero(nn.Module):
  """`none`: zeros shaped like the op's output (input subsampled at stride 2)."""
  stride: int = 1

  def __call__(self, x, train: bool = True):
    return jnp.zeros_like(x[:, ::self.stride, ::self.stride, :])


class Identity(nn.Module):

  def __call__(self, x, train: bool = True):
    return x


class Pool(nn.Module):
  """3x3 max or average pool, padding 1; the search mixed op adds a BN after it."""
  kind: str  # 'max' | 'avg'
  stride: int = 1
  bn_after: bool = False
  affine: bool = False
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool = True):
    window, strides = (3, 3), (self.stride, self.stride)
    if self.kind == 'max':
      y = nn.max_pool(x, window, strides, padding=_pair(1))
    else:
      # Padded cells are not counted (PyTorch count_include_pad=False).
      y = nn.avg_pool(x, window, strides, padding=_pair(1),
                      count_include_pad=False).astype(x.dtype)  # counts are float32
    if self.bn_after:
      y = batch_norm(train, self.affine, 'bn', self.axis_name)(y)
    return y


class ReLUConvBN(nn.Module):
  features: int
  kernel_size: int = 1
  stride: int = 1
  padding: int = 0
  affine: bool = True
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool = True):
    x = nn.relu(x)
    x = conv(self.features, self.kernel_size, self.stride, self.padding,
             'conv')(x)
    return batch_norm(train, self.affine, 'bn', self.axis_name)(x)


class FactorizedReduce(nn.Module):
  """Halves H and W: two stride-2 1x1 convs, the second on x shifted by a pixel."""
  features: int
  affine: bool = True
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool = True):
    if self.features % 2:
      raise ValueError(
          f'FactorizedReduce needs an even channel count, got {self.features}.')
    x = nn.relu(x)
    half = self.features // 2
    a = conv(half, 1, 2, 0, 'conv_1')(x)
    # The shifted branch sees x[1:, 1:] (odd pixels). Zero-padding the far edge
    # keeps both branches the same size for odd H/W too, where the reference
    # fails; for even sizes the padded row is never sampled.
    shifted = jnp.pad(x[:, 1:, 1:, :], ((0, 0), (0, 1), (0, 1), (0, 0)))
    b = conv(half, 1, 2, 0, 'conv_2')(shifted)
    y = jnp.concatenate([a, b], axis=-1)
    return batch_norm(train, self.affine, 'bn', self.axis_name)(y)


class DilConv(nn.Module):
  """ReLU -> depthwise (dilated) conv -> 1x1 conv -> BN."""
  features: int
  kernel_size: int
  stride: int
  padding: int
  dilation: int
  affine: bool = True
  depthwise_impl: str = 'auto'
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool = True):
    x = nn.relu(x)
    x = DepthwiseConv(self.kernel_size, self.stride, self.padding,
                      self.dilation, self.depthwise_impl, name='dw')(x)
    x = conv(self.features, 1, name='pw')(x)
    return batch_norm(train, self.affine, 'bn', self.axis_name)(x)


class SepConv(nn.Module):
  """Two DilConv-like blocks (dilation 1); only the first one strides."""
  features: int
  kernel_size: int
  stride: int
  padding: int
  affine: bool = True
  depthwise_impl: str = 'auto'
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool = True):
    channels = x.shape[-1]
    k, p = self.kernel_size, self.padding
    x = nn.relu(x)
    x = DepthwiseConv(k, self.stride, p, 1, self.depthwise_impl, name='dw1')(x)
    x = conv(channels, 1, name='pw1')(x)
    x = batch_norm(train, self.affine, 'bn1', self.axis_name)(x)
    x = nn.relu(x)
    x = DepthwiseConv(k, 1, p, 1, self.depthwise_impl, name='dw2')(x)
    x = conv(self.features, 1, name='pw2')(x)
    return batch_norm(train, self.affine, 'bn2', self.axis_name)(x)


class Conv7x1_1x7(nn.Module):  # pylint: disable=invalid-name
  features: int
  stride: int
  affine: bool = True
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool = True):
    channels = x.shape[-1]
    x = nn.relu(x)
    x = conv(channels, (1, 7), (1, self.stride), ((0, 0), (3, 3)), 'conv_1x7')(x)
    x = conv(self.features, (7, 1), (self.stride, 1), ((3, 3), (0, 0)),
             'conv_7x1')(x)
    return batch_norm(train, self.affine, 'bn', self.axis_name)(x)


def make_op(primitive: str, channels: int, stride: int, affine: bool,
            depthwise_impl: str = 'auto', search: bool = False,
            axis_name: Optional[str] = None, name: Optional[str] = None
            ) -> nn.Module:
  """Builds one candidate op mapping `channels` to `channels` at `stride`.

  `search=True` adds the BN after pools that only the search mixed op has.
  """
  common = dict(affine=affine, axis_name=axis_name, name=name)
  dw = dict(depthwise_impl=depthwise_impl)
  if primitive == 'none':
    return Zero(stride, name=name)
  if primitive in ('max_pool_3x3', 'avg_pool_3x3'):
    return Pool(primitive[:3], stride, bn_after=search, **common)
  if primitive == 'skip_connect':
    if stride == 1:
      return Identity(name=name)
    return FactorizedReduce(channels, **common)
  if primitive in ('sep_conv_3x3', 'sep_conv_5x5', 'sep_conv_7x7'):
    k = int(primitive[-1])
    return SepConv(channels, k, stride, k // 2, **common, **dw)
  if primitive == 'dil_conv_3x3':
    return DilConv(channels, 3, stride, 2, 2, **common, **dw)
  if primitive == 'dil_conv_5x5':
    return DilConv(channels, 5, stride, 4, 2, **common, **dw)
  if primitive == 'conv_7x1_1x7':
    return Conv7x1_1x7(channels, stride, **common)
  raise ValueError(f'Unknown operation {primitive!r}; known: {OP_NAMES}.')


OP_NAMES = ('none', 'max_pool_3x3', 'avg_pool_3x3', 'skip_connect',
            'sep_conv_3x3', 'sep_conv_5x5', 'dil_conv_3x3', 'dil_conv_5x5',
            'sep_conv_7x7', 'conv_7x1_1x7')
