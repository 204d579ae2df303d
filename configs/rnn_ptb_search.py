"""DARTS recurrent cell search on Penn Treebank (Liu et al. ICLR 2019,
github.com/quark0/darts rnn/train_search.py with --unrolled).

  python -m launch.search --config=configs/rnn_ptb_search.py --workdir=/tmp/rnn_ptb \
      --config.data.data_dir=~/data/penn

data_dir holds PTB's train.txt, valid.txt and test.txt (Mikolov's preprocessing, as
AWD-LSTM's data/penn); WikiText-2 alike with --config.data.name=wikitext2. Embedding
and hidden size 300, 8 nodes, SGD lr 20 on the weights, Adam 3e-3 on the
architecture (batches of the valid split), 50 epochs, batch 256. Paper: 1 GPU-day
(second order), the derived cell DARTS_V2.
"""

import ml_collections
from ml_collections import config_dict

from configs import common


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 2

  config.data = ml_collections.ConfigDict()
  config.data.name = 'ptb'              # ptb | wikitext2 (data_dir) | pydoc (offline)
  config.data.data_dir = config_dict.placeholder(str)  # {train,valid,test}.txt
  config.data.pydoc_min_count = 3       # pydoc: rarer train words become <unk>
  config.data.pydoc_portions = (0.8, 0.1)  # pydoc: train, valid shares of the lines

  config.model = ml_collections.ConfigDict()
  config.model.space = 'rnn'            # darts | nb201 | rnn (pcdarts_jax/spaces)
  config.model.emsize = 300             # embedding size = nhid (tied decoder)
  config.model.nhid = 300
  config.model.steps = 8                # intermediate nodes of the cell
  config.model.init_range = 0.04        # every weight ~ U(-0.04, 0.04)
  config.model.dropout = 0.75           # cell output (locked)
  config.model.dropouth = 0.25          # h_{t-1} and node inputs (variational)
  config.model.dropoutx = 0.75          # x_t into the cell (variational)
  config.model.dropouti = 0.2           # embedded input (locked)
  config.model.dropoute = 0.0           # whole words of the embedding

  config.search = ml_collections.ConfigDict()
  config.search.epochs = 50
  config.search.batch_size = 256        # rows of the train and of the arch (valid) stream
  config.search.eval_batch_size = 10    # validation perplexity each epoch
  config.search.test_batch_size = 1
  config.search.bptt = 35
  # train_search.py draws bptt (p 0.95) or bptt / 2 without the N(., 5) jitter of
  # train.py (commented out there); True: the jitter, capped at bptt + max_seq_len_delta.
  config.search.seq_len_jitter = False
  config.search.max_seq_len_delta = 20
  # Windows are padded up to a multiple of this many steps (at most the longest
  # window; the padding is masked): one compiled program for every window length
  # here. 0: exact lengths, one program per length (the tail windows add many).
  config.search.seq_len_bucket = 35
  config.search.learning_rate = 20.0    # SGD, no momentum; scaled by seq_len / bptt
  config.search.weight_decay = 5e-7
  config.search.grad_clip = 0.25        # global norm
  config.search.alpha = 0.0             # AR: alpha * mean(dropped output^2)
  config.search.beta = 1e-3             # TAR: beta * mean((h_{t+1} - h_t)^2)
  config.search.arch_learning_rate = 3e-3
  config.search.arch_weight_decay = 1e-3
  config.search.arch_beta1 = 0.9
  config.search.arch_beta2 = 0.999
  config.search.architect = 'second_order'  # first_order | second_order (--unrolled)
  config.search.log_every_steps = 50

  config.checkpoint = common.checkpoint(every_steps=50)
  config.monitor = common.monitor()
  return config
