"""PC-DARTS search on CIFAR-100: the CIFAR-10 search with 100 classes.

  python -m launch.search --config=configs/cifar100_search.py --workdir=/tmp/c100
"""

from configs import cifar10_search


def get_config():
  config = cifar10_search.get_config()
  config.data.name = 'cifar100'
  config.data.mean = (0.5071, 0.4865, 0.4409)
  config.data.std = (0.2673, 0.2564, 0.2762)
  config.model.num_classes = 100
  return config
