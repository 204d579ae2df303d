"""DrNAS on the NAS-Bench-201 space (DrNAS, Chen et al. ICLR 2021,
github.com/xiangning-chen/DrNAS), CIFAR-10.

  python -m launch.search --config=configs/drnas_nb201_search.py --workdir=/tmp/drnas_nb201 \
      [--config.data.name=cifar100 --config.model.num_classes=100] \
      [--config.nb201.table=nb201.json]

Dirichlet relaxation, L2 regulariser, partial channels; progressive learning
(201-space/train_search_progressive.py): 50 epochs at k 4 with all 5 ops, then
the top 3 ops per edge at k 2 for 50 more; arch Adam lr 3e-4; arch steps from
epoch 10 of each stage. The paper's NB-201 accuracies (94.36 / 73.51 / 46.34)
come from the one-stage run: configs/drnas_nb201_nonprogressive_search.py.
"""

from configs import nb201_cifar10_search


def get_config():
  config = nb201_cifar10_search.get_config()
  m, s = config.model, config.search
  m.relaxation = 'dirichlet'
  m.partial_channels = 4
  s.epochs = 100
  s.stage_epochs = (50, 50)
  s.stage_partial_channels = (4, 2)
  s.stage_ops = (5, 3)
  s.arch_learning_rate = 3e-4
  s.arch_regularizer = 'l2'
  s.arch_start_epoch = 10
  return config
