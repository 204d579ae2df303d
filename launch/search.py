"""Architecture search from a config file.

  python -m launch.search --config=configs/digits_search.py --workdir=/tmp/run \
      [--config.search.epochs=2 ...]
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


if __name__ == '__main__':
  app.run(main)
