"""Train a NAS-Bench-201 cell from scratch on CIFAR-100 (the recipe of
configs/nb201_cifar10_train.py with 100 classes and AutoDL's CIFAR-100 mean / std).

  python -m launch.train --config=configs/nb201_cifar100_train.py \
      --workdir=/tmp/nb201_c100_train [--config.genotype=/tmp/nb201_c100]

NAS-Bench-201 reports CIFAR-100 test accuracy on a half of the test set (its
x-test split); this trainer tests on all 10k test images.
"""

from configs import nb201_cifar10_train


def get_config():
  config = nb201_cifar10_train.get_config()
  config.data.name = 'cifar100'
  config.data.mean = tuple(x / 255 for x in (129.3, 124.1, 112.4))
  config.data.std = tuple(x / 255 for x in (68.2, 65.4, 70.4))
  config.model.num_classes = 100
  return config
