"""Step-throughput measurements: compile time, ms/step, images/s, memory, FLOPs.

Each measurement jits one function, compiles it explicitly (timed), runs
`warmup` calls, then times `steps` calls one by one (blocking on the result, so
a time is the whole step). Inputs are already on the device unless the
measurement is about the input pipeline.
"""

import contextlib
import ctypes
import ctypes.util
import fcntl
import hashlib
import json
import os
import platform
import resource
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

from absl import logging
import jax
from jax.extend import core as jax_core
import jax.numpy as jnp
import numpy as np

from pcdarts_jax.run import config_fields
from pcdarts_jax.search import architect
from pcdarts_jax.data import datasets as data
from pcdarts_jax.nn import fused_ops
from pcdarts_jax.spaces.darts import genotypes
from pcdarts_jax.data import pipeline as input_pipeline
from pcdarts_jax.search import search as loop
from pcdarts_jax.train import networks
from pcdarts_jax.nn import ops
from pcdarts_jax.search import optim
from pcdarts_jax.search import progressive
from pcdarts_jax.search import seeds
from pcdarts_jax.bench import program
from pcdarts_jax.rnn import lm as rnn_lm
from pcdarts_jax.rnn import search as rnn_search
from pcdarts_jax.rnn import train as rnn_train
from pcdarts_jax.spaces.darts import space as darts_space
from pcdarts_jax.spaces.darts import supernet
from pcdarts_jax.spaces.rnn import corpus as rnn_corpus
from pcdarts_jax.spaces.rnn import model as rnn_model
from pcdarts_jax.spaces.rnn import steps as rnn_steps
from pcdarts_jax.train import train as trainer

MEASUREMENTS = ('weight_step', 'arch_step', 'bilevel_step', 'pipeline', 'fed_step')
# Of a search config, on request: the bilevel step lowered for a platform, not run.
PROGRAM_MEASUREMENTS = ('program',)
TRAIN_MEASUREMENTS = ('train_step', 'eval_step')  # of a training config (launch.train)
# With search.num_seeds > 1: the steps the vmapped N-seed search runs.
SEED_MEASUREMENTS = ('bilevel_step', 'fed_step', 'program')
# model.space='rnn': the recurrent cell search's step (arch and weight step on one
# window each) and the training step of a recurrent genotype.
RNN_MEASUREMENTS = ('bilevel_step',)
RNN_TRAIN_MEASUREMENTS = ('train_step',)
# Vocabulary sizes of the corpora an RNN config names when the files are not here.
RNN_VOCABULARY = {'ptb': 10000, 'wikitext2': 33278}


def is_train_config(config) -> bool:
  """A config of launch.train (a network trained from scratch), not of a search."""
  return 'train' in config and 'search' not in config


def is_rnn_config(config) -> bool:
  return config_fields.space(config.model) == 'rnn'


def measurements_of(config) -> tuple:
  if is_rnn_config(config):
    return RNN_TRAIN_MEASUREMENTS if is_train_config(config) else RNN_MEASUREMENTS
  return TRAIN_MEASUREMENTS if is_train_config(config) else MEASUREMENTS


def check_measurements(config, names: Sequence[str]) -> None:
  """ValueError naming every measurement the config's kind does not have."""
  allowed = measurements_of(config) + (
      () if is_train_config(config) or is_rnn_config(config) else PROGRAM_MEASUREMENTS)
  unknown = [name for name in names if name not in allowed]
  if unknown:
    kind = 'training' if is_train_config(config) else 'search'
    rnn = " of model.space='rnn'" if is_rnn_config(config) else ''
    raise ValueError(f'--measure={",".join(unknown)} is not one of {allowed} '
                     f'(a {kind} config{rnn})')
  n = 1 if is_train_config(config) or is_rnn_config(config) else seeds.num_seeds(config)
  single = [name for name in names if name not in SEED_MEASUREMENTS]
  if n > 1 and single:
    raise ValueError(f'--measure={",".join(single)} measures one search; with '
                     f'search.num_seeds={n} allowed: {SEED_MEASUREMENTS}')


def config_digest(config) -> str:
  text = config.to_json_best_effort(sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:12]


_PROC_SELF = '/proc/self'
_peak_rss_before_resets = 0  # Bytes: the process peak that resets have cleared.


def _release_free_heap() -> None:
  """Hands the C heap's free pages back to the OS (glibc malloc_trim): memory
  that compilation used and freed otherwise stays in the RSS."""
  try:
    ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6').malloc_trim(0)
  except (OSError, AttributeError):  # Not glibc.
    pass


def reset_peak_rss() -> bool:
  """Restarts the process's peak-RSS count (Linux: VmHWM) after releasing the
  heap's free pages, so the next `peak_rss_since_reset` excludes compilation.
  False where that is not possible."""
  global _peak_rss_before_resets
  # Linux's ru_maxrss follows the reset too: keep the peak so far for peak_memory.
  _peak_rss_before_resets = max(_peak_rss_before_resets, peak_rss_since_reset() or 0)
  _release_free_heap()
  try:
    with open(os.path.join(_PROC_SELF, 'clear_refs'), 'w') as f:
      f.write('5')
    return True
  except OSError:
    return False


def peak_rss_since_reset() -> Optional[int]:
  """Peak RSS in bytes since `reset_peak_rss` (Linux VmHWM); None if unreadable."""
  try:
    with open(os.path.join(_PROC_SELF, 'status')) as f:
      for line in f:
        if line.startswith('VmHWM:'):
          return int(line.split()[1]) * 1024  # Reported in kB.
  except OSError:
    pass
  return None


def stepping_rss_meter() -> Callable[[], Optional[int]]:
  """CPU: restarts the peak-RSS count (call it after compiling) and returns a
  reader of the peak since, comparable with a framework that does not compile;
  elsewhere, or where the count cannot be restarted, a reader of None."""
  if jax.devices()[0].platform != 'cpu' or not reset_peak_rss():
    return lambda: None
  return peak_rss_since_reset


def peak_memory() -> Dict[str, Any]:
  """Accelerator: the device's peak bytes in use; CPU: the process's peak RSS
  (which only grows: a sweep reports the largest so far)."""
  device = jax.devices()[0]
  stats = device.memory_stats() if device.platform != 'cpu' else None
  if stats and 'peak_bytes_in_use' in stats:
    return {'peak_memory_bytes': int(stats['peak_bytes_in_use']),
            'memory_kind': 'device_peak_bytes_in_use'}
  rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux.
  peak = max(int(rss_kb) * 1024, _peak_rss_before_resets, peak_rss_since_reset() or 0)
  return {'peak_memory_bytes': peak, 'memory_kind': 'process_peak_rss'}


# Primitives counted one FLOP per output element (reductions: per input element).
_ELEMENTWISE = frozenset((
    'add', 'add_any', 'sub', 'mul', 'div', 'rem', 'max', 'min', 'neg', 'abs', 'sign',
    'square', 'sqrt', 'rsqrt', 'exp', 'exp2', 'log', 'log1p', 'tanh', 'logistic', 'erf',
    'integer_pow', 'pow'))
