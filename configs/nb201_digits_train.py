"""Train a NAS-Bench-201 cell on scikit-learn's digits: an offline smoke run.

  python -m launch.train --config=configs/nb201_digits_train.py --workdir=/tmp/nb201_train \
      [--config.genotype=/tmp/nb201]   # the workdir of configs/nb201_digits_search.py

A tiny NB-201 network (C 8, 1 cell per stage: 8x8 -> 4x4 -> 2x2) of the best
NAS-Bench-201 cell, the recipe of configs/nb201_cifar10_train.py on the 1500
train digits (1-pixel crop padding, no flip), 5 epochs of batch 50.
"""

from configs import digits_train
from configs import nb201_cifar10_train


def get_config():
  config = nb201_cifar10_train.get_config()
  digits = digits_train.get_config()
  config.data = digits.data
  config.model.init_channels = 8
  config.model.cells_per_stage = 1
  config.train.epochs = 5
  config.train.batch_size = 50
  config.train.eval_batch_size = digits.train.eval_batch_size
  config.train.log_every_steps = 0
  config.monitor.progress = 'lines'
  return config
