"""Top-1/top-5 error on the test split of a trained network; one JSON line on stdout.

  python -m launch.evaluate --config=configs/digits_train.py --workdir=/tmp/train
  python -m launch.evaluate --config=configs/sgnas_digits_train.py \
      --workdir=/tmp/sgnas_train
  python -m launch.evaluate --config=configs/cifar10_train.py --config.genotype=PCDARTS \
      --torch_checkpoint=weights.pt

--workdir: the newest checkpoint of a launch.train run (its genotype.json names
the DARTS cells or the SGNAS architecture). --torch_checkpoint: a reference
DARTS / PC-DARTS evaluation network (`torch.save(model.state_dict())`, or a
checkpoint dict with a `state_dict` entry), read with torch; a .npz of the same
arrays needs no torch.
Exit status 2 on a config, data or checkpoint error.
"""

import json
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from pcdarts_jax import config_validation
from pcdarts_jax import data
from pcdarts_jax import torch_import
from pcdarts_jax import trainer

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Train config file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'A launch.train workdir.')
_TORCH = flags.DEFINE_string('torch_checkpoint', None,
                             'A PyTorch state_dict (.pt/.pth/.tar) or a .npz of its arrays.')
flags.mark_flags_as_required(['config'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if (_WORKDIR.value is None) == (_TORCH.value is None):
    raise app.UsageError('Give exactly one of --workdir and --torch_checkpoint.')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every restore at INFO.
  try:
    state_dict = torch_import.read_state_dict(_TORCH.value) if _TORCH.value else None
    result = trainer.evaluate_checkpoint(_CONFIG.value, workdir=_WORKDIR.value,
                                         torch_state_dict=state_dict)
  except (config_validation.ConfigError, data.DataError, ValueError, OSError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  print(json.dumps(result), flush=True)


if __name__ == '__main__':
  app.run(main)
