"""Flags and exit handling shared by the run launchers (search, train).

Exit status: 0 done, or stopped by SIGTERM/SIGINT after writing a checkpoint
(run the same command to resume); 1 a step went non-finite; 2 a config, data or
workdir error (nothing was written).
"""

import os
import sys
from typing import Callable, Type

from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from pcdarts_jax import config_validation
from pcdarts_jax import data
from pcdarts_jax import loop
from pcdarts_jax import parallel


def define_run_flags(what: str):
  """--config, --workdir, --compilation_cache and the multi-host flags; returns
  the (config, workdir) flag holders."""
  config = config_flags.DEFINE_config_file('config', None, f'{what} config file.',
                                           lock_config=True)
  workdir = flags.DEFINE_string('workdir', None, f'Directory for the {what} outputs.')
  flags.DEFINE_string(
      'compilation_cache',
      os.path.join(os.environ.get('XDG_CACHE_HOME', os.path.expanduser('~/.cache')),
                   'pcdarts_jax', 'xla'),
      'Persistent XLA compilation cache: a resumed or repeated run skips compiling '
      '(minutes on CPU). Empty string: off.')
  flags.DEFINE_string(
      'coordinator_address', None,
      'Multi-host: host:port of process 0 for jax.distributed.initialize. Every process '
      'runs the same command with its own --process_id; only process 0 writes files '
      '(the workdir must be on a file system all processes see, for checkpoints).')
  flags.DEFINE_integer('num_processes', None, 'Multi-host: process count.')
  flags.DEFINE_integer('process_id', None, 'Multi-host: this process, 0..N-1.')
  flags.mark_flags_as_required(['config', 'workdir'])
  return config, workdir


def run(job: Callable[[], object], interrupted: Type[Exception]):
  """Sets up logging, the compilation cache and jax.distributed, runs `job` and
  maps its errors to the exit statuses above."""
  f = flags.FLAGS
  if not f['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
  if f.compilation_cache and not os.environ.get('JAX_COMPILATION_CACHE_DIR'):
    jax.config.update('jax_compilation_cache_dir', f.compilation_cache)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)
  try:
    parallel.initialize_distributed(f.coordinator_address, f.num_processes, f.process_id)
    job()
  except (config_validation.ConfigError, data.DataError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  except loop.NonFiniteError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  except interrupted as e:
    print(str(e), flush=True)
    sys.exit(0)
