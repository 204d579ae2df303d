"""The embedded default: train a published genotype from scratch on scikit-learn's
digits, offline, in under a minute on a 2-core CPU.

  python -m launch.train --config=configs/digits_train.py --workdir=/tmp/train

A small NetworkCIFAR (C 8, 3 cells: normal, reduction, reduction) with the
PCDARTS cells trains on the 1500-image train split; the 297 held-out digits are
the test split. Measured: test top-1 accuracy 0.960 after 10 epochs (docs/training.md);
tests/test_train.py requires >= 0.90.
"""

from configs import cifar10_train


def get_config():
  config = cifar10_train.get_config()
  config.data.name = 'digits'
  config.data.crop_padding = 1
  config.data.random_flip = False       # digits are not mirror-symmetric
  config.data.mean = (0.3052,)
  config.data.std = (0.3749,)

  config.model.init_channels = 8
  config.model.layers = 3
  config.model.auxiliary = False        # 8x8 images leave 2x2 maps for the head
  config.model.drop_path_prob = 0.1
  # Dense conv with a diagonal kernel: the same function as the depthwise conv,
  # compiles fastest on XLA:CPU at these widths.
  config.model.depthwise_impl = 'dense'

  config.train.epochs = 10
  config.train.batch_size = 50
  config.train.eval_batch_size = 297
  config.train.learning_rate = 0.1
  config.train.cutout_length = 2
  config.train.log_every_steps = 0
  config.monitor.progress = 'lines'
  return config
