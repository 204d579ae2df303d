"""The DARTS candidate operations as Flax linen modules (NHWC).

Layouts and hyperparameters follow the reference DARTS / PC-DARTS code: convs
have no bias, BatchNorm uses eps 1e-5 and PyTorch momentum 0.1 (Flax 0.9), and
`affine=False` BatchNorms (the search supernet) carry no scale or shift.
"""

import functools
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from pcdarts_jax import fused_ops
from pcdarts_jax import initializers

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


def _pair(padding: int) -> Tuple[Tuple[int, int], Tuple[int, int]]:
  return ((padding, padding), (padding, padding))


def channel_means(*arrays: jax.Array) -> jax.Array:
  """(len(arrays), C): each array's mean over every axis but the last (channels).

  Images are averaged as rows of width x channels first, then over the width:
  XLA:CPU vectorizes a reduction over rows across their W*C lanes but one over
  pixels only across the C (4 in a C/K slice) lanes: a BatchNorm's statistics
  take about half the time."""
  if arrays[0].ndim < 3:
    axes = tuple(range(arrays[0].ndim - 1))
    return jnp.stack([a.mean(axes) for a in arrays])
  width, channels = arrays[0].shape[-2:]
  rows = jnp.stack([a.reshape(-1, width * channels).mean(0) for a in arrays])
  return rows.reshape(len(arrays), width, channels).mean(1)


def moments_from_means(means: jax.Array, axis_name=None):
  """Batch mean and (biased) variance from the (2, C) means of x and of x
  squared, averaged over `axis_name` when given."""
  if axis_name is not None:
    means = lax.pmean(means, axis_name)
  mean = means[0]
  return mean, jnp.maximum(0.0, means[1] - jnp.square(mean))  # Flax's variance formula


def _batch_statistics(xf, axis_name):
  return moments_from_means(channel_means(xf, jnp.square(xf)), axis_name)


@jax.custom_vjp
def relu(x: jax.Array) -> jax.Array:
  """ReLU whose gradient keeps only its input. jax.nn.relu's keeps its output,
  a boolean mask and a float mask (2.25 tensors), where the input is usually
  kept anyway (a BatchNorm output, a mixed op's channel slice)."""
  return jnp.maximum(x, jnp.zeros((), x.dtype))


def _relu_fwd(x):
  return relu(x), x


def _relu_bwd(x, g):
  return (jnp.where(x > 0, g, jnp.zeros((), g.dtype)),)


relu.defvjp(_relu_fwd, _relu_bwd)


def identity(x):
  """x: the other platforms' branch of a CPU-only device (lax.platform_dependent)."""
  return x


def _materialize_on_cpu(x: jax.Array) -> jax.Array:
  # XLA:CPU cannot fuse across a conditional, so the producer of x and its
  # consumers become separate loops. The predicate only has to be opaque to the
  # compiler; both branches return x.
  flag = jnp.isfinite(x.reshape(-1)[0])
  return lax.cond(flag, lambda a: a, lambda a: a + jnp.zeros((), a.dtype), x)


def materialize(x: jax.Array) -> jax.Array:
  """x, computed on its own in a program lowered for CPU; x itself on other
  platforms. XLA keeps the CPU form as a real conditional (one branch is
  empty), and on a GPU each conditional copies its predicate to the host and
  waits for it, so the choice is made when the program is lowered."""
  return lax.platform_dependent(x, cpu=_materialize_on_cpu, default=identity)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def batch_normalize(x, epsilon, axis_name=None):
  """Affine-free train-mode BatchNorm over all axes but the last: returns the
  normalized x (in x's dtype) and the batch mean and (biased) variance, averaged
  over `axis_name` when given. Its gradient keeps only the output and the
  inverse deviation: the output is kept anyway by the mixed op that weights it,
  where autodiff would keep two more full tensors per BatchNorm."""
  xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  mean, var = _batch_statistics(xf, axis_name)
  return ((xf - mean) * lax.rsqrt(var + epsilon)).astype(x.dtype), mean, var


def _batch_normalize_fwd(x, epsilon, axis_name):
  y, mean, var = batch_normalize(x, epsilon, axis_name)
  return (y, mean, var), (y, lax.rsqrt(var + epsilon))


def _batch_normalize_bwd(epsilon, axis_name, residuals, cotangents):
  del epsilon  # in inv_std
  y, inv_std = residuals
  return (batch_normalize_input_gradient(y, inv_std, cotangents, axis_name),)


