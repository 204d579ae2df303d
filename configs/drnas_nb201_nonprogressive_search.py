"""DrNAS on the NAS-Bench-201 space, one stage: the run behind the paper's NB-201
numbers (DrNAS, Chen et al. ICLR 2021, github.com/xiangning-chen/DrNAS,
201-space/train_search.py with its defaults), CIFAR-10.

  python -m launch.search --config=configs/drnas_nb201_nonprogressive_search.py \
      --workdir=/tmp/drnas_nb201_1 [--config.data.name=cifar100 --config.model.num_classes=100] \
      [--config.nb201.table=nb201.json]

Dirichlet relaxation, L2 regulariser (arch Adam weight decay 1e-3), all channels
through the ops (k 1), all 5 ops for 100 epochs, arch steps from the first epoch,
arch Adam lr 3e-4, the lr schedule stepped after each epoch. Paper: test accuracy
94.36 / 73.51 / 46.34 on CIFAR-10 / CIFAR-100 / ImageNet16-120 (the space's
optimum: 94.37 / 73.51 / 47.31); re-runs report lower (e.g. CIFAR-100 70-71):
compare distributions over seeds. configs/drnas_nb201_search.py is the
progressive variant (k 4 -> 2, ops 5 -> 3).
"""

from configs import nb201_cifar10_search


def get_config():
  config = nb201_cifar10_search.get_config()
  m, s = config.model, config.search
  m.relaxation = 'dirichlet'
  m.partial_channels = 1
  s.epochs = 100
  s.arch_learning_rate = 3e-4
  s.arch_weight_decay = 1e-3          # the l2 regulariser's scale (Adam weight decay)
  s.arch_regularizer = 'l2'
  s.arch_start_epoch = 0
  s.lr_schedule_offset = 0            # DrNAS steps its scheduler after each epoch
  return config
