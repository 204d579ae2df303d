"""DrNAS search in the DARTS space on the ImageNet subset (DrNAS, Chen et al.
ICLR 2021, github.com/xiangning-chen/DrNAS).

  python -m launch.search --config=configs/drnas_imagenet_search.py --workdir=/tmp/drnas_in \
      --config.data.data_dir=/data/tfds --config.data.manual_dir=/data/imagenet

The PC-DARTS ImageNet data (per class 10% weights / 2.5% arch) and stride-8 stem,
searched at evaluation size (C 48, 14 cells) with the Dirichlet relaxation, 7
ops, no edge normalization; progressive learning k 6 -> 3, ops 7 -> 4, 25 + 25
epochs, global batch 512, arch Adam lr 6e-3 with gradient clip 5. Paper: 23.7%
top-1 error, 5.7M params, 4.6 GPU-days.
"""

from configs import drnas_cifar10_search
from configs import imagenet_search


def get_config():
  config = imagenet_search.get_config()
  m, s = config.model, config.search
  m.primitives = drnas_cifar10_search.DRNAS_PRIMITIVES
  m.relaxation = 'dirichlet'
  m.edge_normalization = False
  m.init_channels = 48
  m.layers = 14
  m.partial_channels = 6

  s.epochs = 50
  s.stage_epochs = (25, 25)
  s.stage_partial_channels = (6, 3)
  s.stage_ops = (7, 4)
  s.batch_size = 512
  s.eval_batch_size = 512
  s.learning_rate = 0.5
  s.warmup_epochs = 5
  s.lr_schedule_offset = 0     # DrNAS steps its scheduler after each epoch
  s.arch_learning_rate = 6e-3
  s.arch_grad_clip = 5.0
  s.arch_weight_decay = 1e-3
  s.arch_regularizer = 'l2'
  s.arch_regularizer_scale = 1e-3
  s.arch_start_epoch = 10
  return config
