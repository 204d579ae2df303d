"""Train an evaluation network from scratch; an existing workdir is resumed.

  python -m launch.train --config=configs/digits_train.py --workdir=/tmp/train \
      [--config.genotype=DARTS_V2 --config.train.epochs=2 ...]

Exit status: 0 done, or stopped by SIGTERM/SIGINT after writing a checkpoint
(run the same command to resume); 1 the loss went non-finite; 2 a config, data
or workdir error (nothing was written).
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
from pcdarts_jax import trainer

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Train config file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for the training outputs.')
_CACHE = flags.DEFINE_string(
    'compilation_cache',
    os.path.join(os.environ.get('XDG_CACHE_HOME', os.path.expanduser('~/.cache')),
                 'pcdarts_jax', 'xla'),
    'Persistent XLA compilation cache (a resumed run skips compiling). Empty: off.')
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
    trainer.train(_CONFIG.value, _WORKDIR.value)
  except (config_validation.ConfigError, data.DataError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  except loop.NonFiniteError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  except trainer.TrainingInterrupted as e:
    print(str(e), flush=True)
    sys.exit(0)


if __name__ == '__main__':
  app.run(main)
