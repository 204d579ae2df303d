"""Train an SGNAS architecture from scratch on ImageNet, mobile setting.

  python -m launch.train --config=configs/sgnas_imagenet_train.py --workdir=/tmp/sgnas_in \
      [--config.genotype=SGNAS_B | --config.genotype=/tmp/sgi/architecture_330M.json] \
      [--config.model.se=True --config.model.activation=hswish] \
      [--config.data.data_dir=~/tensorflow_datasets]

The stand-alone network (ImageNet layout: stem 3x3 s2 -> 32, fixed MBConv
32 -> 16, 19 MBConv layers, 1x1 conv -> 1280, pool, dropout, linear) of
`genotype`: by default the reference's published SGNAS_A (372.4 MFLOPs by the
lookup table, 3.96M parameters; SGNAS_B 325.6, SGNAS_C 280.6), or an
architecture JSON from launch/sgnas_generate.py. Reported top-1: SGNAS-A/B/C
77.1 / 76.8 / 76.2% (final training may add SE and h-swish, model.se /
model.activation; SE adds its MACs on top of the table's).
Hyperparameters are NOT from the SGNAS reference summary; they are the usual
MobileNet-style recipe: 300 epochs of batch 1024, SGD momentum 0.9 (no
Nesterov), lr 0.4 (0.1 per 256) with 5 linear warm-up epochs then cosine to 0,
weight decay 4e-5, label smoothing 0.1, dropout 0.2; random-resized crops and
flips from pcdarts_jax.data.pipeline.
"""

from ml_collections import config_dict

from configs import sgnas_cifar100_train


def get_config():
  config = sgnas_cifar100_train.get_config()
  config.data.name = 'imagenet2012'     # streamed by pcdarts_jax.data.pipeline
  config.data.crop_padding = 0          # the pipeline does random-resized crops
  config.data.manual_dir = config_dict.placeholder(str)  # ILSVRC2012 tars (docs/data.md)
  config.data.image_size = 224          # random-resized-crop size (test: resize 256, crop 224)
  config.data.shuffle_buffer = 10_000
  config.data.mock_examples = 0         # > 0: random images in imagenet2012's format (smoke tests)
  config.data.mean = (0.485, 0.456, 0.406)
  config.data.std = (0.229, 0.224, 0.225)

  config.model.layout = 'imagenet'
  config.model.num_classes = 1000

  config.train.epochs = 300
  config.train.batch_size = 1024
  config.train.eval_batch_size = 1000
  config.train.learning_rate = 0.4
  config.train.warmup_epochs = 5
  config.train.weight_decay = 4e-5
  config.checkpoint.every_steps = 1000
  return config
