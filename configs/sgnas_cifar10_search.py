"""SGNAS search on CIFAR-10: the CIFAR-100 config with 10 classes.

  python -m launch.search --config=configs/sgnas_cifar10_search.py --workdir=/tmp/sg10
"""

from configs import sgnas_cifar100_search


def get_config():
  config = sgnas_cifar100_search.get_config()
  config.data.name = 'cifar10'
  config.data.mean = (0.49139968, 0.48215827, 0.44653124)
  config.data.std = (0.24703233, 0.24348505, 0.26158768)
  config.model.num_classes = 10
  return config
