"""Train a genotype from scratch on ImageNet, mobile setting (PC-DARTS settings).

  python -m launch.train --config=configs/imagenet_train.py --workdir=/tmp/pcdarts_in \
      [--config.genotype=DARTS_V2] [--config.data.data_dir=~/tensorflow_datasets]

NetworkImageNet, C 48, 14 cells, stride-8 stem, auxiliary head (weight 0.4),
250 epochs, batch 1024, SGD lr 0.5 with linear decay (epoch e at lr(e)), the
first 5 epochs' lr scaled by (e + 1) / 5 (PC-DARTS' train_imagenet.py), label
smoothing 0.1, weight decay 3e-5, no cutout or drop-path. Reported
top-1/top-5 error: DARTS_V2 26.7/8.7% (4.7M params, 574M multiply-adds),
PC_DARTS_image 24.2/7.3% (5.3M, 597M) on 8 V100s.
"""

from ml_collections import config_dict

from configs import cifar10_train


def get_config():
  config = cifar10_train.get_config()
  config.genotype = 'PC_DARTS_image'

  config.data.name = 'imagenet2012'     # streamed by pcdarts_jax.data.pipeline
  config.data.crop_padding = 0          # the pipeline does random-resized crops
  config.data.manual_dir = config_dict.placeholder(str)  # ILSVRC2012 tars (docs/data.md)
  config.data.image_size = 224          # random-resized-crop size (test: resize 256, crop 224)
  config.data.shuffle_buffer = 10_000
  config.data.mock_examples = 0         # > 0: random images in imagenet2012's format (smoke tests)
  config.data.mean = (0.485, 0.456, 0.406)
  config.data.std = (0.229, 0.224, 0.225)

  config.model.network = 'imagenet'
  config.model.init_channels = 48
  config.model.layers = 14
  config.model.num_classes = 1000
  config.model.drop_path_prob = 0.0

  config.train.epochs = 250
  config.train.batch_size = 1024
  config.train.eval_batch_size = 1000
  config.train.learning_rate = 0.5
  config.train.lr_schedule = 'linear'
  config.train.lr_schedule_offset = 0   # adjust_lr(epoch): epoch e at lr(e)
  # The reference warms up only when the batch exceeds 256, scaling the scheduled lr.
  config.train.warmup_epochs = 5
  config.train.warmup_lr = 'schedule'
  config.train.weight_decay = 3e-5
  config.train.label_smoothing = 0.1
  config.train.cutout_length = 0
  config.checkpoint.every_steps = 1000
  return config
