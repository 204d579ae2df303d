"""relu -> depthwise conv -> 1x1 conv as one XLA:CPU custom call (`depthwise_impl='fused'`).

The C++ kernel (kernels/relu_dw_pw.cc, XLA FFI) is compiled on first use with
the machine's C++ compiler (`CXX`, else g++) for the CPU it runs on, and cached
under $PCDARTS_JAX_CACHE (default ~/.cache/pcdarts_jax) by a digest of the
source, the compiler, the flags, the CPU and jaxlib. Where it cannot be built
(no compiler) or a conv is outside what it supports (see `supports`: stride 1
or 2, C in {4, 8, 16}, float32, CPU), ops fall back to the `shifted` XLA form;
a program lowered for another platform than CPU gets that form too.
"""

import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

from pcdarts_jax.nn import functional

SOURCE = os.path.join(os.path.dirname(__file__), 'kernels', 'relu_dw_pw.cc')
FLAGS = ('-O3', '-march=native', '-std=c++20', '-shared', '-fPIC', '-w')
CHANNELS = (4, 8, 16)
ROW_VECTORS = (1, 2, 4, 8, 16)  # W * C / 16
_FORWARD, _BACKWARD = 'pcdarts_relu_dw_pw_forward', 'pcdarts_relu_dw_pw_backward'


def _cpu_identity() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      return ''.join(line for line in f if line.startswith(('model name', 'flags')))[:8192]
  except OSError:
    return platform.processor()


def _compiler() -> Optional[str]:
  return shutil.which(os.environ.get('CXX', 'g++'))


def library_path() -> Optional[str]:
  """Where the compiled kernel for this source, compiler, CPU and jaxlib lives
  (None without a compiler)."""
  compiler = _compiler()
  if compiler is None:
    return None
  digest = hashlib.sha256()
  for part in (open(SOURCE, 'rb').read(), compiler.encode(), ' '.join(FLAGS).encode(),
               _cpu_identity().encode(), jax.lib.__version__.encode()):
    digest.update(part)
  cache = os.environ.get('PCDARTS_JAX_CACHE',
                         os.path.join(os.path.expanduser('~'), '.cache', 'pcdarts_jax'))
  return os.path.join(cache, f'relu_dw_pw-{digest.hexdigest()[:16]}.so')


