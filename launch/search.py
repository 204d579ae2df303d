"""Architecture search from a config file; an existing workdir is resumed.

  python -m launch.search --config=configs/digits_search.py --workdir=/tmp/run \
      [--config.search.epochs=2 ...]

Exit status: 0 done, or stopped by SIGTERM/SIGINT after writing a checkpoint
(run the same command to resume); 1 a step went non-finite; 2 a config, data or
workdir error (nothing was written).
"""

import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from pcdarts_jax import config_validation
from pcdarts_jax import data
from pcdarts_jax import loop

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Search config file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for the search outputs.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
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
