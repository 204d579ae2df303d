"""Train a recurrent genotype from scratch on Penn Treebank (DARTS evaluation
settings: Liu et al. ICLR 2019, github.com/quark0/darts rnn/train.py).

  python -m launch.train --config=configs/rnn_ptb_train.py --workdir=/tmp/rnn_ptb_train \
      --config.data.data_dir=~/data/penn [--config.genotype=DARTS_V1]

One DARTS cell, embedding and hidden size 850, batch 64, SGD lr 20 switched to
averaged SGD when the validation loss stops improving (nonmono 5), token dropout
0.1 on the embedding. Reported: DARTS_V2 55.7 test perplexity on PTB (23M params);
WikiText-2 (the PTB cell transferred): 69.6. `genotype` takes a published name
(DARTS_V1, DARTS_V2, DARTS = V2), a genotype.json, or a search workdir holding one.
"""

import ml_collections
from ml_collections import config_dict

from configs import common


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 1267
  config.genotype = 'DARTS_V2'          # published name | genotype.json | search workdir

  config.data = ml_collections.ConfigDict()
  config.data.name = 'ptb'              # ptb | wikitext2 (data_dir) | pydoc (offline)
  config.data.data_dir = config_dict.placeholder(str)  # {train,valid,test}.txt
  config.data.pydoc_min_count = 3       # pydoc: rarer train words become <unk>
  config.data.pydoc_portions = (0.8, 0.1)  # pydoc: train, valid shares of the lines

  config.model = ml_collections.ConfigDict()
  config.model.space = 'rnn'
  config.model.emsize = 850             # embedding size = nhid (tied decoder)
  config.model.nhid = 850
  config.model.steps = 8                # search cell only; a genotype brings its own
  config.model.init_range = 0.04        # every weight ~ U(-0.04, 0.04)
  config.model.dropout = 0.75           # cell output (locked)
  config.model.dropouth = 0.25          # h_{t-1} and node inputs (variational)
  config.model.dropoutx = 0.75          # x_t into the cell (variational)
  config.model.dropouti = 0.2           # embedded input (locked)
  config.model.dropoute = 0.1           # whole words of the embedding (paper: 0.1)

  config.train = ml_collections.ConfigDict()
  config.train.epochs = 8000            # train.py's bound; the paper trains to convergence
  config.train.batch_size = 64
  config.train.eval_batch_size = 10     # validation each epoch
  config.train.test_batch_size = 1      # the final test perplexity
  config.train.bptt = 35
  config.train.seq_len_jitter = True    # N(bptt or bptt / 2, 5), at least 5 ...
  config.train.max_seq_len_delta = 20   # ... at most bptt + this
  # Windows are padded up to a multiple of this many steps (at most bptt + delta; the
  # padding is masked): 7 programs for the ~50 sampled lengths. 0: exact lengths.
  config.train.seq_len_bucket = 8
  config.train.learning_rate = 20.0     # SGD / ASGD, scaled by seq_len / bptt
  config.train.weight_decay = 8e-7
  config.train.grad_clip = 0.25         # global norm
  config.train.alpha = 0.0              # AR: alpha * mean(dropped output^2)
  config.train.beta = 1e-3              # TAR: beta * mean((h_{t+1} - h_t)^2)
  config.train.asgd = True              # switch SGD -> ASGD (False: SGD throughout)
  config.train.nonmono = 5              # switch when val loss > min of all but the last 5
  config.train.log_every_steps = 200

  config.checkpoint = common.checkpoint(every_steps=0)
  config.monitor = common.monitor()
  return config
