"""The embedded default for SGNAS: both phases on scikit-learn's digits, offline.

  python -m launch.search --config=configs/sgnas_digits_search.py --workdir=/tmp/sgd
  python -m launch.sgnas_generate --config=configs/sgnas_digits_search.py \
      --workdir=/tmp/sgd --target_flops=0.3

A 6-layer unified supernet (8..16 channels, 8x8 inputs; 0.06..0.64 MFLOPs per
architecture) trains on 80% of the 1500 train digits, then the generator on
the other 20% for 50 epochs, targets 0.15..0.425 MFLOPs. The FLOPs loss is
scaled to this range (margin, jitter, and a larger alpha, since squared errors
in MFLOPs are ~1e5 times smaller than on ImageNet). About 2.5 min on a 2-core CPU.
"""

from configs import sgnas_cifar100_search


def get_config():
  config = sgnas_cifar100_search.get_config()
  config.data.name = 'digits'
  config.data.crop_padding = 1
  config.data.random_flip = False       # digits are not mirror-symmetric
  config.data.mean = (0.3052,)
  config.data.std = (0.3749,)
  config.model.layout = 'digits'
  config.model.num_classes = 10
  # Dense conv with a diagonal kernel: the depthwise function, compiles fastest
  # on XLA:CPU at these widths.
  config.model.depthwise_impl = 'dense'

  config.search.epochs = 12
  config.search.batch_size = 50
  config.search.learning_rate = 0.1
  config.search.weight_decay = 1e-4
  config.search.eval_batch_size = 300
  config.search.log_every_steps = 0

  g = config.generator
  g.epochs = 50       # ~1 s each: 6 steps over the 300 held-out digits
  g.flops_low, g.flops_high, g.flops_step = 0.15, 0.45, 0.025
  g.target_jitter = 0.0025
  g.flops_margin = 0.0005
  g.flops_alpha = 300.0
  g.selection_flops_step = 0.05  # twice the training step, as the reference's 10 vs 5
  g.pool_bias = 0.002  # ~3% of random priors land this near the key, as 1 MFLOP on ImageNet
  config.checkpoint.every_steps = 0
  config.monitor.progress = 'lines'
  return config
