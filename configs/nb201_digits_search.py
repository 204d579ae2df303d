"""The NAS-Bench-201 space on scikit-learn's digits: an offline smoke run.

  python -m launch.search --config=configs/nb201_digits_search.py --workdir=/tmp/nb201

A tiny NB-201 supernet (C 8, 1 cell per stage: 8x8 -> 4x4 -> 2x2) on the 1500
train digits (750 weights / 750 arch), 10 epochs, arch steps from epoch 2;
about 40 s on a 2-core CPU, nearly all of it compilation (0.5 s per epoch).
"""

from configs import digits_search
from configs import nb201_cifar10_search


def get_config():
  config = nb201_cifar10_search.get_config()
  config.data = digits_search.get_config().data
  config.model.init_channels = 8
  config.model.cells_per_stage = 1
  config.model.num_classes = 10
  config.model.partial_channels = 2
  config.search.epochs = 10
  config.search.batch_size = 64
  config.search.arch_start_epoch = 2
  config.search.eval_batch_size = 250
  config.search.log_every_steps = 0
  config.checkpoint.every_steps = 0
  return config
