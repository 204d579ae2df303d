"""Architecture search from a config file; an existing workdir is resumed.

  python -m launch.search --config=configs/digits_search.py --workdir=/tmp/run \
      [--config.search.epochs=2 ...]

Exit status: 0 done, or stopped by SIGTERM/SIGINT after writing a checkpoint
(run the same command to resume); 1 a step went non-finite; 2 a config, data or
workdir error (nothing was written).

Uses every local device (pmap; the global batch is split over them). Several
hosts: run the same command on each with --coordinator_address=HOST0:PORT
--num_processes=N --process_id=I.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from pcdarts_jax import config_validation
from pcdarts_jax import data
from pcdarts_jax import loop
from pcdarts_jax import parallel

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Search config file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for the search outputs.')
_CACHE = flags.DEFINE_string(
    'compilation_cache',
    os.path.join(os.environ.get('XDG_CACHE_HOME', os.path.expanduser('~/.cache')),
                 'pcdarts_jax', 'xla'),
    'Persistent XLA compilation cache: a resumed or repeated run skips compiling '
    '(minutes on CPU). Empty string: off.')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None,
    'Multi-host: host:port of process 0 for jax.distributed.initialize. Every process '
    'runs the same command with its own --process_id; only process 0 writes files '
    '(the workdir must be on a file system all processes see, for checkpoints).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Multi-host: process count.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'Multi-host: this process, 0..N-1.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
  if _CACHE.value and not os.environ.get('JAX_COMPILATION_CACHE_DIR'):
    jax.config.update('jax_compilation_cache_dir', _CACHE.value)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)
  try:
    parallel.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value,
                                    _PROCESS_ID.value)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  try:
    loop.search(_CONFIG.value, _WORKDIR.value)
  except (config_validation.ConfigError, data.DataError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  except loop.NonFiniteError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  except loop.SearchInterrupted as e:
    print(str(e), flush=True)
    sys.exit(0)


if __name__ == '__main__':
  app.run(main)
