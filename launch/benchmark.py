r"""Step-throughput benchmark of a search config or a training config.

  python -m launch.benchmark --config=configs/cifar10_search.py \
      [--batch_size=64] [--measure=weight_step,arch_step,bilevel_step,pipeline,fed_step] \
      [--architects=first_order,second_order] [--sweep] [--steps=10] [--out=bench.jsonl] \
      [--trace_dir=/tmp/traces] [--device_lock=/tmp/gpu.lock] \
      [--config.model.depthwise_impl=dense ...]
  python -m launch.benchmark --config=configs/cifar10_train.py [--measure=train_step,eval_step]
  python -m launch.benchmark --config=configs/cifar10_search.py --measure=program \
      --platform=cuda [--batch_size=256] [--config.model.edge_impl=scan ...]
  python -m launch.benchmark --config=configs/cifar10_search.py --num_seeds=4 --batch_size=32
  python -m launch.benchmark --config=configs/drnas_cifar10_search.py --stage=2 \
      --measure=bilevel_step --steps=2    # compile time and step of DrNAS stage 2
  python -m launch.benchmark --config=configs/rnn_pydoc_search.py \
      [--architects=first_order,second_order]     # the RNN search step: ms/step, tokens/s

`--num_seeds=N` measures the step of N searches vmapped in one program
(search.num_seeds) and reports ms_per_search_step (its time / N).

`--stage=N` measures the supernet of DrNAS progressive stage N of the config
(its K, and op masks pruned from fixed-seed random arch values after stage 1).

`--measure=program` lowers the search step for --platform (cpu, cuda, rocm,
tpu; default: this machine's) without compiling or running it, and counts what
it executes per step: a kernel-count proxy that needs no device of that platform.

Prints one JSON line per measurement on stdout as soon as it is measured
(appended to --out as well) and a table on stderr. Fields: docs/benchmarks.md.
"""

import sys

from absl import flags
from absl import logging
from ml_collections import config_flags

from launch import common
from pcdarts_jax.bench import benchmark
from pcdarts_jax.data import sources
from pcdarts_jax.search import validation as config_validation
from pcdarts_jax.bench import program
from pcdarts_jax.rnn import search as rnn_search
from pcdarts_jax.rnn import train as rnn_train
from pcdarts_jax.spaces.rnn import steps as rnn_steps
from pcdarts_jax.train import train as trainer

_CONFIG = common.define_config_flag('Search or training')
_MEASURE = flags.DEFINE_list('measure', list(benchmark.MEASUREMENTS),
                             f'Measurements: of a search config any of {benchmark.MEASUREMENTS}; '
                             f'of a training config any of {benchmark.TRAIN_MEASUREMENTS} '
                             f'(default: both). Of a search config on request: '
                             f'{",".join(benchmark.PROGRAM_MEASUREMENTS)} (see --platform).')
_ARCHITECTS = flags.DEFINE_list('architects', ['first_order'],
                                'Architect strategies for the arch/bilevel/fed steps.')
_BATCH = flags.DEFINE_integer('batch_size', None, 'Batch size (default: the config\'s).')
_SWEEP = flags.DEFINE_bool('sweep', False, 'Run every batch size of --sweep_batch_sizes.')
_SWEEP_SIZES = flags.DEFINE_list('sweep_batch_sizes', ['32', '64', '128', '256'],
                                 'Batch sizes of --sweep.')
_NUM_SEEDS = flags.DEFINE_integer(
    'num_seeds', None, 'Search configs: N searches stepped by one vmapped step (sets '
    'search.num_seeds; default: the config\'s); measures bilevel_step unless --measure names '
    f'others of {benchmark.SEED_MEASUREMENTS}. Reports ms_per_search_step.')
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed steps per measurement.')
_WARMUP = flags.DEFINE_integer('warmup', 2, 'Untimed steps after compiling.')
_OUT = flags.DEFINE_string('out', None, 'Append the JSON lines to this file.')
_TRACE_DIR = flags.DEFINE_string(
    'trace_dir', None, 'Write a JAX profiler trace of each measurement\'s timed steps under '
    'this folder (<measurement>[_<architect>]_b<batch>/; open with XProf or TensorBoard).')
_DEVICE_LOCK = flags.DEFINE_string(
    'device_lock', None, 'Lock this file while stepping (warm-up and timed steps): several '
    'benchmarks sharing one accelerator then compile at the same time and step one at a time, '
    'once none of them compiles (FILE.compiling).')
