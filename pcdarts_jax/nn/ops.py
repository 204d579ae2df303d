"""The DARTS candidate operations as Flax linen modules (NHWC).

Layouts and hyperparameters follow the reference DARTS / PC-DARTS code: convs
have no bias, BatchNorm uses eps 1e-5 and PyTorch momentum 0.1 (Flax 0.9), and
`affine=False` BatchNorms (the search supernet) carry no scale or shift.
"""

import functools
from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from pcdarts_jax.nn import fused_ops
from pcdarts_jax.nn.functional import (batch_normalize, padding_pairs, relu,
                                       relu_shifted_depthwise, shifted_depthwise,
                                       shifted_max_pool)
from pcdarts_jax.nn import initializers

BN_MOMENTUM = 0.9  # PyTorch momentum 0.1.
BN_EPSILON = 1e-5
DEPTHWISE_IMPLS = ('auto', 'conv', 'shifted', 'dense', 'fused')


def resolve_depthwise_impl(impl: str, dtype=jnp.float32, backend: Optional[str] = None) -> str:
  """`auto`: what measured fastest for the CIFAR search's bilevel step (figures in
  docs/benchmarks.md). On CPU in float32, `fused` where its C++ kernel builds, else
  shifted multiply-adds, since XLA's grouped conv is slow there; `shifted` on GPUs in
  float32 too (faster than cuDNN's autotuned grouped convs); the grouped conv on GPUs in
  bfloat16 and on other accelerators.
  `fused` is `shifted` plus the C++ relu -> depthwise -> 1x1 kernel of fused_ops
  for the SepConv / DilConv chains that it supports (CPU, float32).
  `backend`: jax.default_backend() unless given."""
  if impl not in DEPTHWISE_IMPLS:
    raise ValueError(
        f'model.depthwise_impl={impl!r} is not one of {DEPTHWISE_IMPLS}.')
  if impl == 'auto':
    backend = backend or jax.default_backend()
    if (backend == 'cpu' and jnp.dtype(dtype) == jnp.float32
        and backend == jax.default_backend() and fused_ops.available()):
      return 'fused'
    if backend == 'cpu' or (backend in ('gpu', 'cuda', 'rocm')
                            and jnp.dtype(dtype) != jnp.bfloat16):
      return 'shifted'
    return 'conv'
  return impl


def network_input(x: jax.Array, dtype: str) -> jax.Array:
  """A network's image batch in its compute dtype: `bfloat16` casts; `float32`
  keeps the input's own float precision (float64 in tests). Integer images are
  refused: the convs would cast their kernels to the input's dtype and the
  whole network would silently compute in uint8."""
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(
        f'network input has dtype {x.dtype}; pass normalized float images '
        '(data.normalize), not raw integer pixels.')
  return x.astype(jnp.bfloat16) if dtype == 'bfloat16' else x


class BatchNorm(nn.BatchNorm):
  """nn.BatchNorm whose output keeps the input's dtype: under bfloat16 the
  statistics (and the running averages) stay float32, the activations bfloat16.
  Affine-free (the search supernet's) in train mode, it normalizes through
  `batch_normalize` (same function and variables, less memory for the gradient),
  or through `normalize(x, epsilon, axis_name) -> (y, mean, var)` when given:
  a producer of the normalized tensor fused with its BatchNorm, whose input x
  is then the producer's (see relu_depthwise_pointwise_bn)."""

  @nn.compact
  def __call__(self, x, normalize=None, **kwargs):
    use_running_average = self.use_running_average  # batch_norm() sets it
    if (self.use_scale or self.use_bias or use_running_average or kwargs
        or self.axis != -1 or self.axis_index_groups is not None):
      if normalize is not None:
        raise ValueError('BatchNorm: normalize= needs the affine-free train-mode BatchNorm')
      return super().__call__(x, **kwargs).astype(x.dtype)
    y, mean, var = (normalize or batch_normalize)(
        x, self.epsilon, None if self.is_initializing() else self.axis_name)
    running_statistics(self, x.shape[-1], (mean, var), self.momentum)
    return y


def running_statistics(module: nn.Module, width: int,
                       batch: Optional[Tuple[jax.Array, jax.Array]] = None,
                       momentum: float = BN_MOMENTUM) -> Tuple[jax.Array, jax.Array]:
  """A BatchNorm's running mean and variance, `batch_stats` `mean` and `var` of
  `module`, (width,) float32 each. Given the batch's (mean, var), they first
  move towards it by `momentum` (not while initializing: init leaves them at
  0 and 1, as PyTorch's BatchNorm starts). One update for ops.BatchNorm and
  for the layouts that normalize several BatchNorms' channels at once."""
  mean = module.variable('batch_stats', 'mean', jnp.zeros, (width,), jnp.float32)
  var = module.variable('batch_stats', 'var', jnp.ones, (width,), jnp.float32)
  if batch is not None and not module.is_initializing():
    for variable, values in zip((mean, var), batch):
      variable.value = momentum * variable.value + (1 - momentum) * lax.stop_gradient(values)
  return mean.value, var.value


