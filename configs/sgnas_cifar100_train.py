"""Train an SGNAS architecture from scratch on CIFAR-100 (the stand-alone network).

  python -m launch.train --config=configs/sgnas_cifar100_train.py --workdir=/tmp/sgnas_c100 \
      --config.genotype=/tmp/sg100/architecture_100M.json [--config.model.se=True \
      --config.model.activation=hswish]

`genotype`: an architecture JSON written by launch/sgnas_generate.py for a search
with model.layout='cifar', a train workdir, an architecture string, or a
published name (SGNAS_A/B/C, the reference's ImageNet architectures; their
layers also fit the CIFAR layout). The default, SGNAS_A on the CIFAR layout,
has 111.5 MFLOPs (lookup table, no SE) and 2.81M parameters.

pcdarts_jax.sgnas.network: stem 3x3 s1 -> 32, fixed MBConv 32 -> 16, 19 MBConv
layers of the architecture, 1x1 conv -> 1280, pool, dropout, linear.
Hyperparameters are NOT from the SGNAS reference (its summary gives none for
CIFAR); they are the usual MobileNet-style recipe: 200 epochs of batch 128, SGD
momentum 0.9 (no Nesterov), lr 0.1 cosine to 0, weight decay 5e-4, label
smoothing 0.1, dropout 0.2, random crop + flip, no cutout.
"""

import ml_collections
from ml_collections import config_dict

from configs import common


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.genotype = 'SGNAS_A'           # published name | architecture JSON | string | workdir

  config.data = ml_collections.ConfigDict()
  config.data.name = 'cifar100'         # cifar10 | cifar100 | digits | imagenet2012
  config.data.data_dir = config_dict.placeholder(str)  # tfds data dir; None = tfds default
  config.data.download = True           # let tfds download and prepare when missing
  # The hand-downloaded cifar-10/100-binary.tar.gz, prepared offline; None = tfds downloads.
  config.data.archive = config_dict.placeholder(str)
  config.data.crop_padding = 4          # random crop after zero padding
  config.data.random_flip = True
  config.data.mean = (0.5071, 0.4865, 0.4409)
  config.data.std = (0.2673, 0.2564, 0.2762)

  config.model = ml_collections.ConfigDict()
  config.model.network = 'sgnas'        # the stand-alone network of an SGNAS architecture
  config.model.layout = 'cifar'         # imagenet | cifar | digits (sgnas/layout.py)
  config.model.num_classes = 100
  config.model.se = False               # squeeze-excite (reduction 4, h-sigmoid) in every block
  config.model.activation = 'relu6'     # relu6 | hswish
  config.model.dropout = 0.2            # before the classifier
  config.model.depthwise_impl = 'auto'  # auto | conv | shifted | dense
  config.model.dtype = 'float32'        # float32 | bfloat16 (activations)

  config.train = ml_collections.ConfigDict()
  config.train.epochs = 200
  config.train.batch_size = 128         # global batch, split over the devices
  config.train.eval_batch_size = 500
  config.train.learning_rate = 0.1
  config.train.learning_rate_min = 0.0
  config.train.lr_schedule = 'cosine'   # cosine | linear, per epoch
  config.train.lr_schedule_offset = 0   # epoch e (from 0) runs at lr(e + offset)
  config.train.warmup_epochs = 0        # (epoch + 1) / warmup_epochs times the lr before that
  config.train.warmup_lr = 'base'       # base: of learning_rate | schedule: of that epoch's lr
  config.train.momentum = 0.9
  config.train.nesterov = False         # True: Nesterov momentum (PyTorch's)
  config.train.weight_decay = 5e-4      # L2 added to the gradient (PyTorch SGD)
  config.train.grad_clip = 0.0          # global-norm clip of the raw gradient; 0 = off
  config.train.label_smoothing = 0.1
  config.train.cutout_length = 0        # 0 = no cutout
  config.train.eval_every_epochs = 1    # test-split evaluation (always after the last epoch)
  config.train.log_every_steps = 100

  config.checkpoint = common.checkpoint(every_steps=0)
  config.monitor = common.monitor(pictures=False)
  return config
