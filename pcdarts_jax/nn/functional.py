"""Functional kernels under the DARTS operations: custom-gradient ReLU and
BatchNorm normalisation, shifted multiply-add depthwise convolutions and pools.

Pure functions of arrays, shared by the linen operations (ops.py) and the fused
C++ CPU kernel (fused_ops.py). Their custom VJPs keep only the tensors the
gradient needs; CPU-only devices are chosen per platform at lowering.
"""

import functools
from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

def padding_pairs(padding: int) -> Tuple[Tuple[int, int], Tuple[int, int]]:
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
def shifted_depthwise(x, kernel, stride, padding, dilation):
  xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  return _shifted_sum(xp, kernel, stride, dilation,
                      _shifted_out_hw(x.shape, kernel.shape[0], stride, padding, dilation))


def _shifted_depthwise_fwd(x, kernel, stride, padding, dilation):
  return shifted_depthwise(x, kernel, stride, padding, dilation), (x, kernel)


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
def relu_shifted_depthwise(x, kernel, stride, padding, dilation):
  return shifted_depthwise(relu(x), kernel, stride, padding, dilation)


def _relu_shifted_depthwise_fwd(x, kernel, stride, padding, dilation):
  return relu_shifted_depthwise(x, kernel, stride, padding, dilation), (x, kernel)


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


shifted_depthwise.defvjp(_shifted_depthwise_fwd, _shifted_depthwise_bwd)
relu_shifted_depthwise.defvjp(_relu_shifted_depthwise_fwd, _relu_shifted_depthwise_bwd)


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
def shifted_max_pool(x, stride, x_hw):
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


shifted_max_pool.defvjp(_shifted_max_pool_fwd, _shifted_max_pool_bwd)
