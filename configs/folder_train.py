"""Train a searched (or published) genotype on your own images (see
configs/folder_search.py for the data fields).

  python -m launch.train --config=configs/folder_train.py --workdir=/tmp/mine_train \
      --config.data.data_dir=~/pictures --config.genotype=/tmp/mine
  python -m launch.evaluate --config=configs/folder_train.py --workdir=/tmp/mine_train \
      --config.data.data_dir=~/pictures

The training recipe is the CIFAR-10 one (DARTS / PC-DARTS, 600 epochs); the
class names the run learnt are in its workdir's classes.json.
"""

from ml_collections import config_dict

from configs import cifar10_train
from configs import folder_search


def get_config():
  config = cifar10_train.get_config()
  folder_search.own_data_fields(config.data)
  config.model.num_classes = config_dict.placeholder(int)  # None: from the data
  return config
