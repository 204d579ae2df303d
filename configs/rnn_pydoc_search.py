"""A quick offline DARTS recurrent cell search on the Python documentation.

  python -m launch.search --config=configs/rnn_pydoc_search.py --workdir=/tmp/rnn_pydoc

The corpus is pydoc_data.topics, the help texts that ship with Python (~74k word
tokens, ~1.6k-word vocabulary after rare words become <unk>), split 80/10/10 by
lines; no download. The DARTS search (configs/rnn_ptb_search.py) shrunk to run in
minutes on a CPU: size 32, batch 32, bptt 20, 4 epochs, first-order architect
(train_search.py's default), lighter dropout for the small model.
"""

from configs import rnn_ptb_search


def get_config():
  config = rnn_ptb_search.get_config()
  config.data.name = 'pydoc'

  config.model.emsize = 32
  config.model.nhid = 32
  config.model.dropout = 0.3
  config.model.dropouth = 0.1
  config.model.dropoutx = 0.3
  config.model.dropouti = 0.1

  config.search.epochs = 4
  config.search.batch_size = 32
  config.search.bptt = 20
  config.search.architect = 'first_order'
  config.search.log_every_steps = 0
  return config
