"""Train a genotype from scratch on CIFAR-10 (DARTS / PC-DARTS evaluation settings).

  python -m launch.train --config=configs/cifar10_train.py --workdir=/tmp/pcdarts_c10 \
      [--config.genotype=DARTS_V2] [--config.data.data_dir=~/tensorflow_datasets]

NetworkCIFAR, C 36, 20 cells, auxiliary head (weight 0.4), 600 epochs, batch 96,
SGD lr 0.025 cosine to 0 (epoch e at lr(e + 1), as the reference steps its
scheduler first), cutout 16, drop-path 0.3 scaled by epoch/epochs.
Reported test error: DARTS_V2 2.76 +- 0.09% (3.3M params), PCDARTS 2.57 +- 0.07%
(3.6M params). `genotype` takes a published name (DARTS_V1, DARTS_V2, PCDARTS,
PC_DARTS_image), a genotype.json, or a search workdir holding one.
"""

import ml_collections
from ml_collections import config_dict

from configs import common


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.genotype = 'PCDARTS'           # published name | genotype.json | search workdir

  config.data = ml_collections.ConfigDict()
  config.data.name = 'cifar10'          # cifar10 | cifar100 | digits | imagenet2012
  config.data.data_dir = config_dict.placeholder(str)  # tfds data dir; None = tfds default
  config.data.download = True           # let tfds download and prepare when missing
  # The hand-downloaded cifar-10/100-binary.tar.gz, prepared offline; None = tfds downloads.
  config.data.archive = config_dict.placeholder(str)
  config.data.crop_padding = 4          # random crop after zero padding
  config.data.random_flip = True
  config.data.mean = (0.49139968, 0.48215827, 0.44653124)
  config.data.std = (0.24703233, 0.24348505, 0.26158768)

  config.model = ml_collections.ConfigDict()
  config.model.network = 'cifar'        # cifar (NetworkCIFAR) | imagenet (NetworkImageNet)
  config.model.init_channels = 36
  config.model.layers = 20
  config.model.num_classes = 10
  config.model.auxiliary = True         # auxiliary head after cell 2*layers//3 (training only)
  config.model.drop_path_prob = 0.3     # final drop-path probability (linear in the epoch)
  config.model.depthwise_impl = 'auto'  # auto | conv | shifted | dense
  config.model.dtype = 'float32'        # float32 | bfloat16 (activations)

  config.train = ml_collections.ConfigDict()
  config.train.epochs = 600
  config.train.batch_size = 96          # global batch, split over the devices
  config.train.eval_batch_size = 500
  config.train.learning_rate = 0.025
  config.train.learning_rate_min = 0.0
  config.train.lr_schedule = 'cosine'   # cosine | linear (PC-DARTS ImageNet), per epoch
  # Epoch e (from 0) runs at lr(e + offset); 1: DARTS' / PC-DARTS' train.py step the
  # scheduler at the start of each epoch (the last epoch runs at learning_rate_min).
  config.train.lr_schedule_offset = 1
  config.train.warmup_epochs = 0        # (epoch + 1) / warmup_epochs times the lr before that
  config.train.warmup_lr = 'base'       # base: of learning_rate | schedule: of that epoch's lr
  config.train.momentum = 0.9
  config.train.nesterov = False         # True: Nesterov momentum (PyTorch's), as NAS-Bench-201
  config.train.weight_decay = 3e-4      # L2 added to the gradient (PyTorch SGD)
  config.train.grad_clip = 5.0          # global-norm clip of the raw gradient; 0 = off
  config.train.label_smoothing = 0.0
  config.train.aux_weight = 0.4
  config.train.cutout_length = 16       # 0 = no cutout
  config.train.eval_every_epochs = 1    # test-split evaluation (always after the last epoch)
  config.train.log_every_steps = 100

  config.checkpoint = common.checkpoint(every_steps=0)
  config.monitor = common.monitor()
  return config
