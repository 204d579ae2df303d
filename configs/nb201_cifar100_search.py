"""NAS-Bench-201 space search on CIFAR-100: the CIFAR-10 one with 100 classes.

  python -m launch.search --config=configs/nb201_cifar100_search.py --workdir=/tmp/nb201_c100
"""

from configs import cifar100_search
from configs import nb201_cifar10_search


def get_config():
  config = nb201_cifar10_search.get_config()
  data = cifar100_search.get_config().data
  config.data.name = data.name
  config.data.mean = data.mean
  config.data.std = data.std
  config.model.num_classes = 100
  return config