def batch_norm(train: bool, affine: bool, name: Optional[str] = None,
               axis_name: Optional[str] = None) -> nn.BatchNorm:
  """BatchNorm with PyTorch's momentum and eps. The affine ones (stems, the
  training networks, SGNAS) take the two-pass variance, E[(x - mean)^2]:
  Flax's default E[x^2] - mean^2 cancels catastrophically on near-constant
  channels. (SGNAS's 1-device and 8-device weights still differed by 1e-2
  after that change: a ReLU6 kink, see tests/multidevice/sgnas_one_vs_many.py.)"""
  return BatchNorm(
      use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
      use_scale=affine, use_bias=affine, axis_name=axis_name, use_fast_variance=False,
      name=name)


class DepthwiseConv(nn.Module):
  """Depthwise k x k conv (no bias) with a choice of implementation.

  Both implementations share one parameter, `kernel` of shape (k, k, 1, C) as
  `nn.Conv(feature_group_count=C)` stores it, so a checkpoint works with either.
  `shifted` sums k*k strided slices of the padded input scaled per channel; it
  computes exactly the same function as the grouped conv. `relu_input`: the
  conv of relu(x), whose gradient keeps x alone (see `depthwise`).
  """
  kernel_size: int
  stride: int = 1
  padding: int = 0
  dilation: int = 1
  impl: str = 'auto'
  relu_input: bool = False

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    k = self.kernel_size
    kernel = self.param('kernel', initializers.kernel_init,
                        (k, k, 1, channels), jnp.float32)
    return depthwise(x, kernel.astype(x.dtype), self.stride, self.padding, self.dilation,
                     self.impl, self.relu_input)


def depthwise(x: jax.Array, kernel: jax.Array, stride: int = 1, padding: int = 0,
              dilation: int = 1, impl: str = 'auto', relu_input: bool = False) -> jax.Array:
  """The depthwise conv of DepthwiseConv as a function of its kernel (k, k, 1, C).

  `relu_input=True` convolves relu(x). The shifted form then keeps only x for
  its gradient and recomputes the ReLU there: the mixed op's conv ops all read
  the one channel slice, and a SepConv's second ReLU reads the BatchNorm output
  that BatchNorm keeps, so the ReLU adds no tensor to the gradient's memory."""
  channels = x.shape[-1]
  impl = resolve_depthwise_impl(impl, x.dtype)
  if impl == 'fused':  # a depthwise conv on its own: the XLA form
    impl = 'shifted'
  if relu_input and impl == 'shifted':
    return relu_shifted_depthwise(x, kernel, stride, padding, dilation)
  if relu_input:
    x = relu(x)
  if impl in ('conv', 'dense'):
    groups = channels
    if impl == 'dense':
      kernel = kernel[..., 0, :, None] * jnp.eye(channels, dtype=x.dtype)
      groups = 1
    return lax.conv_general_dilated(
        x, kernel, window_strides=(stride, stride), padding=padding_pairs(padding),
        rhs_dilation=(dilation,) * 2, dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
        feature_group_count=groups)
  return shifted_depthwise(x, kernel, stride, padding, dilation)


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
    # A 2-D matrix product: its kernel gradient is x^T g with x read in place,
    # where the einsum over (n, h, w) made XLA:CPU copy x transposed first.
    w = kernel[0, 0].astype(x.dtype)
    return jnp.dot(x.reshape(-1, x.shape[-1]), w).reshape(*x.shape[:-1], self.features)


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
    padding = padding_pairs(padding)
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
  impl: str = 'auto'  # depthwise_impl: `shifted` also writes pools as slices

  @nn.compact
  def __call__(self, x, train: bool = True):
    y = pool_3x3(x, self.kind, self.stride, self.impl)
    if self.bn_after:
      y = batch_norm(train, self.affine, 'bn', self.axis_name)(y)
    return y


def pool_3x3(x: jax.Array, kind: str, stride: int = 1, impl: str = 'auto') -> jax.Array:
  """3x3 max or average pool, padding 1; the average does not count padded cells
  (PyTorch count_include_pad=False). `impl` follows depthwise_impl: `shifted`
  takes the max/sum of 9 strided slices, which XLA:CPU fuses into one loop and
  differentiates without reduce_window's slow select-and-scatter; the others
  use reduce_window. Both compute the same function and gradient (a max's
  gradient goes to the first maximum of the window)."""
  if kind not in ('max', 'avg'):
    raise ValueError(f'pool kind {kind!r} is not one of (max, avg).')
  if resolve_depthwise_impl(impl, x.dtype) not in ('shifted', 'fused'):
    window, strides = (3, 3), (stride, stride)
    if kind == 'max':
      return nn.max_pool(x, window, strides, padding=padding_pairs(1))
    return nn.avg_pool(x, window, strides, padding=padding_pairs(1),
                       count_include_pad=False).astype(x.dtype)  # counts are float32
  if kind == 'max':
    return shifted_max_pool(x, stride, tuple(x.shape[1:3]))
  # The window sum is a depthwise conv with a kernel of ones: its VJP gathers
  # (one loop) where autodiff of the slices sums 9 padded copies.
  total = shifted_depthwise(x, jnp.ones((3, 3, 1, x.shape[-1]), x.dtype), stride, 1, 1)
  counts = [np.convolve(np.ones(n), np.ones(3))[1:-1][::stride] for n in x.shape[1:3]]
  inverse = 1.0 / np.outer(*counts)[None, :, :, None]
  return total * inverse.astype(x.dtype)


