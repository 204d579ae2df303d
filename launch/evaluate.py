r"""Top-1/top-5 error on the test split of a trained network; one JSON line on stdout.

  python -m launch.evaluate --config=configs/digits_train.py --workdir=/tmp/train
  python -m launch.evaluate --config=configs/sgnas_digits_train.py \
      --workdir=/tmp/sgnas_train
  python -m launch.evaluate --config=configs/nb201_digits_train.py --workdir=/tmp/nb201_train
  python -m launch.evaluate --config=configs/cifar10_train.py --config.genotype=PCDARTS \
      --torch_checkpoint=weights.pt
  python -m launch.evaluate --config=configs/rnn_ptb_train.py --workdir=/tmp/rnn_train \
      --config.data.data_dir=~/data/penn   # a recurrent cell: perplexity

A recurrent cell's run (model.space='rnn') reports validation and test loss and
perplexity of its best validation epoch's weights (best_checkpoint/) instead.

--workdir: the newest checkpoint of a launch.train run (its genotype.json names
the DARTS cells, the SGNAS architecture or the NB-201 cell; --config.genotype is refused with
it, since the weights belong to that architecture). --torch_checkpoint: a reference
DARTS / PC-DARTS evaluation network (`torch.save(model.state_dict())`, or a
checkpoint dict with a `state_dict` entry), read with torch; a .npz of the same
arrays needs no torch.
Exit status 2 on a config, data or checkpoint error.
"""

import json
import os
import sys

from absl import flags
from absl import logging

from launch import common
from pcdarts_jax.rnn import train as rnn_train
from pcdarts_jax.run import config_fields
from pcdarts_jax.search import validation as config_validation
from pcdarts_jax.data import datasets as data
from pcdarts_jax.run import rundir
from pcdarts_jax.train import torch_import
from pcdarts_jax.train import train as trainer

_CONFIG = common.define_config_flag('Training')
_WORKDIR = flags.DEFINE_string('workdir', None, 'A launch.train workdir.')
_TORCH = flags.DEFINE_string('torch_checkpoint', None,
                             'A PyTorch state_dict (.pt/.pth/.tar) or a .npz of its arrays.')


def main(argv):
  common.no_arguments(argv)
  rnn = config_fields.space(_CONFIG.value.model) == 'rnn'
  if rnn and _WORKDIR.value is None:
    common.fail("a recurrent cell config (model.space='rnn') evaluates a launch.train run: "
                "give --workdir (--torch_checkpoint reads the DARTS image networks only).")
  if (_WORKDIR.value is None) == (_TORCH.value is None):
    common.fail('give exactly one of --workdir (a launch.train run) and --torch_checkpoint.')
  if _TORCH.value is not None and not os.path.isfile(_TORCH.value):
    common.fail(f'--torch_checkpoint={_TORCH.value!r}: no such file.')
  if _WORKDIR.value is not None:
    # The checkpoint's weights belong to the architecture they were trained with.
    if 'config.genotype' in flags.FLAGS:
      common.fail('--config.genotype does not go with --workdir: a launch.train checkpoint '
                  'is evaluated with the architecture it was trained with (its '
                  'genotype.json); drop --config.genotype, or evaluate other weights with '
                  '--torch_checkpoint.')
    checkpoints = os.path.join(_WORKDIR.value, 'checkpoints')
    if not rundir.has_checkpoints(checkpoints):
      common.fail(f'--workdir={_WORKDIR.value!r} holds no checkpoint ({checkpoints}); give '
                  f'the workdir of a launch.train run.')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every restore at INFO.
  try:
    if rnn:
      result = rnn_train.evaluate_checkpoint(_CONFIG.value, _WORKDIR.value)
    else:
      state_dict = torch_import.read_state_dict(_TORCH.value) if _TORCH.value else None
      result = trainer.evaluate_checkpoint(_CONFIG.value, workdir=_WORKDIR.value,
                                           torch_state_dict=state_dict)
  except (config_validation.ConfigError, data.DataError, ValueError, OSError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  print(json.dumps(result), flush=True)


if __name__ == '__main__':
  common.app_run(main, __doc__, [common.TRAIN], required=['config'])
