r"""Architecture search from a config file; an existing workdir is resumed.

  python -m launch.search --config=configs/digits_search.py --workdir=/tmp/run \
      [--config.search.epochs=2 ...]

An SGNAS config (model.space='sgnas', configs/sgnas_*_search.py) runs both of
its phases, the supernet then the generator; then launch/sgnas_generate.py gives
the architecture for a FLOPs budget. A recurrent cell config (model.space='rnn',
configs/rnn_*_search.py) runs the DARTS RNN search on a word-level corpus.

Exit status: 0 done, or stopped by SIGTERM/SIGINT after writing a checkpoint
(run the same command to resume); 1 a step went non-finite; 2 a config, data or
workdir error (nothing was written).

Uses every local device (pmap; the global batch is split over them). Several
hosts: run the same command on each with --coordinator_address=HOST0:PORT
--num_processes=N --process_id=I.
"""

from typing import Callable

from launch import common
from pcdarts_jax.rnn import search as rnn_search
from pcdarts_jax.run import config_fields
from pcdarts_jax.search import search as gradient_search
from pcdarts_jax.sgnas import search as sgnas_search

# The search of each method with its own, by model.space; every other space
# (darts, nb201) runs the gradient-based search.
SEARCHES = {'sgnas': sgnas_search.search, 'rnn': rnn_search.search}

_CONFIG, _WORKDIR = common.define_run_flags('Search')


def search_of(config) -> Callable:
  """search(config, workdir) of the config's method."""
  return SEARCHES.get(config_fields.space(config.model), gradient_search.search)


def main(argv):
  common.no_arguments(argv)
  common.check_output_workdir(_WORKDIR.value)

  def job():
    config = common.run_config(_WORKDIR.value)
    return search_of(config)(config, _WORKDIR.value)
  common.run(job)


if __name__ == '__main__':
  common.app_run(main, __doc__, [common.SEARCH], required=['config', 'workdir'])
