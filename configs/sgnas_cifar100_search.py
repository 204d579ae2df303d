"""SGNAS search on CIFAR-100 (SGNAS, Huang & Chu CVPR 2021, github.com/eric8607242/SGNAS):
both phases.

  python -m launch.search --config=configs/sgnas_cifar100_search.py --workdir=/tmp/sg100
  python -m launch.sgnas_generate --config=configs/sgnas_cifar100_search.py \
      --workdir=/tmp/sg100 --target_flops=100

Phase 1 trains the unified single-path supernet (CIFAR layout: the stem and the
first searchable layer keep 32x32) on 80% of the train split for 200 epochs of
batch 512 (the reference's cifar_config.yml), 4 fair paths per step, SGD lr
0.064 cosine per step, momentum 0.9, wd 4e-4, label smoothing 0.1.
Phase 2 freezes it and trains the generator on the other 20% for 50 epochs of
the same batch 512 (the reference uses one batch size for both phases; its
CIFAR run gets 49 generator epochs from a range(warmup, search) quirk), Adam
1e-3, betas (0.5, 0.999), Gumbel tau 5 x 0.95 per epoch, cross entropy with
label smoothing 0.1, for targets in range(80, 120, 5) MFLOPs.
"""

import ml_collections
from ml_collections import config_dict

from configs import common


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  config.data.name = 'cifar100'         # cifar10 | cifar100 | digits | imagenet2012
  config.data.data_dir = config_dict.placeholder(str)  # tfds data dir; None = tfds default
  config.data.download = True
  # The hand-downloaded cifar-10/100-binary.tar.gz, prepared offline; None = tfds downloads.
  config.data.archive = config_dict.placeholder(str)
  config.data.train_portion = 0.8       # the supernet's share; the rest trains the generator
  config.data.crop_padding = 4
  config.data.random_flip = True
  config.data.in_memory = True
  config.data.mean = (0.5071, 0.4865, 0.4409)
  config.data.std = (0.2673, 0.2564, 0.2762)

  config.model = ml_collections.ConfigDict()
  config.model.space = 'sgnas'          # launch/search.py runs the SGNAS phases
  config.model.layout = 'cifar'         # imagenet | cifar | digits (sgnas/layout.py)
  config.model.num_classes = 100
  config.model.depthwise_impl = 'auto'  # auto | conv | shifted | dense

  config.search = ml_collections.ConfigDict()  # Phase 1: the supernet.
  config.search.epochs = 200
  config.search.batch_size = 512        # also the generator phase's batch
  config.search.num_paths = 4           # single paths trained per step (fairness sampling)
  config.search.learning_rate = 0.064   # cosine to 0 per step
  config.search.momentum = 0.9
  config.search.weight_decay = 4e-4
  config.search.label_smoothing = 0.1
  config.search.grad_clip = 0.0         # > 0: clip the summed gradient's norm
  config.search.eval_batch_size = 500   # validation on the held-out split each epoch
  config.search.log_every_steps = 50
  config.search.num_seeds = 1           # SGNAS runs one search (num_seeds > 1 is refused)

  config.generator = ml_collections.ConfigDict()  # Phase 2: the generator.
  config.generator.epochs = 50
  config.generator.learning_rate = 1e-3
  config.generator.beta1 = 0.5
  config.generator.beta2 = 0.999
  config.generator.label_smoothing = 0.1  # of the soft supernet's cross entropy
  config.generator.hidden = 32          # the reference generator: 3x3 convs at 32 channels,
  config.generator.body_layers = 3      # a residual body of 3 (sgnas/generator.py)
  config.generator.target_channels = 10
  # The soft supernet's switchable BN: rounded_index (the reference: the BN at
  # round(expected skipped groups), no gradient through the choice) | mixture
  config.generator.soft_bn = 'rounded_index'
  config.generator.tau_initial = 5.0    # Gumbel-softmax temperature, x tau_decay per epoch
  config.generator.tau_decay = 0.95
  config.generator.flops_low = 80.0     # targets range(low, high, step), MFLOPs
  config.generator.flops_high = 120.0
  config.generator.flops_step = 5.0
  config.generator.target_jitter = 0.5  # targets drawn as grid + U(-jitter, jitter)
  config.generator.flops_alpha = 3e-4   # FLOPs loss: alpha*lambda*(F-T)^2 above T+margin,
  config.generator.flops_lambda = 1.2   # alpha*(T-F)^2 below T-margin, 0 in between
  config.generator.flops_margin = 0.1
  # The prior pool, as the reference: pool_size priors keyed evenly inside (low, high)
  # (1: one prior, at the middle, for every target), each a random architecture
  # (per layer expansion 2..6 on groups 0..e-1) within pool_bias MFLOPs of its key;
  # or a reference prior_pool.json (its keys and priors; pool_size/pool_bias unused).
  config.generator.pool_size = 1
  config.generator.pool_bias = 1.0
  config.generator.prior_pool_file = config_dict.placeholder(str)
  config.generator.eval_accuracy_targets = 3  # targets whose single path is validated per epoch
  # Which generator generator.msgpack holds (all three are kept in their own files):
  # best_avg (the reference: best top-1 at the middle target among epochs whose FLOPs
  # loss summed over range(low, high, selection_flops_step) is < selection_max_flops_loss;
  # best_loss until one qualifies) | best_loss | tau_minus_error (Kendall tau - rel. error)
  config.generator.selection = 'best_avg'
  config.generator.selection_flops_step = 10.0
  config.generator.selection_max_flops_loss = 0.4

  config.checkpoint = common.checkpoint(every_steps=200, keep=2)
  config.monitor = common.monitor(pictures=False)
  return config