def batch_normalize_input_gradient(y, inv_std, cotangents, axis_name=None):
  """The gradient of batch_normalize's input from its output y, the inverse
  deviation and the cotangents of (y, mean, var): x - mean = y / inv_std. The
  statistics' own cotangents are zero in a gradient (they only feed the
  running averages) but not in a derivative of a gradient (the second-order
  architect), where inv_std carries the variance."""
  g, g_mean, g_var = (c.astype(inv_std.dtype) for c in cotangents)
  yf = y.astype(inv_std.dtype)
  stats = jnp.concatenate([channel_means(g, g * yf), jnp.stack([g_mean, g_var])])
  if axis_name is not None:  # Statistics over all devices: their cotangents too.
    stats = lax.pmean(stats, axis_name)
  mean_g, mean_gy, g_mean, g_var = stats
  count = np.prod(y.shape[:-1])
  dx = (g - mean_g - yf * mean_gy) * inv_std + (g_mean + 2 * g_var * yf / inv_std) / count
  return dx.astype(y.dtype)


batch_normalize.defvjp(_batch_normalize_fwd, _batch_normalize_bwd)


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
    features = (x.shape[-1],)
    ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, features, jnp.float32)
    ra_var = self.variable('batch_stats', 'var', jnp.ones, features, jnp.float32)
    initializing = self.is_initializing()
    y, mean, var = (normalize or batch_normalize)(x, self.epsilon,
                                                  None if initializing else self.axis_name)
    if not initializing:
      m = self.momentum
      ra_mean.value = m * ra_mean.value + (1 - m) * lax.stop_gradient(mean)
      ra_var.value = m * ra_var.value + (1 - m) * lax.stop_gradient(var)
    return y


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
  k = kernel.shape[0]
  impl = resolve_depthwise_impl(impl, x.dtype)
  if impl == 'fused':  # a depthwise conv on its own: the XLA form
    impl = 'shifted'
  if relu_input and impl == 'shifted':
    return _relu_shifted_depthwise(x, kernel, stride, padding, dilation)
  if relu_input:
    x = relu(x)
  if impl in ('conv', 'dense'):
    groups = channels
    if impl == 'dense':
      kernel = kernel[..., 0, :, None] * jnp.eye(channels, dtype=x.dtype)
      groups = 1
    return lax.conv_general_dilated(
        x, kernel, window_strides=(stride, stride), padding=_pair(padding),
        rhs_dilation=(dilation,) * 2, dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
        feature_group_count=groups)
  return _shifted_depthwise(x, kernel, stride, padding, dilation)


def _strided_view(xp: jax.Array, top: int, left: int, stride: int,
                  out_hw: Tuple[int, int]) -> jax.Array:
  """The out_hw positions of (padded) xp from (top, left) every `stride` pixels:
  what one kernel tap sees."""
  out_h, out_w = out_hw
  return lax.slice(xp, (0, top, left, 0),
                   (xp.shape[0], top + (out_h - 1) * stride + 1,
                    left + (out_w - 1) * stride + 1, xp.shape[3]), (1, stride, stride, 1))


def _shifted_sum(xp: jax.Array, kernel: jax.Array, stride: int, dilation: int,
                 out_hw: Tuple[int, int]) -> jax.Array:
  """sum over taps (i, j) of the strided view of xp at (i*d, j*d) times kernel[i, j]:
  one loop over the output that XLA:CPU fuses and vectorizes along channels."""
  k, d = kernel.shape[0], dilation
  out = None
  for i in range(k):
    for j in range(k):
      term = _strided_view(xp, i * d, j * d, stride, out_hw) * kernel[i, j, 0]
      out = term if out is None else out + term
  return out