class ReLUConvBN(nn.Module):
  features: int
  kernel_size: int = 1
  stride: int = 1
  padding: int = 0
  affine: bool = True
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool = True):
    x = relu(x)
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
    x = relu(x)
    half = self.features // 2
    a = conv(half, 1, 2, 0, 'conv_1')(x)
    b = conv(half, 1, 2, 0, 'conv_2')(pixel_shifted(x))
    y = jnp.concatenate([a, b], axis=-1)
    return batch_norm(train, self.affine, 'bn', self.axis_name)(y)


def pixel_shifted(x: jax.Array) -> jax.Array:
  """FactorizedReduce's second branch input: x[1:, 1:] (odd pixels), zero-padded
  at the far edge so both branches have one size for odd H/W too, where the
  reference fails; for even sizes the padded row is never sampled."""
  return jnp.pad(x[:, 1:, 1:, :], ((0, 0), (0, 1), (0, 1), (0, 0)))


class _Kernel(nn.Module):
  """A bare `kernel` parameter at the path its conv module would give it."""
  shape: Tuple[int, ...]

  @nn.compact
  def __call__(self):
    return self.param('kernel', initializers.kernel_init, self.shape, jnp.float32)


def relu_depthwise_pointwise_bn(x, kernel_size: int, stride: int, padding: int, dilation: int,
                                features: int, impl: str, names: Tuple[str, str, str],
                                train: bool, affine: bool, axis_name: Optional[str]):
  """ReLU -> depthwise conv -> 1x1 conv -> BatchNorm inside a SepConv / DilConv
  (call it from the module's compact method; names: the depthwise, 1x1 and
  BatchNorm modules'). With depthwise_impl `fused`, one C++ kernel computes the
  convs where it can (fused_ops.supports), keeping only x for the gradient, and
  before the search's BatchNorm (affine-free, train mode) also the statistics
  of its output; else DepthwiseConv and the 1x1 conv. The variables are the
  same either way ({dw: {kernel}}, {pw: {kernel}}, {bn: {mean, var}})."""
  dw_name, pw_name, bn_name = names
  bn = batch_norm(train, affine, bn_name, axis_name)
  if not (resolve_depthwise_impl(impl, x.dtype) == 'fused'
          and fused_ops.supports(x.shape, x.dtype, kernel_size, stride, padding, dilation,
                                 features)
          and fused_ops.available()):
    x = DepthwiseConv(kernel_size, stride, padding, dilation, impl, relu_input=True,
                      name=dw_name)(x)
    return bn(conv(features, 1, name=pw_name)(x))
  channels = x.shape[-1]
  kernels = (_Kernel((kernel_size, kernel_size, 1, channels), name=dw_name)(),
             _Kernel((1, 1, channels, features), name=pw_name)())
  if train and not affine:
    return bn(x, normalize=lambda x, epsilon, axis_name: (
        fused_ops.relu_depthwise_pointwise_normalize(x, *kernels, padding, dilation, stride,
                                                     epsilon, axis_name)))
  return bn(fused_ops.relu_depthwise_pointwise(x, *kernels, padding, dilation, stride))


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
    return relu_depthwise_pointwise_bn(x, self.kernel_size, self.stride, self.padding,
                                       self.dilation, self.features, self.depthwise_impl,
                                       ('dw', 'pw', 'bn'), train, self.affine, self.axis_name)


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
    block = functools.partial(relu_depthwise_pointwise_bn, kernel_size=self.kernel_size,
                              padding=self.padding, dilation=1, impl=self.depthwise_impl,
                              train=train, affine=self.affine, axis_name=self.axis_name)
    x = block(x, stride=self.stride, features=x.shape[-1], names=('dw1', 'pw1', 'bn1'))
    return block(x, stride=1, features=self.features, names=('dw2', 'pw2', 'bn2'))


class Conv7x1_1x7(nn.Module):  # pylint: disable=invalid-name
  features: int
  stride: int
  affine: bool = True
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool = True):
    channels = x.shape[-1]
    x = relu(x)
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
    return Pool(primitive[:3], stride, bn_after=search, impl=depthwise_impl, **common)
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
