"""Plain DARTS search on CIFAR-10 (second order; Liu et al. ICLR
2019, github.com/quark0/darts).

  python -m launch.search --config=configs/darts_search.py --workdir=/tmp/darts \
      [--config.data.data_dir=~/tensorflow_datasets]

The PC-DARTS CIFAR-10 search with DARTS' settings: all channels through the ops
(K = 1, no shuffle), no edge normalization (no betas), batch 64, weight lr 0.025
cosine to 0.001, arch lr 3e-4, arch steps from epoch 0, the unrolled
(second-order) architect. `--config.search.architect=first_order` gives DARTS
first order. Paper: 1 GPU-day (second order), 0.4 (first order).
"""

from configs import cifar10_search


def get_config():
  config = cifar10_search.get_config()
  config.model.partial_channels = 1
  config.model.edge_normalization = False

  config.search.batch_size = 64
  config.search.learning_rate = 0.025
  config.search.learning_rate_min = 0.001
  config.search.arch_learning_rate = 3e-4
  config.search.arch_start_epoch = 0
  config.search.architect = 'second_order'
  return config