def build(path: str) -> None:
  """Compiles the kernel to `path`, atomically: a concurrent or failed build
  never leaves a partial library there."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix='.so', dir=os.path.dirname(path))
  os.close(fd)
  try:
    subprocess.run([_compiler(), *FLAGS, '-I', jax.ffi.include_dir(), SOURCE, '-o', tmp],
                   check=True, capture_output=True, text=True, timeout=600)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


@functools.lru_cache(maxsize=None)
def available() -> bool:
  """Builds (once per cache) and registers the kernel; False, with a warning,
  where that fails."""
  if jax.default_backend() != 'cpu':
    return False
  path = library_path()
  if path is None:
    logging.warning('depthwise_impl=fused: no C++ compiler (set CXX); using shifted.')
    return False
  try:
    if not os.path.exists(path):
      build(path)
    import ctypes  # pylint: disable=import-outside-toplevel
    library = ctypes.cdll.LoadLibrary(path)
    jax.ffi.register_ffi_target(_FORWARD, jax.ffi.pycapsule(library.PcdReluDwPwForward),
                                platform='cpu')
    jax.ffi.register_ffi_target(_BACKWARD, jax.ffi.pycapsule(library.PcdReluDwPwBackward),
                                platform='cpu')
  except (OSError, subprocess.SubprocessError, AttributeError) as e:
    detail = getattr(e, 'stderr', '') or e
    logging.warning('depthwise_impl=fused: building %s failed (%s); using shifted.', SOURCE,
                    str(detail)[-2000:])
    return False
  return True


def supports(x_shape, dtype, kernel_size: int, stride: int, padding: int, dilation: int,
             features: int) -> bool:
  """Whether the kernel computes this conv (it also needs available())."""
  if len(x_shape) != 4 or stride not in (1, 2):
    return False
  _, height, width, channels = x_shape
  if stride == 2 and (height % 2 or width % 2):
    return False
  lanes = width // stride * channels  # an output row
  return (jnp.dtype(dtype) == jnp.float32 and features == channels
          and channels in CHANNELS and lanes % 16 == 0 and lanes // 16 in ROW_VECTORS
          and 2 * padding == dilation * (kernel_size - 1))


def call_flops(target_name: str, x_shape, kernel_size: int, kernel_gradients: bool = True,
               stride: int = 1, statistics: bool = False) -> Optional[float]:
  """FLOPs the kernel executes in one call (for the benchmark's FLOP count; the
  backward pass recomputes the forward's depthwise conv where it computes the
  kernel gradients); None for other targets."""
  inputs = float(np.prod(x_shape))
  outputs = inputs / (stride * stride)
  channels, taps = x_shape[-1], kernel_size * kernel_size
  if target_name == _FORWARD:  # relu, depthwise, 1x1 (and the output's sums)
    return inputs + outputs * (2 * taps + 2 * channels + (3 if statistics else 0))
  if target_name == _BACKWARD:
    if not kernel_gradients:  # 1x1 and depthwise input gradients, relu mask
      return inputs + outputs * (2 * taps + 2 * channels)
    # relu and depthwise again, 1x1 data and weight gradients, depthwise kernel
    # and input gradients, relu mask
    return 2 * inputs + outputs * (6 * taps + 4 * channels)
  return None


def _call(name, results, *args, **attrs):
  # vmap (batched edges) runs the kernel once per edge.
  return jax.ffi.ffi_call(name, results, vmap_method='sequential')(
      *args, **{key: np.int64(value) for key, value in attrs.items()})


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def relu_depthwise_pointwise(x, depthwise_kernel, pointwise_kernel, padding: int,
                             dilation: int, stride: int = 1):
  """relu(x) convolved depthwise with (k, k, 1, C) at stride 1 or 2, then with the
  1x1 kernel (1, 1, C, C); float32 NHWC, shapes that `supports` accepts."""
  return _forward_call(x, depthwise_kernel, pointwise_kernel, padding, dilation, stride,
                       statistics=False)[0]


def _xla_chain(x, depthwise_kernel, pointwise_kernel, padding, dilation, stride):
  """What the kernel computes, in XLA ops: its form in a program lowered for
  another platform than CPU, and the derivative of its backward call."""
  y = functional.relu_shifted_depthwise(x, depthwise_kernel, stride, padding, dilation)
  return jnp.einsum('nhwc,co->nhwo', y, pointwise_kernel[0, 0])


def _forward_call(x, depthwise_kernel, pointwise_kernel, padding, dilation, stride,
                  statistics):
  """(y, (2, C) means of y and of y squared over all but the channel axis; zeros
  without `statistics`). The kernel is an XLA:CPU custom call: a program
  lowered for another platform gets the XLA form."""
  n, h, w, c = x.shape
  shapes = (jax.ShapeDtypeStruct((n, h // stride, w // stride, c), x.dtype),
            jax.ShapeDtypeStruct((2, c), x.dtype))

  def on_cpu(x, depthwise_kernel, pointwise_kernel):
    return tuple(_call(_FORWARD, shapes, x, depthwise_kernel, pointwise_kernel,
                       padding=padding, dilation=dilation, stride=stride,
                       statistics=statistics))

  def elsewhere(x, depthwise_kernel, pointwise_kernel):
    y = _xla_chain(x, depthwise_kernel, pointwise_kernel, padding, dilation, stride)
    means = functional.channel_means(y, jnp.square(y)) if statistics else jnp.zeros((2, c), y.dtype)
    return y, means.astype(y.dtype)

  return jax.lax.platform_dependent(x, depthwise_kernel, pointwise_kernel, cpu=on_cpu,
                                    default=elsewhere)


def _kernel_residuals(x, depthwise_kernel, pointwise_kernel):
  """The primals' values and the residuals of the kernel's backward call.

  symbolic_zeros: the primals say whether they are differentiated. Where the
  kernels are not (an architecture gradient), the backward call skips their
  gradients, and with them recomputing the depthwise output. The kernel
  recomputes the rest from x; a 4th residual (None) marks "no kernel gradients"."""
  kernels_perturbed = depthwise_kernel.perturbed or pointwise_kernel.perturbed
  residuals = tuple(a.value for a in (x, depthwise_kernel, pointwise_kernel))
  return residuals, residuals if kernels_perturbed else (*residuals, None)


def _forward(x, depthwise_kernel, pointwise_kernel, padding, dilation, stride):
  primals, residuals = _kernel_residuals(x, depthwise_kernel, pointwise_kernel)
  return relu_depthwise_pointwise(*primals, padding, dilation, stride), residuals


def _backward(padding, dilation, stride, residuals, g):
  kernel_gradients = len(residuals) == 3
  x, depthwise_kernel, pointwise_kernel = residuals[:3]
  if isinstance(g, SymbolicZero):
    g = jnp.zeros(g.aval.shape, g.aval.dtype)
  gx, g_depthwise, g_pointwise = _kernel_backward(
      x, depthwise_kernel, pointwise_kernel, g, padding, dilation, stride, kernel_gradients)
  if not kernel_gradients:
    return gx, None, None
  return gx, g_depthwise, g_pointwise


relu_depthwise_pointwise.defvjp(_forward, _backward, symbolic_zeros=True)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6, 7))
def relu_depthwise_pointwise_normalize(x, depthwise_kernel, pointwise_kernel, padding: int,
                                       dilation: int, stride: int, epsilon: float,
                                       axis_name=None):
  """relu_depthwise_pointwise, then functional.batch_normalize of its output: returns
  (normalized y, batch mean, batch variance). The kernel computes y's
  statistics as it writes y, which saves the BatchNorm's pass over y."""
  return _normalize_forward_values(x, depthwise_kernel, pointwise_kernel, padding, dilation,
                                   stride, epsilon, axis_name)[0]


