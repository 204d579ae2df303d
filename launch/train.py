r"""Train an evaluation network from scratch; an existing workdir is resumed.

  python -m launch.train --config=configs/digits_train.py --workdir=/tmp/train \
      [--config.genotype=DARTS_V2 --config.train.epochs=2 ...]
  python -m launch.train --config=configs/sgnas_digits_train.py --workdir=/tmp/sgnas_train \
      [--config.genotype=/tmp/sgd/architecture_0.3M.json]   # an SGNAS architecture
  python -m launch.train --config=configs/nb201_digits_train.py --workdir=/tmp/nb201_train \
      [--config.genotype='|nor_conv_1x1~0|+|none~0|avg_pool_3x3~1|+|none~0|none~1|skip_connect~2|']
      # a NAS-Bench-201 cell: its string, a genotype.json or an NB-201 search workdir
  python -m launch.train --config=configs/rnn_ptb_train.py --workdir=/tmp/rnn_train \
      --config.data.data_dir=~/data/penn [--config.genotype=DARTS_V1]   # a recurrent cell

Exit status: 0 done, or stopped by SIGTERM/SIGINT after writing a checkpoint
(run the same command to resume); 1 the loss went non-finite; 2 a config, data
or workdir error (nothing was written). Uses every local device; several hosts
as for launch/search.py (--coordinator_address, --num_processes, --process_id).
"""

from typing import Callable

from launch import common
from pcdarts_jax.rnn import train as rnn_train
from pcdarts_jax.run import config_fields
from pcdarts_jax.train import train as trainer

# The trainer of each space with its own, by model.space; the others (the DARTS,
# SGNAS and NB-201 networks, by model.network) train with pcdarts_jax.train.
TRAINERS = {'rnn': rnn_train.train}

_CONFIG, _WORKDIR = common.define_run_flags('Train')


def train_of(config) -> Callable:
  """train(config, workdir) of the config's space."""
  return TRAINERS.get(config_fields.space(config.model), trainer.train)


def main(argv):
  common.no_arguments(argv)
  common.check_output_workdir(_WORKDIR.value)

  def job():
    config = common.run_config(_WORKDIR.value)
    return train_of(config)(config, _WORKDIR.value)
  common.run(job)


if __name__ == '__main__':
  common.app_run(main, __doc__, [common.TRAIN], required=['config', 'workdir'])
