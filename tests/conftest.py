"""Shared test helpers: independent float64 NumPy references (NHWC / HWIO), and
the XLA flags and one persistent XLA compilation cache of each test run."""

import os
import shutil
import tempfile
import types

import numpy as np
import pytest

from tests import compile_options

BN_EPS = 1e-5


def pytest_configure(config):
  """Gives every process of the run compile_options.SUITE_XLA_FLAGS (after the
  caller's XLA_FLAGS) and one fresh XLA compilation cache: the xdist workers and
  the launcher subprocesses inherit the environment, so a program that several
  tests build (same model, same shapes) is compiled once and loaded from disk
  after that. A cache the caller set is used as it is."""
  if hasattr(config, 'workerinput'):
    return
  flags = os.environ.get('XLA_FLAGS', '').split()
  suite = compile_options.SUITE_XLA_FLAGS
  os.environ['XLA_FLAGS'] = ' '.join(flags + [f for f in suite if f not in flags])
  if os.environ.get('JAX_COMPILATION_CACHE_DIR'):
    return
  directory = tempfile.mkdtemp(prefix='pcdarts_jax_tests_xla_')
  os.environ['JAX_COMPILATION_CACHE_DIR'] = directory
  # Cache small programs too: the tests' models are tiny, yet each takes seconds.
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.1')
  config.stash[_CACHE_KEY] = directory
  import sys  # pylint: disable=g-import-not-at-top
  if 'jax' in sys.modules:  # Imported before this hook ran (a plugin): set it there too.
    jax = sys.modules['jax']
    jax.config.update('jax_compilation_cache_dir', directory)
    jax.config.update('jax_persistent_cache_min_compile_time_secs',
                      float(os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS']))


def pytest_unconfigure(config):
  directory = config.stash.get(_CACHE_KEY, None)
  if directory:
    shutil.rmtree(directory, ignore_errors=True)


_CACHE_KEY = pytest.StashKey[str]()


@pytest.hookimpl(tryfirst=True)  # Before xdist's loadgroup reads the marks.
def pytest_collection_modifyitems(config, items):
  """Keeps the tests that share a module-scoped fixture of their own file on one
  xdist worker (`--dist loadgroup`): the fixture (a search, a compiled model) is
  then built once per run instead of once per worker that draws one of them."""
  del config
  for item in items:
    if item.get_closest_marker('xdist_group') or not hasattr(item, '_fixtureinfo'):
      continue
    module = item.getparent(pytest.Module)
    # The last one the test requests: fixtures it builds on come first. Environment
    # fixtures (`*env`) are cheap and shared by most tests of a file: not grouped.
    for name in reversed(item.fixturenames):
      definition = (item._fixtureinfo.name2fixturedefs.get(name) or (None,))[-1]
      if (definition is not None and definition.scope == 'module' and
          definition.baseid == module.nodeid and not name.endswith('env')):
        item.add_marker(pytest.mark.xdist_group(f'{module.name}.{name}'))
        break


def pytest_sessionstart(session):
  """pytest-xdist 3.8 groups a test on the workers by setting the item's
  `_nodeid` to `nodeid@group`; pytest 9.2 no longer reads that attribute, and
  `--dist loadgroup` then spreads each group over the workers, every one
  rebuilding the shared fixtures (minutes of CI time) without a word. Probed
  here on the session node, before any worker starts."""
  config = session.config
  if hasattr(config, 'workerinput') or config.getoption('dist', None) != 'loadgroup':
    return
  had, before = hasattr(session, '_nodeid'), getattr(session, '_nodeid', None)
  session._nodeid = 'probe@group'  # pylint: disable=protected-access
  applied = session.nodeid == 'probe@group'
  if had:
    session._nodeid = before  # pylint: disable=protected-access
  else:
    del session._nodeid  # pylint: disable=protected-access
  if not applied:
    raise pytest.UsageError(
        f'--dist loadgroup would ignore the xdist_group marks under pytest '
        f'{pytest.__version__}: install the pins of requirements.txt.')


def np_relu(x):
  return np.maximum(np.asarray(x, np.float64), 0.0)


def np_bn(y, eps=BN_EPS):
  """Train-mode BN without affine: batch mean and biased variance over N, H, W."""
  y = np.asarray(y, np.float64)
  mean = y.mean(axis=(0, 1, 2))
  var = y.var(axis=(0, 1, 2))  # ddof=0: biased.
  return (y - mean) / np.sqrt(var + eps)


def np_pool(x, kind, k, stride, pad):
  """k x k pool; out-of-image cells are ignored (max: -inf pad, avg: not counted)."""
  x = np.asarray(x, np.float64)
  n, h, w, c = x.shape
  oh = (h + 2 * pad - k) // stride + 1
  ow = (w + 2 * pad - k) // stride + 1
  out = np.empty((n, oh, ow, c))
  for i in range(oh):
    for j in range(ow):
      r0, c0 = i * stride - pad, j * stride - pad
      win = x[:, max(r0, 0):min(r0 + k, h), max(c0, 0):min(c0 + k, w), :]
      out[:, i, j] = win.max(axis=(1, 2)) if kind == 'max' else win.mean(axis=(1, 2))
  return out


def np_conv(x, kernel, stride=(1, 1), padding=((0, 0), (0, 0)), dilation=(1, 1),
            depthwise=False):
  """Cross-correlation, NHWC x HWIO. depthwise: kernel (kh, kw, 1, C)."""
  x = np.asarray(x, np.float64)
  kernel = np.asarray(kernel, np.float64)
  if isinstance(stride, int):
    stride = (stride, stride)
  if isinstance(dilation, int):
    dilation = (dilation, dilation)
  if isinstance(padding, int):
    padding = ((padding, padding), (padding, padding))
  kh, kw = kernel.shape[:2]
  (sh, sw), (dh, dw) = stride, dilation
  xp = np.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
  oh = (xp.shape[1] - dh * (kh - 1) - 1) // sh + 1
  ow = (xp.shape[2] - dw * (kw - 1) - 1) // sw + 1
  out = 0.0
  for a in range(kh):
    for b in range(kw):
      tap = xp[:, a * dh:a * dh + (oh - 1) * sh + 1:sh,
               b * dw:b * dw + (ow - 1) * sw + 1:sw, :]
      if depthwise:
        out = out + tap * kernel[a, b, 0]
      else:
        out = out + tap @ kernel[a, b]
  return out


def np_pointwise(x, kernel, stride=1):
  x = np.asarray(x, np.float64)[:, ::stride, ::stride, :]
  return x @ np.asarray(kernel, np.float64)[0, 0]


def np_factorized_reduce(x, k1, k2):
  """ReLU; 1x1 stride-2 conv on x and on x shifted by one pixel; concat; BN."""
  x = np_relu(x)
  a = np_pointwise(x, k1, 2)
  shifted = x[:, 1::2, 1::2, :]
  # Odd sizes: the library zero-pads the shifted branch's far edge.
  pad_h, pad_w = a.shape[1] - shifted.shape[1], a.shape[2] - shifted.shape[2]
  shifted = np.pad(shifted, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
  b = shifted @ np.asarray(k2, np.float64)[0, 0]
  return np_bn(np.concatenate([a, b], axis=-1))


def np_channel_shuffle(x, groups):
  """Channels viewed as (groups, C/groups), transposed, flattened."""
  x = np.asarray(x)
  *lead, c = x.shape
  x = x.reshape(*lead, groups, c // groups)
  x = np.swapaxes(x, -1, -2)
  return x.reshape(*lead, c)


def _workdir_files(root):
  """Every file under `root` with its bytes and modification time."""
  files = {}
  for directory, _, names in os.walk(root):
    for name in names:
      path = os.path.join(directory, name)
      with open(path, 'rb') as f:
        files[os.path.relpath(path, root)] = (f.read(), os.stat(path).st_mtime_ns)
  return files


@pytest.fixture(scope='session')
def snapshot():
  """`snapshot(root)`: what a run that must change nothing on disk is compared by."""
  return _workdir_files


@pytest.fixture(scope='session')
def ref():
  return types.SimpleNamespace(
      relu=np_relu, bn=np_bn, pool=np_pool, conv=np_conv, pointwise=np_pointwise,
      factorized_reduce=np_factorized_reduce, channel_shuffle=np_channel_shuffle)
