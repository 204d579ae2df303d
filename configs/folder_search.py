"""PC-DARTS search on your own images: a folder of class subfolders, an .npz of
arrays, or any tfds image-classification data set (pcdarts_jax/data/sources.py).

  python -m launch.search --config=configs/folder_search.py --workdir=/tmp/mine \
      --config.data.data_dir=~/pictures          # DIR/CLASS/*.jpg (or DIR/train/, DIR/val/)
  python -m launch.search --config=configs/folder_search.py --workdir=/tmp/mine \
      --config.data.name=arrays --config.data.path=data.npz
  python -m launch.search --config=configs/folder_search.py --workdir=/tmp/mine \
      --config.data.name=tfds:fashion_mnist

Images are resized to data.image_size (32, as CIFAR) with the channels they have
(1 grey or 3 colour; data.channels converts). model.num_classes and
data.mean / data.std come from the data when None (the statistics of the train
split, kept in the workdir's data_stats.json; the class names in classes.json).
The search itself is the CIFAR-10 one (paper defaults); a small data set may need
a smaller search.batch_size (the error says which).
"""

from ml_collections import config_dict

from configs import cifar10_search


def own_data_fields(data):
  """Sets the fields of own data on a config's data section (search and train)."""
  data.name = 'folder'                   # folder | arrays | tfds:NAME[:VERSION]
  # folder: DIR/CLASS/IMAGE (jpg png bmp gif webp tif ppm pgm), or DIR/train/CLASS/...
  # with DIR/val/ (or validation/, test/); tfds: its data directory (None: tfds default).
  data.data_dir = config_dict.placeholder(str)
  # arrays: FILE.npz with x_train, y_train [, x_test, y_test] [, class_names]; uint8
  # images (N, H, W, C) or (N, H, W) grey-scale, integer labels 0..K-1.
  data.path = config_dict.placeholder(str)
  data.train_split = 'train'             # tfds split strings; slices such as 'train[:90%]'
  data.test_split = 'test'               # ... and 'train[90%:]' cut one split in two
  data.image_size = 32                   # None: the images' own size (one square size)
  data.resize = 'crop'                   # crop: shorter side, centre | pad: longer, black border
  data.channels = config_dict.placeholder(int)  # None: the images' own (must agree) | 1 | 3
  data.test_portion = 0.1                # without a test split: this share of each class held out
  data.split_seed = 0                    # seeds that held-out share and the search's halves
  data.on_bad_image = 'error'            # error | skip (an unreadable image; the count is logged)
  # None: in memory when the decoded images fit in max_memory_gb, else streamed (tf.data).
  data.in_memory = config_dict.placeholder(bool)
  data.max_memory_gb = 4.0
  data.mean = config_dict.placeholder(tuple)  # None: from the train split, per channel
  data.std = config_dict.placeholder(tuple)


def get_config():
  config = cifar10_search.get_config()
  own_data_fields(config.data)
  config.model.num_classes = config_dict.placeholder(int)  # None: from the data
  return config
