"""DrNAS search in the DARTS space on CIFAR-10 (DrNAS, Chen et al. ICLR 2021,
github.com/xiangning-chen/DrNAS).

  python -m launch.search --config=configs/drnas_cifar10_search.py --workdir=/tmp/drnas

Dirichlet relaxation of the op weights (concentration elu(beta) + 1, a fresh
pathwise-differentiable sample on every forward pass), L2 regulariser (Adam
weight decay 1e-3 on beta), partial channels without edge normalization, 7 ops
(no `none`), searched at evaluation size (C 36, 20 cells). Progressive learning:
25 epochs at k 6 with all 7 ops, then the top 4 ops per edge at k 4 for 25 more;
arch steps from epoch 10 of each stage. Paper: 2.46 +- 0.03% test error after
training, 4.1M params, 0.6 GPU-days.
"""

from configs import cifar10_search

DRNAS_PRIMITIVES = ('max_pool_3x3', 'avg_pool_3x3', 'skip_connect', 'sep_conv_3x3',
                    'sep_conv_5x5', 'dil_conv_3x3', 'dil_conv_5x5')


def get_config():
  config = cifar10_search.get_config()
  m, s = config.model, config.search
  m.primitives = DRNAS_PRIMITIVES
  m.relaxation = 'dirichlet'
  m.edge_normalization = False
  m.init_channels = 36
  m.layers = 20
  m.partial_channels = 6

  s.epochs = 50
  s.stage_epochs = (25, 25)
  s.stage_partial_channels = (6, 4)
  s.stage_ops = (7, 4)
  s.batch_size = 64
  s.learning_rate = 0.1
  s.learning_rate_min = 0.0
  s.lr_schedule_offset = 0            # DrNAS steps its scheduler after each epoch
  s.arch_learning_rate = 6e-4
  s.arch_weight_decay = 1e-3          # the l2 regulariser's scale (Adam weight decay)
  s.arch_regularizer = 'l2'           # l2 | kl
  s.arch_regularizer_scale = 1e-3     # kl: scale of sum_e KL(Dir(a_e) || Dir(1))
  s.arch_start_epoch = 10             # within each stage
  s.eval_batch_size = 250
  return config
