"""NAS-Bench-201 space search on ImageNet16-120 (16x16 images, 120 classes).

  python -m launch.search --config=configs/nb201_imagenet16_search.py \
      --workdir=/tmp/nb201_in16 --config.data.data_dir=DIR

DIR holds the down-sampled ImageNet 16x16 files train_data_batch_1..10 and
val_data (image-net.org, "Downsampled ImageNet"); the classes 1..120 are kept.
Augmentation as NAS-Bench-201: 2-pixel padding + random crop, flip; the
ImageNet16 mean and std.
"""

from configs import nb201_cifar10_search


def get_config():
  config = nb201_cifar10_search.get_config()
  config.data.name = 'imagenet16_120'
  config.data.download = False          # user-supplied files only
  config.data.crop_padding = 2
  config.data.mean = tuple(x / 255 for x in (122.68, 116.66, 104.01))
  config.data.std = tuple(x / 255 for x in (63.22, 61.26, 65.09))
  config.model.num_classes = 120
  return config
