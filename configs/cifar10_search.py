"""PC-DARTS search on CIFAR-10 (paper defaults: Xu et al. ICLR 2020,
github.com/yuhuixu1993/PC-DARTS).

  python -m launch.search --config=configs/cifar10_search.py --workdir=/tmp/c10 \
      [--config.data.data_dir=~/tensorflow_datasets]

Needs CIFAR-10 prepared by tensorflow-datasets (downloaded on first use when the
machine is online; offline, --config.data.archive=PATH/cifar-10-binary.tar.gz). Paper: 50 epochs, batch 256, 0.1 GPU-days on a 1080Ti.
"""

import ml_collections
from ml_collections import config_dict

from configs import common


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 2

  config.data = ml_collections.ConfigDict()
  config.data.name = 'cifar10'          # cifar10 | cifar100 | digits
  config.data.data_dir = config_dict.placeholder(str)  # tfds data dir; None = tfds default
  config.data.download = True           # let tfds download and prepare when missing
  # The hand-downloaded cifar-10/100-binary.tar.gz, prepared offline; None = tfds downloads.
  config.data.archive = config_dict.placeholder(str)
  config.data.train_portion = 0.5       # first part trains weights, rest the arch
  config.data.crop_padding = 4          # random crop after zero padding
  config.data.random_flip = True
  config.data.in_memory = True          # False: stream from tfds (input_pipeline.py)
  config.data.mean = (0.49139968, 0.48215827, 0.44653124)
  config.data.std = (0.24703233, 0.24348505, 0.26158768)

  config.model = ml_collections.ConfigDict()
  config.model.init_channels = 16
  config.model.layers = 8
  config.model.num_classes = 10
  config.model.partial_channels = 4     # K: 1/K of the channels go through the ops
  config.model.edge_normalization = True
  config.model.steps = 4
  config.model.multiplier = 4
  config.model.stem_multiplier = 3
  config.model.stem = 'cifar'           # cifar | imagenet
  config.model.depthwise_impl = 'auto'  # auto | conv | shifted | dense
  config.model.edge_impl = 'auto'       # auto (= scan) | batched | grouped | scan: a cell's edge layout
  config.model.merge_separable = False  # grouped only: each depthwise + 1x1 conv as one dense conv
  config.model.unroll_edges = False     # True: much slower compile, no faster (docs/benchmarks.md)
  config.model.scan_cells = True        # runs of 3+ normal cells as one scan: compiles sooner
  config.model.dtype = 'auto'          # auto (bfloat16 on GPUs/TPUs, float32 on CPU) | float32 | bfloat16: activations; params, arch stay float32
  # first | random | reference_random (PC-DARTS' random file as it runs: the first C/K
  # channels, no permutation after the concat): which C/K channels the ops see.
  config.model.channel_sampling = 'first'
  config.model.channel_mixing = 'shuffle'  # shuffle | shift: permutation after the concat
  config.model.space = 'darts'          # darts | nb201 (pcdarts_jax/spaces)
  # softmax | dirichlet (DrNAS) | gumbel (SNAS-style) | gdas (hard Gumbel, straight-through)
  config.model.relaxation = 'softmax'

  config.search = ml_collections.ConfigDict()
  config.search.epochs = 50
  config.search.batch_size = 256
  config.search.learning_rate = 0.1
  config.search.learning_rate_min = 0.0
  config.search.warmup_epochs = 0       # > 0: lr * (epoch + 1) / warmup_epochs at first
  config.search.warmup_lr = 'base'      # that lr: base (learning_rate, the references') | cosine
  # Epoch e (from 0) runs at the cosine's lr(e + offset): 1 as DARTS/PC-DARTS step their
  # scheduler before each epoch (the last epoch at learning_rate_min); 0: lr(e), DrNAS.
  config.search.lr_schedule_offset = 1
  config.search.momentum = 0.9
  config.search.nesterov = False        # True: Nesterov momentum (AutoDL's NB-201 DARTS)
  config.search.weight_decay = 3e-4
  config.search.grad_clip = 5.0
  config.search.arch_learning_rate = 6e-4
  config.search.arch_beta1 = 0.5
  config.search.arch_beta2 = 0.999
  config.search.arch_weight_decay = 1e-3
  config.search.arch_grad_clip = 0.0    # > 0: clip the arch gradient's norm (ImageNet: 5)
  config.search.arch_start_epoch = 15
  config.search.architect = 'first_order'  # first_order | second_order | second_order_exact
  config.search.single_level = False    # True: weights and arch from one train-batch step
  config.search.bilevel_phases = 'sequence'  # sequence | loop: less memory, slower (docs/benchmarks.md)
  config.search.eval_batch_size = 500   # validation on the arch half each epoch
  config.search.log_every_steps = 50
  config.search.skip_nonfinite = False  # True: drop non-finite steps and go on (counted)
  # N independent searches (seeds seed..seed+N-1) as one vmapped program; WORKDIR/seed_<i>/
  # per seed, WORKDIR/genotype.json the best by final validation accuracy, seeds.json.
  config.search.num_seeds = 1
  config.search.seed_data = 'shared'    # shared: one batch stream for all seeds | per_seed
  config.search.arch_regularizer = 'l2'  # l2 (Adam weight decay) | kl (DrNAS, dirichlet only)
  config.search.arch_regularizer_scale = 1e-3  # kl: scale of sum_e KL(Dir(a_e) || Dir(1))
  config.search.gumbel_tau_max = 10.0   # gumbel, gdas: tau decays from this (first epoch)...
  config.search.gumbel_tau_min = 0.1    # ...towards this
  # exponential: tau_min at the last epoch | linear: DrNAS', lowered after each epoch.
  config.search.gumbel_tau_schedule = 'exponential'
  # DrNAS progressive learning (empty: one stage): epochs, K and ops kept per stage.
  config.search.stage_epochs = ()
  config.search.stage_partial_channels = ()
  config.search.stage_ops = ()
  # How ops widen between stages: net2wider (one draw per edge, copies divided: the
  # widened op computes the old output) | reference (DrNAS' code: a draw per layer,
  # copies not divided).
  config.search.widen = 'net2wider'

  config.checkpoint = common.checkpoint(every_steps=50)
  config.monitor = common.monitor()
  return config