def _shifted_out_hw(x_shape, k, stride, padding, dilation):
  return tuple((n + 2 * padding - dilation * (k - 1) - 1) // stride + 1 for n in x_shape[1:3])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _shifted_depthwise(x, kernel, stride, padding, dilation):
  xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  return _shifted_sum(xp, kernel, stride, dilation,
                      _shifted_out_hw(x.shape, kernel.shape[0], stride, padding, dilation))


def _shifted_depthwise_fwd(x, kernel, stride, padding, dilation):
  return _shifted_depthwise(x, kernel, stride, padding, dilation), (x, kernel)


def _shifted_depthwise_bwd(stride, padding, dilation, residuals, g):
  x, kernel = residuals
  dx, dk = _shifted_depthwise_grads(x, kernel, g, stride, padding, dilation)
  return materialize(dx), dk


def _shifted_depthwise_grads(x, kernel, g, stride, padding, dilation):
  """Input gradient: the transposed conv, itself a shifted sum of the dilated,
  padded output gradient with the flipped kernel (one fused loop, where autodiff
  gives k*k padded copies and their sum). Kernel gradient: a reduction per tap."""
  k, s, p, d = kernel.shape[0], stride, padding, dilation
  low = (k - 1) * d - p
  config = [(0, 0, 0)] + [(low, n + p - (m - 1) * s - 1, s - 1)
                          for n, m in zip(x.shape[1:3], g.shape[1:3])] + [(0, 0, 0)]
  gp = lax.pad(g, jnp.zeros((), g.dtype), config)
  dx = _shifted_sum(gp, kernel[::-1, ::-1], 1, d, x.shape[1:3])
  dk = _kernel_gradient(jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0))), g, k, s, d)
  dk = dk.reshape(kernel.shape).astype(kernel.dtype)
  return dx.astype(x.dtype), dk


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _relu_shifted_depthwise(x, kernel, stride, padding, dilation):
  return _shifted_depthwise(relu(x), kernel, stride, padding, dilation)


def _relu_shifted_depthwise_fwd(x, kernel, stride, padding, dilation):
  return _relu_shifted_depthwise(x, kernel, stride, padding, dilation), (x, kernel)


def _relu_shifted_depthwise_bwd(stride, padding, dilation, residuals, g):
  x, kernel = residuals
  dx, dk = _shifted_depthwise_grads(relu(x), kernel, g, stride, padding, dilation)
  return materialize(_relu_bwd(x, dx)[0]), dk


# Batch chunk of the kernel-gradient reductions in a program lowered for CPU:
# its taps are reduced while the chunk is in cache (on XLA:CPU several times
# faster than reducing each tap over the whole batch). Other platforms reduce
# the whole batch at once: the chunks' loop only adds kernel launches there.
KERNEL_GRADIENT_CHUNK_BYTES = 1 << 20


def _kernel_gradient(xp, g, k, stride, dilation):
  """(k*k, C): per tap (i, j), sum over batch and space of the strided view of
  xp at (i*d, j*d) times g; on CPU reduced a few images at a time."""
  d = dilation
  n, out_h, out_w, channels = g.shape
  acc_dtype = jnp.promote_types(g.dtype, jnp.float32)
  image_bytes = out_h * out_w * channels * g.dtype.itemsize
  chunk = max([b for b in range(1, n + 1)
               if n % b == 0 and b * image_bytes <= KERNEL_GRADIENT_CHUNK_BYTES] or [1])

  def reduce_taps(xp, g):
    # All k*k taps are summed over images and rows by one variadic reduce: one
    # loop over g that never writes the products, where a product and a
    # ones-vector matrix product per tap were 2 k*k loops that wrote and read
    # them.
    # Rows keep out_w * C lanes; the out_w pixels of a row are summed after.
    rows = g.shape[0] * out_h
    products = tuple(
        (_strided_view(xp, i * d, j * d, stride, (out_h, out_w)) * g
         ).astype(acc_dtype).reshape(rows, out_w * channels)
        for i in range(k) for j in range(k))
    zeros = tuple(jnp.zeros((), acc_dtype) for _ in products)
    sums = lax.reduce(products, zeros,
                      lambda a, b: tuple(u + v for u, v in zip(a, b)), (0,))
    return jnp.stack([s.reshape(out_w, channels).sum(0) for s in sums])

  if chunk == n:
    return reduce_taps(xp, g)

  def chunked(xp, g):
    split = lambda a: a.reshape(n // chunk, chunk, *a.shape[1:])
    total, _ = lax.scan(lambda acc, xg: (acc + reduce_taps(*xg), None),
                        jnp.zeros((k * k, channels), acc_dtype), (split(xp), split(g)))
    return total

  return lax.platform_dependent(xp, g, cpu=chunked, default=reduce_taps)


_shifted_depthwise.defvjp(_shifted_depthwise_fwd, _shifted_depthwise_bwd)
_relu_shifted_depthwise.defvjp(_relu_shifted_depthwise_fwd, _relu_shifted_depthwise_bwd)


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
  impl: str = 'auto'  # depthwise_impl: `shifted` also writes pools as slices

  @nn.compact
  def __call__(self, x, train: bool = True):
    y = pool_3x3(x, self.kind, self.stride, self.impl)
    if self.bn_after:
      y = batch_norm(train, self.affine, 'bn', self.axis_name)(y)
    return y


def _window_taps(x: jax.Array, stride: int, fill) -> list:
  """The 9 strided views of x padded by 1 with `fill` that a 3x3 window sees."""
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=fill)
  out_hw = _shifted_out_hw(x.shape, 3, stride, 1, 1)
  return [_strided_view(xp, i, j, stride, out_hw) for i in range(3) for j in range(3)]