_REDUCTIONS = frozenset(('reduce_sum', 'reduce_max', 'reduce_min', 'reduce_prod', 'argmax',
                         'argmin', 'cumsum', 'cummax', 'cumlogsumexp'))


def _size(aval) -> int:
  return int(np.prod(aval.shape, dtype=np.int64)) if hasattr(aval, 'shape') else 1


def _sub_jaxprs(params):
  for value in params.values():
    for item in (value if isinstance(value, (tuple, list)) else (value,)):
      if isinstance(item, jax_core.ClosedJaxpr):
        yield item.jaxpr
      elif isinstance(item, jax_core.Jaxpr):
        yield item


def _real_taps(in_size, kernel, out_size, stride, padding, lhs_dilation, rhs_dilation):
  """(output position, kernel tap) pairs along one axis that read an input pixel,
  not padding or a hole of the input dilation (a strided conv's input gradient)."""
  out = np.arange(out_size)[:, None] * stride + np.arange(kernel)[None, :] * rhs_dilation
  q = out - padding[0]
  return int(np.sum((q >= 0) & (q <= (in_size - 1) * lhs_dilation) & (q % lhs_dilation == 0)))


def _conv_flops(eqn) -> float:
  """2 per real multiply-add: per output batch x feature, the real taps along each
  spatial axis times the kernel's input features (grouped and batch-grouped convs
  of gradients included)."""
  p = eqn.params
  lhs_spec, rhs_spec, out_spec = p['dimension_numbers']
  lhs, rhs, out = (eqn.invars[0].aval.shape, eqn.invars[1].aval.shape,
                   eqn.outvars[0].aval.shape)
  taps = 1
  for axis in range(len(lhs_spec) - 2):
    taps *= _real_taps(lhs[lhs_spec[axis + 2]], rhs[rhs_spec[axis + 2]],
                       out[out_spec[axis + 2]], p['window_strides'][axis], p['padding'][axis],
                       p['lhs_dilation'][axis], p['rhs_dilation'][axis])
  return 2.0 * out[out_spec[0]] * out[out_spec[1]] * taps * rhs[rhs_spec[1]]


def jaxpr_flops(jaxpr, platform: Optional[str] = None) -> float:
  """FLOPs of one run of `jaxpr`: convolutions and matrix products 2 per
  multiply-add, element-wise arithmetic and reductions 1 per element; a scan's
  body times its length, the costliest branch of a cond, the branch of a
  `lax.platform_dependent` that `platform` runs (default: this machine's
  backend). XLA's cost analysis counts a loop body once, so it undercounts a
  scanned supernet many times."""
  platform = platform or jax.default_backend()
  return sum(_eqn_flops(eqn, platform) for eqn in jaxpr.eqns)


def _platform_branch(branches_platforms, platform: str) -> int:
  """The branch of a platform-dependent cond that `platform` runs ('gpu', the
  backend's name, runs the CUDA or ROCm branch)."""
  for index, names in enumerate(branches_platforms):
    if names is None or platform in names or (platform == 'gpu'
                                              and {'cuda', 'rocm'} & set(names)):
      return index
  raise ValueError(f'no branch for platform {platform!r} in {branches_platforms}')


def _eqn_flops(eqn, platform: str) -> float:
  name = eqn.primitive.name
  if name == 'dot_general':
    (contract, _), _ = eqn.params['dimension_numbers']
    lhs = eqn.invars[0].aval.shape
    return 2.0 * _size(eqn.outvars[0].aval) * np.prod([lhs[d] for d in contract])
  if name == 'conv_general_dilated':
    return _conv_flops(eqn)
  if name in _ELEMENTWISE:
    return _size(eqn.outvars[0].aval)
  if name in _REDUCTIONS:
    return _size(eqn.invars[0].aval)
  if name == 'scan':
    return _scan_flops(eqn, platform)
  if name == 'cond' and eqn.params.get('branches_platforms') is not None:
    branch = eqn.params['branches'][_platform_branch(eqn.params['branches_platforms'],
                                                     platform)]
    return jaxpr_flops(branch.jaxpr, platform)
  if name == 'cond':
    return max(jaxpr_flops(b.jaxpr, platform) for b in eqn.params['branches'])
  if name == 'ffi_call':  # depthwise_impl=fused's kernel; other custom calls count 0
    attributes = dict(eqn.params.get('attributes', ()))
    return fused_ops.call_flops(eqn.params.get('target_name'), eqn.invars[0].aval.shape,
                                eqn.invars[1].aval.shape[0],
                                bool(attributes.get('kernel_gradients', 1)),
                                int(attributes.get('stride', 1)),
                                bool(attributes.get('statistics', 0))) or 0.0
  # jit, remat, custom derivatives, while (trip count unknown: once), ...
  return sum(jaxpr_flops(sub, platform) for sub in _sub_jaxprs(eqn.params))


def _scan_flops(eqn, platform: Optional[str] = None) -> float:
  """The body times the scan's length, except for a switch on the scanned
  values with one branch per iteration (the bilevel step's phases, see
  loop.make_bilevel_step): each of its branches counts once."""
  platform = platform or jax.default_backend()
  p = eqn.params
  body, length = p['jaxpr'].jaxpr, p['length']
  # The scanned inputs are those with the extra leading axis (constants and
  # carries keep their shape); JAX 0.11's scans have no num_consts/num_carry.
  per_iteration = {b for outer, b in zip(eqn.invars, body.invars)
                   if len(outer.aval.shape) == len(b.aval.shape) + 1}
  total = 0.0
  for inner in body.eqns:
    reads_iteration = any(isinstance(v, jax_core.Var) and v in per_iteration
                          for v in inner.invars)
    if (inner.primitive.name == 'cond' and len(inner.params['branches']) == length
        and isinstance(inner.invars[0], jax_core.Var) and inner.invars[0] in per_iteration):
      total += sum(jaxpr_flops(b.jaxpr, platform) for b in inner.params['branches'])
      continue
    if reads_iteration:
      per_iteration.update(inner.outvars)
    total += length * _eqn_flops(inner, platform)
  return total


def _xla_flops(compiled) -> Optional[float]:
  try:
    analysis = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except  (not every backend has one)
    return None
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else None
  flops = analysis.get('flops') if analysis else None
  return float(flops) if flops is not None and flops >= 0 else None


