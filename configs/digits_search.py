"""The embedded default: a real PC-DARTS search on scikit-learn's digits, offline.

  python -m launch.search --config=configs/digits_search.py --workdir=/tmp/run

1797 real 8x8 grey-scale handwritten digits ship with scikit-learn; the first
1500 form the train split (750 train the weights, 750 the architecture). A small
supernet (C 8, 5 cells, K 2) searches in a few minutes on a 2-core CPU.
"""

from configs import cifar10_search


def get_config():
  config = cifar10_search.get_config()
  config.data.name = 'digits'
  config.data.crop_padding = 1
  config.data.random_flip = False       # digits are not mirror-symmetric
  config.data.mean = (0.3052,)
  config.data.std = (0.3749,)

  config.model.init_channels = 8
  config.model.layers = 5
  config.model.partial_channels = 2
  # Dense conv with a diagonal kernel: same function as the depthwise conv,
  # compiles fastest on XLA:CPU and runs about as fast for these tiny widths.
  config.model.depthwise_impl = 'dense'

  config.search.epochs = 12
  config.search.batch_size = 64
  config.search.arch_start_epoch = 4
  config.search.eval_batch_size = 250
  config.search.log_every_steps = 0
  return config
