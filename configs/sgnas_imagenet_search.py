"""SGNAS search on ImageNet (SGNAS, Huang & Chu CVPR 2021, github.com/eric8607242/SGNAS):
both phases.

  python -m launch.search --config=configs/sgnas_imagenet_search.py --workdir=/tmp/sgin \
      --config.data.data_dir=/data/tfds --config.data.manual_dir=/data/imagenet
  python -m launch.sgnas_generate --config=configs/sgnas_imagenet_search.py \
      --workdir=/tmp/sgin --target_flops=320

The ImageNet layout (stride-2 stem, 19 searchable layers, 19x24 architecture)
at 224x224. Per class, a seeded 80% of the train split trains the supernet and
the disjoint other 20% the generator (streamed by pcdarts_jax/data/pipeline.py,
as the PC-DARTS ImageNet search). Targets range(270, 450, 5) MFLOPs. The
supernet trains 50 epochs, then the generator 50 epochs, both with a global
batch of 128 (split over every device of every process), the reference's
imagenet_config.yml.

Smoke test without ImageNet (random images in the real format):
  --config.data.mock_examples=256 --config.search.batch_size=16 ...
"""

from configs import imagenet_search
from configs import sgnas_cifar100_search


def get_config():
  config = sgnas_cifar100_search.get_config()
  config.data = imagenet_search.get_config().data
  config.data.train_fraction = 0.8   # per class: trains the supernet
  config.data.arch_fraction = 0.2    # per class, disjoint: trains the generator
  config.model.layout = 'imagenet'
  config.model.num_classes = 1000
  config.search.epochs = 50
  config.search.batch_size = 128        # also the generator phase's batch
  config.search.eval_batch_size = 1000
  g = config.generator
  g.flops_low, g.flops_high, g.flops_step = 270.0, 450.0, 5.0
  return config
