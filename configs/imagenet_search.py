"""PC-DARTS search on an ImageNet subset (Xu et al. ICLR 2020,
github.com/yuhuixu1993/PC-DARTS).

  python -m launch.search --config=configs/imagenet_search.py --workdir=/tmp/in \
      --config.data.data_dir=/data/tfds --config.data.manual_dir=/data/imagenet

Per class, a seeded 10% of the ImageNet train split trains the weights and a
disjoint 2.5% the architecture. Supernet C 16, 8 cells, K 2 behind the stride-8
stem (224 -> 28); global batch 1024 split over every device of every process;
SGD lr 0.5 cosine with a 5-epoch linear warm-up, arch Adam lr 6e-3 with arch
gradient clip 5, arch steps from epoch 35 of 50. Paper: 11.5 h on 8 V100s.

Smoke test without ImageNet, on 8 forced CPU devices (random images in the real
format, tiny supernet): see docs/multi-device.md.
"""

from ml_collections import config_dict

from configs import cifar10_search


def get_config():
  config = cifar10_search.get_config()
  d = config.data
  d.name = 'imagenet2012'
  d.data_dir = config_dict.placeholder(str)  # tfds data dir holding (or to hold) the prepared imagenet2012
  d.manual_dir = config_dict.placeholder(str) # the ILSVRC2012_img_{train,val}.tar files; None = DATA_DIR/downloads/manual
  d.train_fraction = 0.1       # per class, of the train split: trains the weights
  d.arch_fraction = 0.025      # per class, disjoint from the above: trains the architecture
  d.subset_seed = 0            # which images form the subsets (fixed apart from config.seed)
  d.subset_dir = config_dict.placeholder(str) # where the chosen subset keys are cached; None = data_dir
  d.cache_dir = config_dict.placeholder(str) # local disk cache of the encoded subsets (~15 GB); None = off
  d.shuffle_buffer = 10_000
  d.mock_examples = 0          # > 0: random images in imagenet2012's format (smoke tests)
  d.image_size = 224           # random-resized-crop size (eval: resize 256, centre crop)
  d.crop_padding = 0           # no pad-and-crop: the pipeline crops
  d.random_flip = True         # on the device
  d.mean = (0.485, 0.456, 0.406)
  d.std = (0.229, 0.224, 0.225)

  m = config.model
  m.num_classes = 1000
  m.partial_channels = 2
  m.stem = 'imagenet'

  s = config.search
  s.epochs = 50
  s.batch_size = 1024          # global: split over all devices of all processes
  s.learning_rate = 0.5
  s.learning_rate_min = 0.0
  s.warmup_epochs = 5          # lr * (epoch + 1) / 5 over the first 5 epochs
  s.arch_learning_rate = 6e-3
  s.arch_grad_clip = 5.0
  s.arch_start_epoch = 35
  s.eval_batch_size = 1024
  return config
