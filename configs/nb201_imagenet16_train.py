"""Train a NAS-Bench-201 cell from scratch on ImageNet16-120 (16x16 images, 120
classes), with the recipe of configs/nb201_cifar10_train.py.

  python -m launch.train --config=configs/nb201_imagenet16_train.py \
      --workdir=/tmp/nb201_in16_train --config.data.data_dir=DIR

DIR holds the down-sampled ImageNet 16x16 files (train_data_batch_1..10,
val_data; docs/data.md). The 151,700 train images (116 MB as uint8) are read
into memory. Augmentation as NAS-Bench-201: 2-pixel padding + random crop,
flip; the ImageNet16 mean and std. NAS-Bench-201 reports test accuracy on a
half of val_data (its x-test split); this trainer tests on all 6,000 images.
"""

from configs import nb201_cifar10_train
from configs import nb201_imagenet16_search


def get_config():
  config = nb201_cifar10_train.get_config()
  data = nb201_imagenet16_search.get_config().data
  for field in ('name', 'download', 'crop_padding', 'mean', 'std'):
    config.data[field] = data[field]
  config.model.num_classes = 120
  return config