def _max_and_first_argmax(x, stride):
  """The 3x3 window max and the row-major index (0..8) of its first maximum."""
  taps = _window_taps(x, stride, -jnp.inf)
  out, index = taps[0], jnp.zeros(taps[0].shape, jnp.int8)
  for t, tap in enumerate(taps[1:], start=1):
    larger = tap > out  # Strictly: ties keep the earlier tap.
    out = jnp.where(larger, tap, out)
    index = jnp.where(larger, jnp.int8(t), index)
  return out, index


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _shifted_max_pool(x, stride, x_hw):
  del x_hw  # The backward's: x's height and width.
  taps = _window_taps(x, stride, -jnp.inf)
  out = taps[0]
  for tap in taps[1:]:
    out = jnp.maximum(out, tap)
  return out


def _shifted_max_pool_fwd(x, stride, x_hw):
  del x_hw
  return _max_and_first_argmax(x, stride)


def _transposed_window_pad(y, x_hw, stride, fill):
  """y (pool output shaped) padded, and dilated by the stride, so that at offset
  (2 - i, 2 - j) input position q reads the output whose window has q at tap
  (i, j) (3x3 window, padding 1): the gather form of the pool's transpose."""
  config = [(0, 0, 0)] + [(1, n - (m - 1) * stride, stride - 1)
                          for n, m in zip(x_hw, y.shape[1:3])] + [(0, 0, 0)]
  return lax.pad(y, jnp.asarray(fill, y.dtype), config)


def _shifted_max_pool_bwd(stride, x_hw, argmax, g):
  """Each output's gradient goes to the first maximum of its window in
  row-major order, as PyTorch's max_pool2d does. Keeps only the int8 index of
  that maximum, and gathers: input q sums the gradients of the (up to 9)
  windows whose first maximum it is, in one loop over the input (the scatter
  form, 9 padded copies of the gradient, was slower on XLA:CPU)."""
  index = _transposed_window_pad(argmax, x_hw, stride, -1)
  grad = _transposed_window_pad(g, x_hw, stride, 0)
  dx = None
  for t in range(9):
    i, j = divmod(t, 3)
    view = lambda a: _strided_view(a, 2 - i, 2 - j, 1, x_hw)
    term = jnp.where(view(index) == t, view(grad), jnp.zeros((), g.dtype))
    dx = term if dx is None else dx + term
  return (materialize(dx),)


_shifted_max_pool.defvjp(_shifted_max_pool_fwd, _shifted_max_pool_bwd)


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
      return nn.max_pool(x, window, strides, padding=_pair(1))
    return nn.avg_pool(x, window, strides, padding=_pair(1),
                       count_include_pad=False).astype(x.dtype)  # counts are float32
  if kind == 'max':
    return _shifted_max_pool(x, stride, tuple(x.shape[1:3]))
  # The window sum is a depthwise conv with a kernel of ones: its VJP gathers
  # (one loop) where autodiff of the slices sums 9 padded copies.
  total = _shifted_depthwise(x, jnp.ones((3, 3, 1, x.shape[-1]), x.dtype), stride, 1, 1)
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
    # The shifted branch sees x[1:, 1:] (odd pixels). Zero-padding the far edge
    # keeps both branches the same size for odd H/W too, where the reference
    # fails; for even sizes the padded row is never sampled.
    shifted = jnp.pad(x[:, 1:, 1:, :], ((0, 0), (0, 1), (0, 1), (0, 0)))
    b = conv(half, 1, 2, 0, 'conv_2')(shifted)
    y = jnp.concatenate([a, b], axis=-1)
    return batch_norm(train, self.affine, 'bn', self.axis_name)(y)


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
