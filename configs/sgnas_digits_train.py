"""The embedded default for SGNAS training: a stand-alone network from scratch on
scikit-learn's digits, offline, in well under a minute on a 2-core CPU.

  python -m launch.train --config=configs/sgnas_digits_train.py --workdir=/tmp/sgnas_train \
      [--config.genotype=/tmp/sgd/architecture_0.3M.json]

The digits layout (stem 8, fixed MBConv 8 -> 8, 6 MBConv layers of 8..16
channels, two reductions, head 64) on 8x8 images. The default architecture
DEFAULT_ARCHITECTURE (expansions 2,1,3,2,4,2; kernels 3/5/7 mixed) has 0.1328
MFLOPs; pass an architecture written by launch/sgnas_generate.py for
configs/sgnas_digits_search.py to train a generated one. Hyperparameters are
this library's choice (not from the reference).
Measured: test top-1 accuracy 0.963 after 10 epochs (about 13 s of compilation,
then 0.6 s per epoch); tests/test_sgnas_network.py requires >= 0.85.
"""

from configs import sgnas_cifar100_train

# Per layer its 6 groups: 3/5/7 = depthwise kernel, x = skipped.
DEFAULT_ARCHITECTURE = '35xxxx|3xxxxx|357xxx|53xxxx|3577xx|3x5xxx'


def get_config():
  config = sgnas_cifar100_train.get_config()
  config.genotype = DEFAULT_ARCHITECTURE
  config.data.name = 'digits'
  config.data.crop_padding = 1
  config.data.random_flip = False       # digits are not mirror-symmetric
  config.data.mean = (0.3052,)
  config.data.std = (0.3749,)

  config.model.layout = 'digits'
  config.model.num_classes = 10
  config.model.dropout = 0.0
  # Dense conv with a diagonal kernel: the same function as the depthwise conv,
  # compiles fastest on XLA:CPU at these widths.
  config.model.depthwise_impl = 'dense'

  config.train.epochs = 10
  config.train.batch_size = 50
  config.train.eval_batch_size = 297
  config.train.learning_rate = 0.1
  config.train.weight_decay = 1e-4
  config.train.log_every_steps = 0
  config.monitor.progress = 'lines'
  return config
