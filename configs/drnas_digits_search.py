"""The embedded DrNAS default: two progressive-learning stages on scikit-learn's
digits, offline, in a few minutes on a 2-core CPU.

  python -m launch.search --config=configs/drnas_digits_search.py --workdir=/tmp/drnas_digits

Dirichlet relaxation with the KL regulariser, 7 ops, no edge normalization;
stage 1: 3 epochs at k 4 with all ops, stage 2: top 4 ops per edge at k 2 for 3
epochs; arch steps from the second epoch of each stage.
"""

from configs import digits_search
from configs import drnas_cifar10_search


def get_config():
  config = digits_search.get_config()
  m, s = config.model, config.search
  m.primitives = drnas_cifar10_search.DRNAS_PRIMITIVES
  m.relaxation = 'dirichlet'
  m.edge_normalization = False
  m.init_channels = 8
  m.layers = 5
  m.partial_channels = 4

  s.epochs = 6
  s.stage_epochs = (3, 3)
  s.stage_partial_channels = (4, 2)
  s.stage_ops = (7, 4)
  s.arch_start_epoch = 1
  s.lr_schedule_offset = 0     # DrNAS steps its scheduler after each epoch
  s.arch_regularizer = 'kl'
  s.arch_regularizer_scale = 1e-3
  return config
