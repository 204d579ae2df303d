"""Search in the NAS-Bench-201 space on CIFAR-10 (NAS-Bench-201, Dong & Yang
ICLR 2020, github.com/D-X-Y/AutoDL-Projects).

  python -m launch.search --config=configs/nb201_cifar10_search.py --workdir=/tmp/nb201_c10 \
      [--config.data.data_dir=~/tensorflow_datasets] [--config.nb201.table=nb201.json]

DrNAS' NAS-Bench-201 search defaults (github.com/xiangning-chen/DrNAS,
201-space/train_search.py with --method darts): C 16, 5 cells per stage, 100
epochs, batch 64, SGD lr 0.025 cosine to 1e-3 (epoch e at lr(e)), momentum
0.9, wd 3e-4; arch Adam 3e-4, betas (0.5, 0.999), wd 1e-3, first order, arch
steps from epoch 0. Plain mixed op (K 1, no edge normalization);
`--config.model.partial_channels=4` for partial channels,
`--config.model.relaxation=dirichlet` for DrNAS' relaxation (or
configs/drnas_nb201_nonprogressive_search.py). The NAS-Bench-201 paper's own
DARTS baseline (AutoDL-Projects: 50 epochs, wd 5e-4, Nesterov) is
configs/nb201_darts_autodl_search.py.
`nb201.table`: an optional results table (pcdarts_jax/spaces/nb201_table.py)
to log the current genotype's benchmark accuracy each epoch.
"""

import ml_collections
from ml_collections import config_dict

from configs import cifar10_search


def get_config():
  config = cifar10_search.get_config()

  config.model.space = 'nb201'          # darts | nb201 (pcdarts_jax/spaces)
  config.model.init_channels = 16
  config.model.cells_per_stage = 5      # cells in each of the 3 stages (C, 2C, 4C)
  config.model.partial_channels = 1     # K: 1/K of the channels go through the ops
  config.model.relaxation = 'softmax'   # softmax | dirichlet | gumbel | gdas
  config.model.edge_normalization = False
  # True: each stage's cells as one scan; compiles sooner, but stepped 21x slower on CPU.
  config.model.scan_cells = False
  # layers, steps, multiplier, stem_multiplier, stem, depthwise_impl, unroll_edges,
  # channel_sampling and channel_mixing belong to the DARTS space; nb201 ignores them.

  config.search.epochs = 100
  config.search.batch_size = 64
  config.search.learning_rate = 0.025
  config.search.learning_rate_min = 1e-3
  config.search.lr_schedule_offset = 0  # epoch e at lr(e): DrNAS steps its scheduler after it
  config.search.momentum = 0.9
  config.search.weight_decay = 3e-4
  config.search.grad_clip = 5.0
  config.search.arch_learning_rate = 3e-4
  config.search.arch_beta1 = 0.5
  config.search.arch_beta2 = 0.999
  config.search.arch_weight_decay = 1e-3
  config.search.arch_start_epoch = 0
  config.search.architect = 'first_order'
  # gumbel / gdas (DrNAS' SNAS and GDAS baselines): tau 10 -> 1, linearly.
  config.search.gumbel_tau_max = 10.0
  config.search.gumbel_tau_min = 1.0
  config.search.gumbel_tau_schedule = 'linear'

  config.nb201 = ml_collections.ConfigDict()
  config.nb201.table = config_dict.placeholder(str)  # JSON/CSV results table; None: no lookup
  return config