def _normalize_forward_values(x, depthwise_kernel, pointwise_kernel, padding, dilation, stride,
                              epsilon, axis_name):
  y, means = _forward_call(x, depthwise_kernel, pointwise_kernel, padding, dilation, stride,
                           statistics=True)
  mean, var = functional.moments_from_means(means, axis_name)
  inv_std = jax.lax.rsqrt(var + epsilon)
  normalized = (y - mean) * inv_std
  return (normalized, mean, var), inv_std


def _normalize_forward(x, depthwise_kernel, pointwise_kernel, padding, dilation, stride,
                       epsilon, axis_name):
  primals, residuals = _kernel_residuals(x, depthwise_kernel, pointwise_kernel)
  out, inv_std = _normalize_forward_values(*primals, padding, dilation, stride, epsilon,
                                           axis_name)
  return out, (residuals, out[0], inv_std)


def _normalize_backward(padding, dilation, stride, epsilon, axis_name, residuals, cotangents):
  del epsilon  # in inv_std
  kernel_residuals, normalized, inv_std = residuals
  cotangents = tuple(jnp.zeros(c.aval.shape, c.aval.dtype) if isinstance(c, SymbolicZero)
                     else c for c in cotangents)
  gy = functional.batch_normalize_input_gradient(normalized, inv_std, cotangents, axis_name)
  return _backward(padding, dilation, stride, kernel_residuals, gy)


relu_depthwise_pointwise_normalize.defvjp(_normalize_forward, _normalize_backward,
                                          symbolic_zeros=True)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def _kernel_backward(x, depthwise_kernel, pointwise_kernel, g, padding, dilation, stride,
                     kernel_gradients):
  """The kernel's backward call: (dx, d_depthwise, d_pointwise), the kernel
  gradients zero without kernel_gradients. Differentiating it again (a gradient
  of a gradient: the second-order-exact architect) goes through the same chain
  in XLA ops, see _kernel_backward_bwd. A program lowered for another platform
  than CPU gets the XLA form."""
  shapes = tuple(jax.ShapeDtypeStruct(a.shape, a.dtype)
                 for a in (x, depthwise_kernel, pointwise_kernel))

  def on_cpu(x, depthwise_kernel, pointwise_kernel, g):
    return tuple(_call(_BACKWARD, shapes, x, depthwise_kernel, pointwise_kernel, g,
                       padding=padding, dilation=dilation, stride=stride,
                       kernel_gradients=kernel_gradients))

  def elsewhere(x, depthwise_kernel, pointwise_kernel, g):
    gx, *kernel_grads = _xla_backward(x, depthwise_kernel, pointwise_kernel, g, padding,
                                      dilation, stride)
    if not kernel_gradients:
      kernel_grads = [jnp.zeros_like(k) for k in kernel_grads]
    return (gx, *kernel_grads)

  return jax.lax.platform_dependent(x, depthwise_kernel, pointwise_kernel, g, cpu=on_cpu,
                                    default=elsewhere)


def _xla_backward(x, depthwise_kernel, pointwise_kernel, g, padding, dilation, stride):
  chain = lambda *a: _xla_chain(*a, padding, dilation, stride)
  _, vjp = jax.vjp(chain, x, depthwise_kernel, pointwise_kernel)
  return vjp(g)


def _kernel_backward_fwd(x, depthwise_kernel, pointwise_kernel, g, padding, dilation, stride,
                         kernel_gradients):
  out = _kernel_backward(x, depthwise_kernel, pointwise_kernel, g, padding, dilation, stride,
                         kernel_gradients)
  return out, (x, depthwise_kernel, pointwise_kernel, g)


def _kernel_backward_bwd(padding, dilation, stride, kernel_gradients, residuals, cotangents):
  if not kernel_gradients:  # Those outputs were constant zeros.
    cotangents = (cotangents[0], *(jnp.zeros_like(c) for c in cotangents[1:]))
  backward = lambda *a: _xla_backward(*a, padding, dilation, stride)
  _, vjp = jax.vjp(backward, *residuals)
  return vjp(tuple(cotangents))


_kernel_backward.defvjp(_kernel_backward_fwd, _kernel_backward_bwd)