def _step_memory(compiled) -> Optional[int]:
  """Bytes XLA planned for one call: arguments, outputs and temporaries, less
  the outputs that reuse donated arguments (compile-time memory excluded)."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except  (not every backend has one)
    return None
  if m is None:
    return None
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
             - m.alias_size_in_bytes)


def _percentiles(times: Sequence[float]) -> Dict[str, float]:
  ms = np.asarray(times) * 1e3
  return {'ms_per_step_median': float(np.median(ms)),
          'ms_per_step_p10': float(np.percentile(ms, 10)),
          'ms_per_step_p90': float(np.percentile(ms, 90))}


def compile_timed(fn: Callable, args: tuple):
  """(compiled executable, seconds spent tracing, lowering and compiling,
  FLOPs counted on the traced program)."""
  start = time.perf_counter()
  traced = fn.trace(*args)
  compiled = traced.lower().compile()
  seconds = time.perf_counter() - start
  try:
    flops = jaxpr_flops(traced.jaxpr.jaxpr)
  except Exception as e:  # pylint: disable=broad-except  (a JAX whose jaxprs we do not know)
    logging.warning('FLOP count of the traced step failed (%r); flops_per_step is None.', e)
    flops = None
  return compiled, seconds, flops


def profiled(trace_dir: Optional[str]):
  """A JAX profiler trace of the block into `trace_dir` (None: no trace)."""
  return jax.profiler.trace(trace_dir) if trace_dir else contextlib.nullcontext()


# Per device lock, the open file of `<lock>.compiling` this process holds a shared
# lock on while it may compile (`compiling`).
_COMPILING: Dict[str, Any] = {}


def compiling(lock_path: Optional[str]) -> None:
  """Marks this process as compiling until it next steps under
  `holding(lock_path)`: a shared lock on `<lock_path>.compiling` (None: nothing).
  Steps are timed only once no benchmark of the lock compiles: a compile's CPU
  load and its autotuning runs on the accelerator would slow the steps timed."""
  if lock_path and lock_path not in _COMPILING:
    f = open(lock_path + '.compiling', 'a')  # pylint: disable=consider-using-with
    fcntl.flock(f, fcntl.LOCK_SH)
    _COMPILING[lock_path] = f


def done_compiling(lock_path: Optional[str]) -> None:
  """Ends `compiling(lock_path)` (nothing if it was not marked)."""
  f = _COMPILING.pop(lock_path, None) if lock_path else None
  if f is not None:
    fcntl.flock(f, fcntl.LOCK_UN)
    f.close()


# How long a benchmark holding the device lock waits for the others' compiles
# before it steps anyway (its result then says timed_while_compiling): one very
# slow compile must not cost every other variant its figures.
QUIET_WAIT_SECONDS = 180.0


def wait_until_quiet(quiet, seconds: float) -> bool:
  """Takes an exclusive flock on the open file `quiet` (`<lock>.compiling`) once
  no process holds it shared, waiting at most `seconds`; whether it got it."""
  deadline = time.monotonic() + seconds
  while True:
    try:
      fcntl.flock(quiet, fcntl.LOCK_EX | fcntl.LOCK_NB)
      return True
    except BlockingIOError:
      if time.monotonic() >= deadline:
        return False
      time.sleep(0.2)


@contextlib.contextmanager
def holding(lock_path: Optional[str]):
  """An exclusive lock on the file `lock_path` for the block (None: no lock),
  entered once no benchmark of the lock compiles (`compiling`; this process's own
  mark ends here, and starts again afterwards for what it compiles next) or
  QUIET_WAIT_SECONDS have passed. Yields whether the block runs with nothing
  compiling. Benchmarks sharing one accelerator hold it while they step, so that
  they can compile at the same time and still be timed one at a time, on a quiet
  machine."""
  if not lock_path:
    yield True
    return
  was_compiling = lock_path in _COMPILING
  done_compiling(lock_path)  # Else two holders would wait on each other's mark.
  with open(lock_path, 'a') as f, open(lock_path + '.compiling', 'a') as quiet:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield wait_until_quiet(quiet, QUIET_WAIT_SECONDS)
    finally:
      fcntl.flock(quiet, fcntl.LOCK_UN)
      fcntl.flock(f, fcntl.LOCK_UN)
  if was_compiling:
    compiling(lock_path)


def time_jitted(fn: Callable, args: tuple, steps: int, warmup: int, carry_state: bool,
                precompiled=None, trace_dir: Optional[str] = None,
                device_lock: Optional[str] = None) -> Dict[str, Any]:
  """Compile (timed), warm up, then time `steps` calls. With `carry_state`, the
  first output is fed back as the first argument (a training loop).
  `precompiled`: compile_timed's result, reused (a step shared by measurements).
  `trace_dir`: where to write a profiler trace of the timed calls alone.
  `device_lock`: a file locked (`holding`) from the first warm-up call to the last timed one."""
  compiled, compile_seconds, flops = precompiled or compile_timed(fn, args)
  args = list(args)
  times = []
  stepping_rss = stepping_rss_meter()

  def call():
    out = compiled(*args)
    jax.block_until_ready(out)
    if carry_state:
      args[0] = out[0]

  with holding(device_lock) as quiet:
    for _ in range(warmup):
      call()
    with profiled(trace_dir):
      for _ in range(steps):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
  return {'compile_seconds': compile_seconds, 'flops_per_step': flops,
          'xla_flops_per_step': _xla_flops(compiled),
          'step_memory_bytes': _step_memory(compiled),
          'stepping_peak_rss_bytes': stepping_rss(),
          'timed_while_compiling': not quiet, **_percentiles(times)}


def _synthetic_split(config, size: int, seed: int) -> data.ArraySet:
  shape = input_pipeline.image_shape(config.data)
  rng = np.random.default_rng(seed)
  return data.ArraySet(rng.integers(0, 256, (size,) + shape, dtype=np.uint8),
                       rng.integers(0, config.model.num_classes, size).astype(np.int32))


def _without_download(data_config):
  data_config = data_config.copy_and_resolve_references()
  data_config.download = False  # Measure now: never start a download.
  return data_config


def splits_or_synthetic(config, batch_size: int, load: Callable, count: int):
  """(splits, data source, images the first split has per epoch in the real data
  set): `load(data_config)`'s `count` splits when they can be read here and each
  holds a batch, else random images of the same shape (the step's cost does not
  depend on pixel values) and the size from `data.TRAIN_SIZES` (a search's
  weight share of it: `train_portion`, ImageNet's per-class `train_fraction`)."""
  d = config.data
  try:
    splits = load(_without_download(d))
    if min(len(split) for split in splits) >= batch_size:
      return splits, d.name, len(splits[0])
  except data.DataError:
    pass
  size = max(4 * batch_size, 256)
  return (tuple(_synthetic_split(config, size, seed) for seed in range(count)),
          f'synthetic {d.name}-shaped', _known_share(d))


def _known_share(data_config) -> Optional[int]:
  """Images per epoch of the first split by data.TRAIN_SIZES (None: not listed)."""
  known = data.TRAIN_SIZES.get(data_config.name)
  share = data_config.get('train_fraction', data_config.get('train_portion', 1.0))
  return int(np.floor(share * known)) if known else None


def with_architect(config, architect_name: str):
  """A copy of a search config with search.architect set."""
  config = config.copy_and_resolve_references()
  config.search.architect = architect_name
  return config


def for_platform(config, platform: str, architect_name: str):
  """A copy of a search config with search.architect set and its `auto`
  choices (model.dtype, model.depthwise_impl, model.edge_impl) resolved as a
  machine whose backend is `platform` resolves them when it traces the step: a
  program lowered for a GPU on a CPU machine is then the one a GPU machine runs."""
  config = with_architect(config, architect_name)
  m = config.model
  dtype = config_fields.model_dtype(m, platform)
  impl = ops.resolve_depthwise_impl(architect.depthwise_impl(config), dtype, backend=platform)
  if impl == 'fused' and not (platform == 'cpu' and fused_ops.available()):
    impl = 'shifted'  # What ops run where the XLA:CPU kernel is not available.
  with config.unlocked():
    m.dtype = dtype
    m.depthwise_impl = impl
    m.edge_impl = supernet.resolve_edge_impl(
        m.get('edge_impl', 'auto'), m.get('channel_sampling', 'first'),
        m.get('primitives', genotypes.PRIMITIVES), platform=platform)
  return config


def stage_overrides(config, stage: Optional[int]) -> Dict[str, Any]:
  """`build_supernet`'s K and op masks at DrNAS progressive-learning stage
  `stage` (1-based; None: the config's model as it is). After the first stage
  the masks are pruned stage by stage, as the search prunes them, from random
  arch values drawn with a fixed seed: every run measures the same supernet,
  whose kept ops are spread over the edges as a real search's may be."""
  if stage is None:
    return {}
  if is_train_config(config) or config_fields.space(config.model) != 'darts':
    raise ValueError('--stage applies to the search configs of the DARTS space only')
  all_stages = progressive.stages(config)
  if not 1 <= stage <= len(all_stages):
    raise ValueError(f'--stage={stage} is not a stage of this config: it has stages '
                     f'1..{len(all_stages)} (search.stage_epochs)')
  edges = genotypes.node_edge_ranges(config.model.get('steps', 4))[-1][1]
  ops_count = len(config.model.get('primitives', genotypes.PRIMITIVES))
  rng, masks = np.random.default_rng(0), None
  for later in all_stages[1:stage]:
    arch = {f'alphas_{kind}': rng.normal(size=(edges, ops_count)) for kind in ('normal', 'reduce')}
    masks = darts_space.prune_masks(arch, later.ops_kept, masks)
  return {'partial_channels': all_stages[stage - 1].partial_channels, 'op_masks': masks}


def trace_search_step(config, batch_size: int, stage: Optional[int] = None):
  """The search loop's step (the bilevel step behind the non-finite guard, as
  loop.search builds it for one device), traced for a batch of `batch_size`:
  `jax.jit(step).trace(...)`, ready to lower for any platform. `stage`: that
  DrNAS stage's supernet (stage_overrides)."""
  model = supernet.build_supernet(config, depthwise_impl=architect.depthwise_impl(config),
                                  **stage_overrides(config, stage))
  steps_per_epoch = max((_known_share(config.data) or batch_size) // batch_size, 1)
  weight_tx = optim.weight_optimizer(config, steps_per_epoch)
  arch_tx = optim.arch_optimizer(config)
  shape = input_pipeline.image_shape(config.data)
  sample = jnp.zeros((1,) + shape, jnp.float32)
  # Initialised for real (its initializers leave JAX), then only its shapes are used.
  state = jax.eval_shape(lambda s: s, loop.create_search_state(
      model, config, jax.random.PRNGKey(0), sample, weight_tx, arch_tx))
  n, rng = seeds.num_seeds(config), jax.random.PRNGKey(1)
  per_seed = n > 1 and seeds.seed_data(config) == 'per_seed'
  lead = (n,) if per_seed else ()
  batch = {'image': jax.ShapeDtypeStruct(lead + (batch_size,) + shape, jnp.uint8),
           'label': jax.ShapeDtypeStruct(lead + (batch_size,), jnp.int32)}
  step = loop.guard_nonfinite(
      loop.make_bilevel_step(model, config, steps_per_epoch, weight_tx, arch_tx),
      skip=config.search.skip_nonfinite)
  if n > 1:  # The N-seed search's step: the seed axis on all but the step.
    state = jax.tree.map(lambda x: jax.ShapeDtypeStruct((n,) + x.shape, x.dtype),
                         state.replace(step=None)).replace(step=state.step)
    step, rng = seeds.vmap_step(step, seeds.seed_data(config)), jax.random.split(rng, n)
  return jax.jit(step, donate_argnums=0).trace(state, batch, batch, rng)


def measure_program(config, batch_size: int, platform: str,
                    architect_name: str = 'first_order',
                    stage: Optional[int] = None) -> Dict[str, Any]:
  """The search step of `config` (at DrNAS stage `stage`) lowered for
  `platform` (not compiled, not run; no device of that platform needed): what
  it executes per step (program.py), its FLOPs, and the choices it was lowered
  with."""
  config = for_platform(config, platform, architect_name)
  start = time.perf_counter()
  traced = trace_search_step(config, batch_size, stage)
  module = program.lower(traced, platform)
  seconds = time.perf_counter() - start
  m = config.model
  return {'target_platform': platform, 'dtype': m.dtype, 'depthwise_impl': m.depthwise_impl,
          'edge_impl': m.edge_impl, 'lowering_seconds': seconds,
          'flops_per_step': jaxpr_flops(traced.jaxpr.jaxpr, platform),
          'module_ops': program.module_ops(module), **program.count(module).as_dict()}


class SearchBench:
  """The search steps of one config at one batch size."""

  def __init__(self, config, batch_size: int, stage: Optional[int] = None):
    self.config = config
    self.batch_size = batch_size
    # A DrNAS stage's K and op masks (stage_overrides; {}: the config's supernet).
    self.overrides = stage_overrides(config, stage)
    # weight_images: per search epoch, of the real data set even when synthetic.
    (self.train_set, self.arch_set), self.data_source, self.weight_images = (
        splits_or_synthetic(config, batch_size, data.search_splits, count=2))
    self.model = supernet.build_supernet(config, depthwise_impl=architect.depthwise_impl(config),
                                         **self.overrides)
    self.steps_per_epoch = max(len(self.train_set) // batch_size, 1)
    self.weight_tx = optim.weight_optimizer(config, self.steps_per_epoch)
    self.arch_tx = optim.arch_optimizer(config)
    sample = data.normalize(self.train_set.images[:1], config.data.mean, config.data.std)
    create = lambda rng: loop.create_search_state(self.model, config, rng, sample,
                                                  self.weight_tx, self.arch_tx)
    # search.num_seeds = N > 1: N searches stepped by one vmapped step (search/seeds.py).
    self.num_seeds = seeds.num_seeds(config)
    self.per_seed = self.num_seeds > 1 and seeds.seed_data(config) == 'per_seed'
    if self.num_seeds == 1:
      self.state, self.rng = create(jax.random.PRNGKey(0)), jax.random.PRNGKey(1)
    else:
      self.state = seeds.create_states(create, seeds.seed_keys(config)[0])
      self.rng = jax.random.split(jax.random.PRNGKey(1), self.num_seeds)
    take = lambda s: jax.device_put(self._seed_batch(
        [{'image': s.images[:batch_size], 'label': s.labels[:batch_size]}] * self.num_seeds))
    self.train_batch, self.arch_batch = take(self.train_set), take(self.arch_set)
    self.trace_dir = None  # Set by iter_run: trace the timed steps there.
    self.device_lock = None  # Set by iter_run: held while stepping.
    self._compiled = {}

  def _state(self):
    # A fresh copy each time: the steps donate their state argument.
    return jax.tree.map(jnp.copy, self.state)

  def _seed_batch(self, batches):
    """One batch per seed -> the step's input: one batch shared by the seeds,
    or a seed axis (search.seed_data='per_seed')."""
    return seeds.stack_batches(batches) if self.per_seed else batches[0]

  def model_for(self, architect_name: str):
    """The supernet an architect runs, as the search builds it (see
    architect.depthwise_impl)."""
    impl = architect.depthwise_impl(with_architect(self.config, architect_name))
    if impl == architect.depthwise_impl(self.config):
      return self.model
    # Same parameters: only the ops' form differs.
    return supernet.build_supernet(self.config, depthwise_impl=impl, **self.overrides)

  def _bilevel(self, architect_name: str):
    """The search loop's step, arch steps on from step 0, compiled once per
    architect (bilevel_step and fed_step share it)."""
    if architect_name not in self._compiled:
      config = with_architect(self.config, architect_name)
      config.search.arch_start_epoch = 0
      step = loop.make_bilevel_step(self.model_for(architect_name), config,
                                    self.steps_per_epoch, self.weight_tx, self.arch_tx)
      if self.num_seeds > 1:
        step = seeds.vmap_step(step, seeds.seed_data(config))
      step = jax.jit(step, donate_argnums=0)
      self._compiled[architect_name] = compile_timed(
          step, (self._state(), self.train_batch, self.arch_batch, self.rng))
    return self._compiled[architect_name]


  def _updates(self, architect_name: str = 'first_order') -> loop.Updates:
    """The search step's own updates (loop.make_updates), as the search builds them."""
    return loop.make_updates(self.model_for(architect_name),
                             with_architect(self.config, architect_name),
                             self.steps_per_epoch, self.weight_tx, self.arch_tx)

  def weight_step(self, steps, warmup, **_):
    """The search's weight update alone (augmentation, forward/backward, SGD),
    without the arch branch so that XLA's FLOP count is the weight step's."""
    updates = self._updates()

    def step(state, train_batch, arch_batch, rng):
      del arch_batch
      train_rng, _, channels, _ = loop.step_keys(rng)
      return updates.weight(state, updates.augment(train_rng, train_batch['image']),
                            train_batch['label'], channels)

    return time_jitted(jax.jit(step, donate_argnums=0),
                       (self._state(), self.train_batch, self.arch_batch, self.rng),
                       steps, warmup, carry_state=True, trace_dir=self.trace_dir,
                       device_lock=self.device_lock)

  def bilevel_step(self, steps, warmup, architect_name='first_order'):
    return time_jitted(None, (self._state(), self.train_batch, self.arch_batch, self.rng),
                       steps, warmup, carry_state=True,
                       precompiled=self._bilevel(architect_name), trace_dir=self.trace_dir,
                       device_lock=self.device_lock)

  def arch_step(self, steps, warmup, architect_name='first_order'):
    """The search's architecture update alone (its augmentation included)."""
    updates = self._updates(architect_name)

    def step(state, train_batch, arch_batch, rng):
      train_rng, arch_rng, _, channels = loop.step_keys(rng)
      return updates.arch(state, updates.augment(arch_rng, arch_batch['image']),
                          arch_batch['label'], updates.augment(train_rng, train_batch['image']),
                          train_batch['label'], channels)

    return time_jitted(jax.jit(step, donate_argnums=0),
                       (self._state(), self.train_batch, self.arch_batch, self.rng),
                       steps, warmup, carry_state=True, trace_dir=self.trace_dir,
                       device_lock=self.device_lock)

  def pipeline(self, steps, warmup, **_):
    """Host batches (shuffled gather) and their transfer to the device, no step."""
    train_iter = data.EpochIterator(self.train_set, self.batch_size, seed=0)
    arch_iter = data.EpochIterator(self.arch_set, self.batch_size, seed=1)
    times = []
    with holding(self.device_lock) as quiet:  # The transfers share the host-device link.
      for i in range(warmup + steps):
        start = time.perf_counter()
        batches = jax.device_put((next(train_iter), next(arch_iter)))
        jax.block_until_ready(batches)
        if i >= warmup:
          times.append(time.perf_counter() - start)
    return {'compile_seconds': 0.0, 'flops_per_step': None, 'xla_flops_per_step': None,
            'step_memory_bytes': None, 'stepping_peak_rss_bytes': None,
            'timed_while_compiling': not quiet, **_percentiles(times)}

  def fed_step(self, steps, warmup, architect_name='first_order'):
    """The bilevel step fed by the pipeline, as the search loop runs it (next
    batches prepared while the device computes)."""
    compiled, compile_seconds, flops = self._bilevel(architect_name)
    streams = self.num_seeds if self.per_seed else 1  # One input stream per seed, or one.
    iterators = lambda split, seed: [data.EpochIterator(split, self.batch_size, seed=seed + 2 * i)
                                     for i in range(streams)]
    train_iters, arch_iters = iterators(self.train_set, 0), iterators(self.arch_set, 1)
    feed = lambda its: self._seed_batch([next(it) for it in its])
    state = self._state()
    stepping_rss = stepping_rss_meter()
    with holding(self.device_lock) as quiet:
      for _ in range(warmup):
        state, _ = compiled(state, feed(train_iters), feed(arch_iters), self.rng)
      jax.block_until_ready(state)
      with profiled(self.trace_dir):
        start = time.perf_counter()
        for _ in range(steps):  # Asynchronous dispatch: host work overlaps the step.
          state, _ = compiled(state, feed(train_iters), feed(arch_iters), self.rng)
        jax.block_until_ready(state)
        per_step = (time.perf_counter() - start) / steps
    return {'compile_seconds': compile_seconds, 'flops_per_step': flops,
            'xla_flops_per_step': _xla_flops(compiled),
            'step_memory_bytes': _step_memory(compiled),
            'stepping_peak_rss_bytes': stepping_rss(), 'timed_while_compiling': not quiet,
            'ms_per_step_median': per_step * 1e3, 'ms_per_step_p10': None,
            'ms_per_step_p90': None}


class TrainBench:
  """The training step and the eval step of a training config's network (a
  genotype trained from scratch, as launch.train runs it) at one batch size."""

  def __init__(self, config, batch_size: int):
    self.config = config
    self.batch_size = batch_size
    # weight_images: the train split's, real even when the images are synthetic.
    (train_set,), self.data_source, self.weight_images = splits_or_synthetic(
        config, batch_size, lambda d: (data.load_split(d, 'train'),), count=1)
    steps_per_epoch = max(len(train_set) // batch_size, 1)
    self.model = networks.build_network(config, None, networks.resolve_architecture(config))
    self.tx = trainer.optimizer(config, steps_per_epoch)
    self.state = trainer.create_train_state(self.model, config, jax.random.PRNGKey(0),
                                            steps_per_epoch)
    self.batch = {'image': jax.device_put(train_set.images[:batch_size]),
                  'label': jax.device_put(train_set.labels[:batch_size])}
    self.rng = jax.random.PRNGKey(1)
    self.trace_dir = None  # Set by iter_run: trace the timed steps there.
    self.device_lock = None  # Set by iter_run: held while stepping.
    # The final drop-path probability: the costliest epoch's step.
    self.drop_path_prob = jnp.float32(config.model.get('drop_path_prob', 0.0))

  def train_step(self, steps, warmup, **_):
    """Augmentation (cutout included), forward/backward with drop-path and the
    auxiliary head, SGD update."""
    step = jax.jit(trainer.make_train_step(self.model, self.config, self.tx), donate_argnums=0)
    return time_jitted(step, (jax.tree.map(jnp.copy, self.state), self.batch, self.rng,
                              self.drop_path_prob), steps, warmup, carry_state=True,
                       trace_dir=self.trace_dir,
                       device_lock=self.device_lock)

  def eval_step(self, steps, warmup, **_):
    """Inference with the BatchNorm running statistics, loss and accuracy sums."""
    batch = dict(self.batch, mask=jnp.ones((self.batch_size,), jnp.float32))
    step = jax.jit(trainer.make_eval_step(self.model, self.config))
    return time_jitted(step, (self.state, batch), steps, warmup, carry_state=False,
                       trace_dir=self.trace_dir,
                       device_lock=self.device_lock)


class RNNBench:
  """The steps of a model.space='rnn' config at one batch size, on one device: the
  search's bilevel step (an arch step on a window of the arch stream, then a weight
  step on a train window) or the training step of its genotype, on windows of bptt
  steps. The corpus of config.data when it is here, else random words of the
  corpus' vocabulary size (a step's cost does not depend on which words)."""

  def __init__(self, config, batch_size: int):
    self.config = config
    self.batch_size = batch_size
    self.training = is_train_config(config)
    self.section = config.train if self.training else config.search
    bptt = self.section.bptt
    try:
      corpus = rnn_corpus.load_corpus(config.data)
      ntokens, stream = corpus.ntokens, corpus.train
      self.data_source, self.train_tokens = config.data.name, len(corpus.train)
    except (OSError, ValueError):
      ntokens = RNN_VOCABULARY.get(config.data.name, 10000)
      stream = np.random.default_rng(0).integers(0, ntokens, 4 * batch_size * (bptt + 1))
      self.data_source, self.train_tokens = f'synthetic {config.data.name}-sized', None
    self.weight_images = None  # Not images: see tokens_per_second.
    rows = rnn_corpus.batchify(np.resize(stream, max(len(stream), 2 * batch_size * (bptt + 1))),
                               batch_size)
    x, y, length = rnn_lm.window(rows, 0, bptt)
    self.window = (jax.device_put(x), jax.device_put(y), np.int32(length))
    self.ntokens = ntokens
    self.genotype = rnn_train.resolve_genotype(config.genotype) if self.training else None
    self.rng = jax.random.PRNGKey(1)
    self.trace_dir = None  # Set by iter_run: trace the timed steps there.
    self.device_lock = None  # Set by iter_run: held while stepping.

  def tokens_per_step(self) -> int:
    return self.batch_size * self.section.bptt

  def bilevel_step(self, steps, warmup, architect_name='first_order'):
    """rnn/search.py's step: the arch step (first or second order) and the weight step."""
    config = with_architect(self.config, architect_name)
    model = rnn_model.build_model(self.ntokens, config.model)
    opt = rnn_search.arch_optimizer(config)
    state = rnn_lm.LMState(step=jnp.zeros((), jnp.int32), core=rnn_steps.init_search_state(
        model, jax.random.PRNGKey(0), self.batch_size, opt))
    step = jax.jit(rnn_search.make_step(model, config, opt), donate_argnums=0)
    x, y, length = self.window
    lr = np.float32(config.search.learning_rate)
    return time_jitted(step, (state, x, y, x, y, length, length, np.bool_(False), self.rng,
                              lr), steps, warmup, carry_state=True, trace_dir=self.trace_dir,
                       device_lock=self.device_lock)

  def train_step(self, steps, warmup, **_):
    """rnn/train.py's SGD step of the config's genotype."""
    model = rnn_model.build_model(self.ntokens, self.config.model, self.genotype)
    state = rnn_train.init_state(model, self.config, jax.random.PRNGKey(0))
    step = jax.jit(rnn_train.make_step(model, self.config, 'sgd'), donate_argnums=0)
    x, y, length = self.window
    return time_jitted(step, (state, x, y, length, np.bool_(False), self.rng,
                              np.float32(self.config.train.learning_rate)), steps, warmup,
                       carry_state=True, trace_dir=self.trace_dir, device_lock=self.device_lock)

  def project(self, ms: float) -> Dict[str, Any]:
    """Minutes of the whole run at this step time, steps alone (windows of ~0.975 bptt:
    bptt w.p. 0.95, else half)."""
    what = 'train' if self.training else 'search'
    if not self.train_tokens or not ms:
      return {f'projected_{what}_minutes': None, 'projection': None}
    s = self.section
    windows = int(self.train_tokens // self.batch_size / (0.975 * s.bptt))
    return {f'projected_{what}_minutes': s.epochs * windows * ms / 6e4,
            'projection': f'{s.epochs} epochs x ~{windows} windows of {self.batch_size} x '
                          f'~{0.975 * s.bptt:.1f} tokens ({self.train_tokens} train tokens); '
                          f'steps only'}


def project_training(config, train_images: Optional[int], batch_size: int,
                     train_ms: float) -> Dict[str, Any]:
  """Minutes of the config's whole training at this step time, steps alone."""
  if not train_images or not train_ms:
    return {'projected_train_minutes': None, 'projection': None}
  t = config.train
  steps = train_images // batch_size
  return {'projected_train_minutes': t.epochs * steps * train_ms / 6e4,
          'projection': f'{t.epochs} epochs x {steps} steps of {batch_size} ({train_images} '
                        f'train images); steps only'}


def environment() -> Dict[str, Any]:
  device = jax.devices()[0]
  return {'device_kind': device.device_kind, 'platform': device.platform,
          'device_count': jax.device_count(), 'jax_version': jax.__version__,
          'host': platform.node(),
          # The compiler's flags change the figures (autotuning, command buffers).
          'xla_flags': os.environ.get('XLA_FLAGS', '')}


def run(config, measurements: Sequence[str], batch_size: int, steps: int, warmup: int,
        architects: Sequence[str] = ('first_order',), config_name: str = '') -> List[Dict]:
  """Every requested measurement at one batch size; one dict per result."""
  return list(iter_run(config, measurements, batch_size, steps, warmup, architects,
                       config_name))


def iter_run(config, measurements: Sequence[str], batch_size: int, steps: int, warmup: int,
             architects: Sequence[str] = ('first_order',),
             config_name: str = '', trace_dir: Optional[str] = None,
             device_lock: Optional[str] = None,
             platform: Optional[str] = None,
             stage: Optional[int] = None) -> Iterator[Dict]:
  """`run`, each result yielded when it is measured: a long sweep that is stopped
  or fails part way (a compiler crash, out of memory) keeps what it measured.
  `trace_dir`: a profiler trace of each measurement's timed steps goes to
  trace_dir/<measurement>[_<architect>]_b<batch> (the pipeline's is not traced).
  `device_lock`: a file each measurement locks while it steps (`holding`).
  `platform`: what `program` lowers for (default: this machine's).
  `stage`: a search config's DrNAS progressive stage (1-based, stage_overrides)."""
  check_measurements(config, measurements)  # Before anything is built.
  stage_overrides(config, stage)  # Refuses a stage the config does not have.
  compiling(device_lock)  # Until each measurement steps; ended when the run ends.
  try:
    yield from _iter_run(config, measurements, batch_size, steps, warmup, architects,
                         config_name, trace_dir, device_lock, platform, stage)
  finally:
    done_compiling(device_lock)


def _iter_run(config, measurements, batch_size, steps, warmup, architects, config_name,
              trace_dir, device_lock, platform, stage):
  m = config.model
  timed = [name for name in measurements if name not in PROGRAM_MEASUREMENTS]
  bench = None  # Data, state and steps: only for what runs.
  rnn = is_rnn_config(config)
  dtype = config_fields.model_dtype(m)
  # The supernet's layout fields, none for a training or RNN config.
  edges = dict.fromkeys(('edge_impl', 'merge_separable', 'unroll_edges', 'bilevel_phases'))
  if rnn:
    bench = RNNBench(config, batch_size)
  elif is_train_config(config):
    bench = TrainBench(config, batch_size)
  else:
    bench = SearchBench(config, batch_size, stage) if timed else None
    edges = {'edge_impl': supernet.resolve_edge_impl(
                 m.get('edge_impl', 'auto'), m.get('channel_sampling', 'first'),
                 m.get('primitives', genotypes.PRIMITIVES)),
             'merge_separable': bool(m.get('merge_separable', False)),
             'unroll_edges': bool(m.get('unroll_edges', False)),
             'bilevel_phases': config_fields.bilevel_phases(config.search)}
  base = {'config': config_name, 'config_digest': config_digest(config),
          'batch_size': batch_size, 'data': bench.data_source if bench else None,
          'steps': steps, 'warmup': warmup, 'stage': stage, **edges,
          'depthwise_impl': None if rnn else ops.resolve_depthwise_impl(  # `auto` resolved
              m.get('depthwise_impl', 'auto'), dtype),
          'dtype': dtype,
          'num_seeds': (None if is_train_config(config) or rnn
                        else seeds.num_seeds(config)),
          **environment()}
  weight_ms = None
  for name in measurements:
    per_architect = name in ('arch_step', 'bilevel_step', 'fed_step', 'program')
    for arch_name in (architects if per_architect else (None,)):
      if name == 'program':  # Lowered, not run: no data, steps or memory.
        lowered_base = {k: v for k, v in base.items() if k not in ('data', 'steps', 'warmup')}
        yield {'measurement': name, 'architect': arch_name, **lowered_base,
               **measure_program(config, batch_size, platform or program.default_platform(),
                                 arch_name, stage)}
        continue
      kwargs = {'architect_name': arch_name} if arch_name else {}
      trace = (os.path.join(trace_dir, '_'.join(filter(None, (name, arch_name)))
                            + f'_b{batch_size}')
               if trace_dir and name != 'pipeline' else None)
      bench.trace_dir = trace
      bench.device_lock = device_lock
      figures = getattr(bench, name)(steps, warmup, **kwargs)
      ms = figures['ms_per_step_median']
      flops = figures['flops_per_step']
      ran = {}
      if rnn:  # Sequences (rows of bptt tokens) rather than images.
        ran['tokens_per_second'] = bench.tokens_per_step() / (ms / 1e3) if ms else None
        ran['bptt'] = bench.section.bptt
      elif arch_name and not is_train_config(config):  # what this architect's net ran
        ran['depthwise_impl'] = ops.resolve_depthwise_impl(
            architect.depthwise_impl(with_architect(config, arch_name)), dtype)
      result = {'measurement': name, 'architect': arch_name, **base, **ran, **figures,
                'trace': trace,
                'images_per_second': batch_size / (ms / 1e3) if ms else None,
                'flops_per_second': flops / (ms / 1e3) if flops and ms else None,
                **peak_memory()}
      if base['num_seeds'] and name in ('bilevel_step', 'fed_step'):
        # Per search: the step steps every seed once (search_images_per_second: the
        # images of all searches together; equal to images_per_second for one seed).
        n = base['num_seeds']
        result['ms_per_search_step'] = ms / n if ms else None
        result['search_images_per_second'] = n * batch_size / (ms / 1e3) if ms else None
      if name == 'weight_step':
        weight_ms = ms
      if rnn:
        result.update(bench.project(ms))
      elif name in ('bilevel_step', 'fed_step'):
        result.update(project_search(config, bench.weight_images, batch_size, ms, weight_ms))
      elif name == 'train_step':
        result.update(project_training(config, bench.weight_images, batch_size, ms))
      yield result


def project_search(config, weight_images: Optional[int], batch_size: int, bilevel_ms: float,
                   weight_ms: Optional[float] = None) -> Dict[str, Any]:
  """Minutes of the config's whole search at these step times, steps alone (the
  per-epoch validation pass and checkpoints are not counted). Before
  `arch_start_epoch` the loop takes weight steps only: at `weight_ms` when it was
  measured, else at the bilevel time (an upper bound)."""
  if not weight_images or not bilevel_ms:
    return {'projected_search_minutes': None, 'projection': None}
  s = config.search
  steps = weight_images // batch_size
  warm = min(s.arch_start_epoch, s.epochs)
  if not warm:
    basis = 'bilevel steps every epoch (arch steps from epoch 0)'
  elif weight_ms:
    basis = f'weight steps in epochs 0-{warm - 1}, bilevel after'
  else:
    basis = (f'bilevel steps every epoch: an upper bound, epochs 0-{warm - 1} take weight '
             f'steps only (measure weight_step too)')
  ms = steps * (warm * (weight_ms or bilevel_ms) + (s.epochs - warm) * bilevel_ms)
  return {'projected_search_minutes': ms / 6e4,
          'projection': f'{s.epochs} epochs x {steps} steps of {batch_size} ({weight_images} '
                        f'weight images); {basis}; steps only'}


def project_search_from_epochs(epoch_seconds: Sequence[float], arch_start_epoch: int,
                               wall_seconds: float, epochs: int,
                               target_arch_start_epoch: int) -> Dict[str, Any]:
  """Wall-clock seconds of a whole search (`epochs` epochs, arch steps from epoch
  `target_arch_start_epoch` on) from a run that stopped early: it ran the first
  len(epoch_seconds) epochs, arch steps from `arch_start_epoch`, in `wall_seconds`
  (start-up and compiles included). The projection is that wall clock plus each
  epoch still to run at the median of the run's epochs of its kind (weight steps
  only, or bilevel), leaving out the first of a kind (it compiled) when there are
  others. A run that starts arch steps earlier than the target measures both
  kinds in a few epochs. None where a kind still to run was never measured."""
  seconds = [float(s) for s in epoch_seconds]
  kinds = {'weight': seconds[:arch_start_epoch], 'bilevel': seconds[arch_start_epoch:]}
  target = min(target_arch_start_epoch, epochs)
  left = {'weight': max(target - len(kinds['weight']), 0),
          'bilevel': max(epochs - target - len(kinds['bilevel']), 0)}
  typical = {kind: float(np.median(times[1:] if len(times) > 1 else times)) if times else None
             for kind, times in kinds.items()}
  missing = [kind for kind in left if left[kind] and typical[kind] is None]
  result = {'epochs_run': len(seconds), 'epochs': epochs,
            'weight_epoch_seconds': typical['weight'],
            'bilevel_epoch_seconds': typical['bilevel']}
  if missing:
    return {**result, 'projected_wall_seconds': None,
            'projection': f'no {" or ".join(missing)} epoch ran: nothing to project from'}
  projected = wall_seconds + sum(left[k] * typical[k] for k in left if left[k])
  return {**result, 'projected_wall_seconds': projected,
          'projection': (f'{wall_seconds:.0f} s measured for {len(seconds)} epochs, then '
                         f'{left["weight"]} weight-step epochs and {left["bilevel"]} bilevel '
                         f'epochs at their medians')}


def format_table(results: Sequence[Dict]) -> str:
  programs = [r for r in results if r['measurement'] in PROGRAM_MEASUREMENTS]
  results = [r for r in results if r['measurement'] not in PROGRAM_MEASUREMENTS]
  lines = []
  if programs:
    lines += format_program_table(programs).split('\n')
  if not results:
    return '\n'.join(lines)
  header = (f'{"measurement":<14} {"architect":<19} {"batch":>5} {"compile s":>9} '
            f'{"ms/step":>9} {"p10":>8} {"p90":>8} {"img/s":>8} {"GFLOP/step":>10} '
            f'{"GFLOP/s":>8} {"step MB":>8} {"run MB":>8} {"peak MB":>8}')
  lines += [header, '-' * len(header)]
  fmt = lambda v, spec: format(v, spec) if v is not None else '-'
  for r in results:
    lines.append(
        f'{r["measurement"]:<14} {r["architect"] or "":<19} {r["batch_size"]:>5} '
        f'{fmt(r["compile_seconds"], ".1f"):>9} {fmt(r["ms_per_step_median"], ".1f"):>9} '
        f'{fmt(r["ms_per_step_p10"], ".1f"):>8} {fmt(r["ms_per_step_p90"], ".1f"):>8} '
        f'{fmt(r["images_per_second"], ".1f"):>8} '
        f'{fmt(r["flops_per_step"] and r["flops_per_step"] / 1e9, ".2f"):>10} '
        f'{fmt(r["flops_per_second"] and r["flops_per_second"] / 1e9, ".1f"):>8} '
        f'{fmt(r["step_memory_bytes"] and r["step_memory_bytes"] / 2 ** 20, ".0f"):>8} '
        f'{fmt(r["stepping_peak_rss_bytes"] and r["stepping_peak_rss_bytes"] / 2 ** 20, ".0f"):>8} '
        f'{r["peak_memory_bytes"] / 2 ** 20:>8.0f}')
  for r in results:
    if (r.get('num_seeds') or 1) > 1 and r.get('ms_per_search_step'):
      lines.append(f'{r["measurement"]} at batch {r["batch_size"]}: {r["num_seeds"]} searches '
                   f'in {r["ms_per_step_median"]:.1f} ms/step, {r["ms_per_search_step"]:.1f} ms '
                   f'per search step ({r["search_images_per_second"]:.1f} img/s over the '
                   f'searches)')
  for r in results:
    if r.get('tokens_per_second'):
      lines.append(f'{r["measurement"]} at batch {r["batch_size"]} (RNN, windows of '
                   f'{r["bptt"]} tokens): {r["tokens_per_second"]:.0f} tokens/s')
  for r in results:
    for what in ('search', 'train'):
      if r.get(f'projected_{what}_minutes'):
        lines.append(f'{r["measurement"]} at batch {r["batch_size"]}: whole {what} projected at '
                     f'{r[f"projected_{what}_minutes"]:.1f} min ({r["projection"]})')
  return '\n'.join(lines)


def format_program_table(results: Sequence[Dict]) -> str:
  """The program measurements: executions per step of the lowered step."""
  header = (f'{"platform":<8} {"architect":<19} {"batch":>5} {"edges":<14} {"depthwise":<9} '
            f'{"ops":>9} {"convs":>7} {"dots":>7} {"conds":>6} {"loops":>6} {"iters":>7} '
            f'{"calls":>6} {"GFLOP/step":>10} {"lower s":>7}')
  lines = [header, '-' * len(header)]
  for r in results:
    lines.append(
        f'{r["target_platform"]:<8} {r["architect"] or "":<19} {r["batch_size"]:>5} '
        f'{r["edge_impl"] + ("/merged" if r.get("merge_separable") else ""):<14} '
        f'{r["depthwise_impl"]:<9} {r["executed_ops"]:>9} '
        f'{r["executed_convolutions"]:>7} {r["executed_dots"]:>7} {r["conditionals"]:>6} '
        f'{r["while_loops"]:>6} {r["loop_iterations"]:>7} {r["executed_custom_calls"]:>6} '
        f'{r["flops_per_step"] / 1e9:>10.2f} {r["lowering_seconds"]:>7.1f}')
  return '\n'.join(lines)


def to_json_line(result: Dict) -> str:
  return json.dumps(result, sort_keys=True)