_STAGE = flags.DEFINE_integer(
    'stage', None, 'Search configs with DrNAS progressive stages (search.stage_epochs): measure '
    'the supernet of this stage (1-based): its K and, after stage 1, op masks pruned as the '
    'search prunes them, from fixed-seed random arch values.')
_PLATFORM = flags.DEFINE_string(
    'platform', None, f'--measure=program: the platform to lower the step for, one of '
    f'{program.PLATFORMS} (default: this machine\'s). Needs no device of that platform.')


def _is_out_of_memory(error: Exception) -> bool:
  text = str(error)
  return 'RESOURCE_EXHAUSTED' in text or 'Out of memory' in text or 'out of memory' in text


def main(argv):
  common.no_arguments(argv)
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  config = _CONFIG.value
  training = benchmark.is_train_config(config)
  if _NUM_SEEDS.value is not None:
    if training:
      common.fail('--num_seeds applies to search configs (a training config has no seeds)')
    with config.unlocked():
      config.search.num_seeds = _NUM_SEEDS.value
  many = not training and config.search.get('num_seeds', 1) != 1
  # A training config measures its own steps unless --measure names them; N seeds the
  # vmapped bilevel step.
  measure = (_MEASURE.value if flags.FLAGS['measure'].present
             else ['bilevel_step'] if many else list(benchmark.measurements_of(config)))
  try:
    benchmark.check_measurements(config, measure)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  if _PLATFORM.value is not None and _PLATFORM.value not in program.PLATFORMS:
    common.fail(f'--platform={_PLATFORM.value!r} is not one of {program.PLATFORMS}')
  if _PLATFORM.value is not None and not set(measure) & set(benchmark.PROGRAM_MEASUREMENTS):
    common.fail(f'--platform applies to --measure={",".join(benchmark.PROGRAM_MEASUREMENTS)} '
                f'only (measuring {",".join(measure)})')
  if _STAGE.value is not None:
    try:
      benchmark.stage_overrides(config, _STAGE.value)
    except ValueError as e:
      common.fail(str(e))
  rnn = benchmark.is_rnn_config(config)
  architects = rnn_steps.ARCHITECTS if rnn else config_validation.ARCHITECTS
  for name in _ARCHITECTS.value:
    if name not in architects:
      print(f'error: --architects={name!r} is not one of {architects}', file=sys.stderr)
      sys.exit(2)
  try:
    config = sources.resolve_config(config)  # Own data: classes, mean / std.
  except config_validation.ConfigError as e:
    common.fail(str(e))
  section = config.train if training else config.search
  sizes = ([int(b) for b in _SWEEP_SIZES.value] if _SWEEP.value
           else [_BATCH.value or section.batch_size])
  try:
    for b in sizes:
      with config.unlocked():
        section.batch_size = b
        section.eval_batch_size = b
      if rnn:
        (rnn_train.validate_train_config if training
         else rnn_search.validate_search_config)(config)
      elif training:
        trainer.validate_train_config(config)
      else:
        config_validation.validate_search_config(config)
  except config_validation.ConfigError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)

  results, largest = [], None
  out = open(_OUT.value, 'a') if _OUT.value else None
  config_name = config_flags.get_config_filename(flags.FLAGS['config'])

  def emit(result):  # Written as measured: a crash later in the sweep keeps it.
    print(benchmark.to_json_line(result), flush=True)
    if out:
      out.write(benchmark.to_json_line(result) + '\n')
      out.flush()

  for b in sizes:
    try:
      for r in benchmark.iter_run(config, measure, b, _STEPS.value, _WARMUP.value,
                                  _ARCHITECTS.value, config_name=config_name,
                                  trace_dir=_TRACE_DIR.value,
                                  device_lock=_DEVICE_LOCK.value, platform=_PLATFORM.value,
                                  stage=_STAGE.value):
        emit(r)
        results.append(r)
    except Exception as e:  # pylint: disable=broad-except
      if not _is_out_of_memory(e):
        raise
      emit({'measurement': 'out_of_memory', 'batch_size': b, 'error': str(e)[:300],
            'config_digest': benchmark.config_digest(config), **benchmark.environment()})
      break
    largest = b
  if out:
    out.close()
  print(benchmark.format_table(results), file=sys.stderr)
  if _SWEEP.value:
    print(f'largest batch that fits: {largest}', file=sys.stderr)


if __name__ == '__main__':
  common.app_run(main, __doc__, [common.SEARCH, common.TRAIN], required=['config'])
