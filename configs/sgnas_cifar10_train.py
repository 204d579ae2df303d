"""Train an SGNAS architecture from scratch on CIFAR-10 (the stand-alone network).

  python -m launch.train --config=configs/sgnas_cifar10_train.py --workdir=/tmp/sgnas_c10 \
      --config.genotype=/tmp/sg10/architecture_100M.json

As configs/sgnas_cifar100_train.py (CIFAR layout, default genotype SGNAS_A at
111.5 MFLOPs) with CIFAR-10's classes and normalisation. Hyperparameters are
NOT from the SGNAS reference: 200 epochs of batch 128, SGD momentum 0.9, lr 0.1
cosine, weight decay 5e-4, label smoothing 0.1, dropout 0.2.
"""

from configs import sgnas_cifar100_train


def get_config():
  config = sgnas_cifar100_train.get_config()
  config.data.name = 'cifar10'
  config.data.mean = (0.49139968, 0.48215827, 0.44653124)
  config.data.std = (0.24703233, 0.24348505, 0.26158768)
  config.model.num_classes = 10
  return config
