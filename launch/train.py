r"""Train an evaluation network from scratch; an existing workdir is resumed.

  python -m launch.train --config=configs/digits_train.py --workdir=/tmp/train \
      [--config.genotype=DARTS_V2 --config.train.epochs=2 ...]
  python -m launch.train --config=configs/sgnas_digits_train.py --workdir=/tmp/sgnas_train \
      [--config.genotype=/tmp/sgd/architecture_0.3M.json]   # an SGNAS architecture

Exit status: 0 done, or stopped by SIGTERM/SIGINT after writing a checkpoint
(run the same command to resume); 1 the loss went non-finite; 2 a config, data
or workdir error (nothing was written). Uses every local device; several hosts
as for launch/search.py (--coordinator_address, --num_processes, --process_id).
"""

from launch import common
from pcdarts_jax.train import train as trainer

_CONFIG, _WORKDIR = common.define_run_flags('Train')


def main(argv):
  common.no_arguments(argv)
  common.check_output_workdir(_WORKDIR.value)
  common.run(lambda: trainer.train(common.run_config(_WORKDIR.value), _WORKDIR.value))


if __name__ == '__main__':
  common.app_run(main, __doc__, [common.TRAIN], required=['config', 'workdir'])
