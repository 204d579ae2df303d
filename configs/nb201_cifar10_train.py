"""Train a NAS-Bench-201 cell from scratch on CIFAR-10, with the training recipe
NAS-Bench-201 used for its table (Dong & Yang ICLR 2020,
github.com/D-X-Y/AutoDL-Projects: configs/nas-benchmark/hyper-opts/200E.config).

  python -m launch.train --config=configs/nb201_cifar10_train.py --workdir=/tmp/nb201_c10_train \
      [--config.genotype=/tmp/nb201_c10]

`genotype`: an NB-201 search workdir, a genotype.json, or an NB-201 string such as
'|nor_conv_1x1~0|+|none~0|avg_pool_3x3~1|+|none~0|none~1|skip_connect~2|' (quote it
in the shell).

The NB-201 network of the genotype (C 16, 5 cells per stage, ResNet blocks
between the stages); 200 epochs, batch 256, SGD lr 0.1 cosine to 0 with epoch e
at lr(e), Nesterov momentum 0.9, weight decay 5e-4, no gradient clip; random
crop (4-pixel padding) and flip, AutoDL's CIFAR-10 mean / std; no cutout,
drop-path, auxiliary head or label smoothing. Trained on the 50k train images,
tested on the 10k test images, as NAS-Bench-201's CIFAR-10 test accuracy.
The default genotype: nor_conv_3x3 on five edges, skip_connect on 0 -> 3
(1,288,506 parameters, 184.73 MFLOPs of convs and classifier at 32x32). NB-201's
CIFAR-10 networks range over 0.073M-1.53M parameters and 7.78-220.11 MFLOPs;
the same counts here (tests/test_nb201_train.py).
"""

from configs import cifar10_train

# The default cell of the NB-201 train configs: five 3x3 convs and a skip.
NB201_BEST = ('|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+'
              '|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|')


def get_config():
  config = cifar10_train.get_config()
  config.genotype = NB201_BEST          # NB-201 string | genotype.json | NB-201 search workdir
  config.data.mean = tuple(x / 255 for x in (125.3, 123.0, 113.9))
  config.data.std = tuple(x / 255 for x in (63.0, 62.1, 66.7))

  m = config.model
  for darts_only in ('layers', 'auxiliary', 'drop_path_prob', 'depthwise_impl'):
    del m[darts_only]
  m.network = 'nb201'                   # the NB-201 network of an NB-201 cell genotype
  m.init_channels = 16
  m.cells_per_stage = 5                 # cells in each of the 3 stages (C, 2C, 4C)

  t = config.train
  del t.aux_weight
  t.epochs = 200
  t.batch_size = 256
  t.learning_rate = 0.1
  t.learning_rate_min = 0.0
  t.lr_schedule_offset = 0              # AutoDL sets epoch e's lr(e) as the epoch starts
  t.nesterov = True
  t.weight_decay = 5e-4
  t.grad_clip = 0.0
  t.cutout_length = 0
  return config
