"""Own data (pcdarts_jax/data/sources.py): image folders, .npz arrays and tfds
image data sets at any size with 1 or 3 channels; the splits, the statistics,
the run files, the streaming path and each bad input's one-line error. All on
tiny data generated in tmp_path."""

import json
import os

import ml_collections
import numpy as np
import pytest
from PIL import Image

from configs import folder_search
from configs import folder_train
from pcdarts_jax.data import pipeline as input_pipeline
from pcdarts_jax.data import sources
from pcdarts_jax.search import validation as config_validation

CLASSES = ('cat', 'dog', 'owl')
PER_CLASS = 10


def make_folder(root, per_class=PER_CLASS, classes=CLASSES, seed=0, grey_only=False):
  """Class folders of PNG and JPEG files of mixed sizes, grey-scale and RGB. The
  mean brightness of class c's images is about 40 + 80 c (labels are visible)."""
  rng = np.random.default_rng(seed)
  for c, name in enumerate(classes):
    os.makedirs(os.path.join(root, name), exist_ok=True)
    for i in range(per_class):
      w, h = (int(v) for v in rng.integers(6, 20, 2))
      grey = grey_only or i % 3 == 0
      shape = (h, w) if grey else (h, w, 3)
      pixels = np.clip(rng.normal(40 + 80 * c, 10, shape), 0, 255).astype(np.uint8)
      ext = 'png' if i % 2 == 0 else 'jpg'
      Image.fromarray(pixels).save(os.path.join(root, name, f'{i:02d}.{ext}'))
  return str(root)


def folder_config(root, **fields):
  d = folder_search.get_config().data
  d.data_dir = root
  d.image_size, d.channels = 8, 3
  for k, v in fields.items():
    d[k] = v
  return d


def test_folder_classes_shapes_labels_and_a_seeded_stratified_test_split(tmp_path):
  root = make_folder(tmp_path / 'pics')
  d = folder_config(root)
  source = sources.describe(d)
  assert source.classes == CLASSES
  assert source.image_shape == (8, 8, 3)
  # 10% of each class held out: one image per class.
  assert source.sizes == {'train': 27, 'test': 3}
  train, test = sources.load_split(d, 'train'), sources.load_split(d, 'test')
  assert train.images.shape == (27, 8, 8, 3) and train.images.dtype == np.uint8
  assert np.bincount(train.labels).tolist() == [9, 9, 9]
  assert np.bincount(test.labels).tolist() == [1, 1, 1]
  # Labels follow the class folders: class c is about 40 + 80 c bright.
  for c in range(3):
    assert abs(train.images[train.labels == c].mean() - (40 + 80 * c)) < 15
  # Grey-scale files became 3 equal channels.
  grey = [i for i, p in enumerate(source.parts['train'][0]) if p.endswith('00.png')]
  assert np.array_equal(train.images[grey[0], ..., 0], train.images[grey[0], ..., 2])
  # The held-out images are the same for the same seed, others for another.
  held = sorted(source.parts['test'][0])
  assert sorted(sources.describe(folder_config(root)).parts['test'][0]) == held
  other = sources.describe(folder_config(root, split_seed=5)).parts['test'][0]
  assert sorted(other) != held
  assert not set(held) & set(source.parts['train'][0])


def test_folder_train_and_val_subfolders_and_own_size_and_channels(tmp_path):
  make_folder(tmp_path / 'set' / 'train', per_class=4, grey_only=True)
  make_folder(tmp_path / 'set' / 'val', per_class=2, grey_only=True, seed=1)
  for split in ('train', 'val'):  # One size for all: data.image_size=None keeps it.
    for path in (tmp_path / 'set' / split).rglob('*.*'):
      Image.open(path).convert('L').resize((12, 12)).save(path)
  d = folder_config(str(tmp_path / 'set'), image_size=None, channels=None)
  source = sources.describe(d)
  assert source.image_shape == (12, 12, 1)
  assert source.sizes == {'train': 12, 'test': 6}
  assert all('/val/' in p for p in source.parts['test'][0])
  assert sources.load_split(d, 'test').images.shape == (6, 12, 12, 1)


def test_crop_keeps_the_centre_and_pad_adds_a_black_border(tmp_path):
  root = tmp_path / 'wide'
  for name in ('a', 'b'):
    os.makedirs(root / name)
    pixels = np.full((8, 16, 3), 200, np.uint8)  # 16 wide, 8 high
    pixels[:, :4] = 0  # a black left quarter, cut off by a centre crop
    Image.fromarray(pixels).save(root / name / 'x.png')
    Image.fromarray(pixels).save(root / name / 'y.png')
  crop = sources.load_split(folder_config(str(root), test_portion=0.5), 'train').images[0]
  pad = sources.load_split(folder_config(str(root), test_portion=0.5, resize='pad'),
                           'train').images[0]
  assert crop.shape == pad.shape == (8, 8, 3)
  assert crop[:, 2:].min() == 200  # the centre 8x8 of the 16x8 image, resampled
  assert pad[:2].max() == 0 and pad[-2:].max() == 0  # 8x4 content on black rows
  assert pad[3:5, 4:].min() > 150


def _npz(path, **arrays):
  np.savez(path, **arrays)
  return str(path)


def arrays_config(path, **fields):
  d = folder_search.get_config().data
  d.name, d.path, d.image_size = 'arrays', path, None
  for k, v in fields.items():
    d[k] = v
  return d


def test_arrays_grey_nhw_with_a_test_split_and_class_names(tmp_path):
  rng = np.random.default_rng(0)
  path = _npz(tmp_path / 'a.npz', x_train=rng.integers(0, 256, (20, 8, 8), dtype=np.uint8),
              y_train=np.arange(20) % 4, x_test=rng.integers(0, 256, (6, 8, 8), dtype=np.uint8),
              y_test=np.arange(6) % 4, class_names=np.array(['n', 'e', 's', 'w']))
  d = arrays_config(path)
  source = sources.describe(d)
  assert source.classes == ('n', 'e', 's', 'w') and source.image_shape == (8, 8, 1)
  train = sources.load_split(d, 'train')
  assert train.images.shape == (20, 8, 8, 1)
  assert train.labels.tolist() == (np.arange(20) % 4).tolist()
  # Resized and converted on request.
  d = arrays_config(path, image_size=4, channels=3)
  test = sources.load_split(d, 'test')
  assert test.images.shape == (6, 4, 4, 3)
  assert np.array_equal(test.images[..., 0], test.images[..., 1])


def test_arrays_without_a_test_split_hold_out_each_class(tmp_path):
  labels = np.repeat(np.arange(3), 10)  # sorted by class, as arrays often are
  path = _npz(tmp_path / 'b.npz', x_train=np.zeros((30, 4, 4, 3), np.uint8), y_train=labels)
  d = arrays_config(path, test_portion=0.2)
  assert sources.describe(d).classes == ('0', '1', '2')
  assert np.bincount(sources.load_split(d, 'test').labels).tolist() == [2, 2, 2]
  weights, arch = sources.search_sets(d)
  assert np.bincount(weights.labels).tolist() == [4, 4, 4]  # train_portion 0.5 of 8
  assert np.bincount(arch.labels).tolist() == [4, 4, 4]


def test_channel_statistics_are_the_per_channel_mean_and_std():
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (37, 5, 6, 3), dtype=np.uint8)
  mean, std = sources.channel_stats(images, chunk=8)
  x = images.astype(np.float64) / 255
  np.testing.assert_allclose(mean, x.mean(axis=(0, 1, 2)), atol=1e-6)
  np.testing.assert_allclose(std, x.std(axis=(0, 1, 2)), atol=1e-6)


def test_resolve_fills_statistics_and_classes_and_a_resume_reads_them_back(tmp_path):
  root = make_folder(tmp_path / 'pics')
  config = folder_search.get_config()
  config.data.data_dir, config.data.image_size = root, 8
  config.data.channels = 3
  workdir = str(tmp_path / 'run')
  resolved = sources.resolve_config(config, workdir)
  assert config.data.mean is None and config.model.num_classes is None  # not changed
  assert resolved.model.num_classes == 3
  train = sources.load_split(resolved.data, 'train')
  np.testing.assert_allclose(resolved.data.mean,
                             (train.images / 255.0).mean(axis=(0, 1, 2)), atol=1e-6)
  assert not os.path.exists(workdir)  # nothing written before the run writes
  written = sources.write_run_files(resolved, workdir)
  assert sorted(os.path.basename(p) for p in written) == ['classes.json', 'data_stats.json']
  assert sources.read_classes(workdir) == list(CLASSES)
  # A resume takes the recorded numbers, not new ones.
  stats_path = os.path.join(workdir, 'data_stats.json')
  with open(stats_path) as f:
    stats = json.load(f)
  stats['mean'] = [0.25, 0.5, 0.75]
  with open(stats_path, 'w') as f:
    json.dump(stats, f)
  again = sources.resolve_config(config, workdir)
  assert tuple(again.data.mean) == (0.25, 0.5, 0.75)
  assert tuple(again.data.std) == tuple(resolved.data.std)
  # Data whose classes differ from the run's are refused.
  os.makedirs(os.path.join(root, 'yak'))
  Image.fromarray(np.zeros((8, 8), np.uint8)).save(os.path.join(root, 'yak', 'a.png'))
  with pytest.raises(sources.SourceError, match=r'differ from those of the run in'):
    sources.resolve_config(config, workdir)
  config.model.num_classes = 7
  with pytest.raises(sources.SourceError,
                     match=r'^model.num_classes=7 but folder has 4 classes; set it to 4 or None'):
    sources.resolve_config(config, str(tmp_path / 'other'))


def test_search_inputs_in_memory_split_each_class_in_half(tmp_path):
  config = folder_search.get_config()
  config.data = folder_config(make_folder(tmp_path / 'pics'))
  config.search.batch_size = 4
  config = sources.resolve_config(config)
  inputs = input_pipeline.search_inputs(config)
  # 9 train images per class: 5 (4.5 rounded half up) train the weights, 4 the arch.
  assert (inputs.train_size, inputs.arch_size) == (15, 12)
  batch = next(inputs.train)
  assert batch['image'].shape == (4, 8, 8, 3) and batch['label'].dtype == np.int32
  weights, arch = sources.search_sets(config.data)
  assert np.bincount(weights.labels).tolist() == [5, 5, 5]
  assert np.bincount(arch.labels).tolist() == [4, 4, 4]


# ------------------------------------------------------------------ validation


def _search_config(d):
  config = folder_search.get_config()
  config.data = d
  config.model.init_channels, config.model.layers, config.model.partial_channels = 4, 2, 2
  config.search.batch_size = 4
  return config


def test_validation_names_the_sizes_the_reduction_cells_accept(tmp_path):
  config = sources.resolve_config(_search_config(
      folder_config(make_folder(tmp_path / 'pics'), image_size=10)))
  with pytest.raises(config_validation.ConfigError) as e:
    config_validation.validate_search_config(config)
  assert str(e.value) == ("data.image_size=10: model.stem='cifar' with two reduction cells "
                          'halves the images 2 times and needs a size divisible by 4; nearest: '
                          '8 or 12.')
  assert sources.nearest_sizes(30, 4) == (28, 32) and sources.nearest_sizes(2, 4) == (4,)
  config.data.image_size = 12
  config_validation.validate_search_config(config)


def test_validation_refuses_unresolved_statistics(tmp_path):
  config = _search_config(folder_config(make_folder(tmp_path / 'pics')))
  config.model.num_classes = 3
  with pytest.raises(config_validation.ConfigError, match=r'^data.mean=None: the statistics'):
    config_validation.validate_search_config(config)


# ------------------------------------------------------------------ bad input


def _truncate(path):
  with open(path, 'rb') as f:
    head = f.read()
  with open(path, 'wb') as f:
    f.write(head[:len(head) // 2])


def _bad_folder(tmp_path, kind):
  root = tmp_path / 'bad'
  if kind == 'empty':
    os.makedirs(root)
  elif kind == 'no images':
    make_folder(root, per_class=2)
    os.makedirs(root / 'emu')
    (root / 'emu' / 'notes.txt').write_text('no picture here')
  elif kind in ('truncated', 'skip'):
    make_folder(root, per_class=3)
    _truncate(root / 'dog' / '01.jpg')
  elif kind == 'mixed channels':
    make_folder(root, per_class=3)
  return str(root)


@pytest.mark.parametrize('kind, fields, message', [
    ('empty', {}, r"^data.data_dir='.*/bad' is empty: put one subfolder of images per class"),
    ('no images', {}, r"^data.data_dir: class folder '.*/bad/emu' holds no images"),
    ('truncated', {}, r"^data.data_dir: '.*/bad/dog/01.jpg' is not a readable image \(OSError: "
                      r".*\); remove it, or set data.on_bad_image='skip'"),
    ('mixed channels', {'channels': None},
     r"^data.channels=None: '.*/bad' mixes 2 channel counts \(1: '.*png', 3: '.*jpg'\); set "
     r'data.channels=3'),
])
def test_bad_folders_get_one_line_errors(tmp_path, kind, fields, message):
  d = folder_config(_bad_folder(tmp_path, kind), **fields)
  with pytest.raises(sources.SourceError, match=message) as e:
    sources.describe(d)
  assert '\n' not in str(e.value)
  assert isinstance(e.value, config_validation.ConfigError)


def test_a_truncated_image_is_skipped_with_a_count_on_request(tmp_path, capsys):
  d = folder_config(_bad_folder(tmp_path, 'skip'), on_bad_image='skip', test_portion=0.34)
  source = sources.describe(d)
  assert sum(source.sizes.values()) == 8
  assert not any(p.endswith('dog/01.jpg') for p in source.parts['train'][0])
  err = capsys.readouterr().err
  assert "skipped 1 unreadable image(s)" in err and 'dog/01.jpg' in err


@pytest.mark.parametrize('arrays, message', [
    ({'x_train': np.zeros((4, 4, 4), np.uint8), 'y_train': np.array([0, 1, 2, -1])},
     r'label out of range: y_train holds -1'),
    ({'x_train': np.zeros((4, 4, 4), np.uint8), 'y_train': np.array([0, 1, 0, 1]),
      'x_test': np.zeros((2, 4, 4), np.uint8), 'y_test': np.array([0, 2])},
     r'label out of range: y_test holds 2 but y_train holds only 0..1'),
    ({'x_train': np.zeros((4, 4, 4), np.uint8), 'y_train': np.array([0, 1, 0, 1]),
      'class_names': np.array(['a'])},
     r'label out of range: y_train holds 1 but class_names names 1 classes'),
    ({'x_train': np.zeros((4, 4, 4), np.uint8), 'y_train': np.array([0, 1, 0, 1]),
      'x_test': np.zeros((2, 4, 4, 3), np.uint8), 'y_test': np.array([0, 1])},
     r"mixes 2 channel counts \(1: 'x_train', 3: 'x_test'\)"),
    ({'x_train': np.zeros((4, 4, 4), np.float32), 'y_train': np.array([0, 1, 0, 1])},
     r'x_train is float32; store uint8 images'),
    ({'images': np.zeros((4, 4, 4), np.uint8)}, r"lacks 'x_train'"),
])
def test_bad_arrays_get_one_line_errors(tmp_path, arrays, message):
  d = arrays_config(_npz(tmp_path / 'bad.npz', **arrays))
  named = r"^(data.channels=None: )?data.path='.*bad.npz'.*"
  with pytest.raises(sources.SourceError, match=named + message) as e:
    sources.describe(d)
  assert '\n' not in str(e.value)


def test_bad_fields_name_the_field(tmp_path):
  for name, value, message in (('resize', 'squash', r"^data.resize='squash' is not one of"),
                               ('channels', 2, r'^data.channels=2 is not one of \(1, 3\)'),
                               ('on_bad_image', 'ignore', r'^data.on_bad_image='),
                               ('test_portion', 1.0, r'^data.test_portion=1.0 must be in')):
    with pytest.raises(sources.SourceError, match=message):
      sources.check_fields(folder_config(str(tmp_path), **{name: value}))
  with pytest.raises(sources.SourceError, match=r"does not exist or is not a folder"):
    sources.describe(folder_config(str(tmp_path / 'missing')))
  d = arrays_config(str(tmp_path / 'x.npz'), in_memory=False)
  with pytest.raises(sources.SourceError, match=r"^data.in_memory=False: data.name='arrays'"):
    sources.check_fields(d)


# ------------------------------------------------------------------ tfds


@pytest.fixture
def tfds_mock():
  """tfds.testing.mock_data: random examples in a data set's real format (no download)."""
  tfds = pytest.importorskip('tensorflow_datasets')
  with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
    yield tfds


def tfds_config(name, **fields):
  d = folder_search.get_config().data
  d.name, d.image_size = name, None
  for k, v in fields.items():
    d[k] = v
  return d


def test_tfds_image_data_set_classes_shapes_and_conversion(tfds_mock):
  d = tfds_config('tfds:fashion_mnist')  # 28x28 grey-scale, 10 named classes
  source = sources.describe(d)
  assert source.classes[:2] == ('T-shirt/top', 'Trouser') and len(source.classes) == 10
  assert source.image_shape == (28, 28, 1)
  train = sources.load_split(d, 'train')
  assert train.images.shape == (12, 28, 28, 1) and train.labels.max() < 10
  assert sources.in_memory(d)  # a mock has no split sizes: read into memory
  d = tfds_config('tfds:fashion_mnist:3.0.1', image_size=8, channels=3)
  test = sources.load_split(d, 'test')
  assert test.images.shape == (12, 8, 8, 3)
  assert np.array_equal(test.images[..., 0], test.images[..., 2])
  # Images of varying size need data.image_size; then they are fitted to it.
  with pytest.raises(sources.SourceError, match=r"^data.image_size=None: tfds:tf_flowers images "
                                                r'are of varying size; set data.image_size.$'):
    sources.describe(tfds_config('tfds:tf_flowers'))
  d = tfds_config('tfds:tf_flowers', image_size=16, resize='pad')
  assert sources.load_split(d, 'train').images.shape == (12, 16, 16, 3)


@pytest.mark.parametrize('name, message', [
    ('tfds:no_such_set_xyz', r"^data.name='tfds:no_such_set_xyz': tensorflow-datasets cannot "
                             r"open 'no_such_set_xyz' \(DatasetNotFoundError"),
    ('tfds:fashion_mnist:9.9.9', r"cannot open 'fashion_mnist:9.9.9' .*only: 3.0.1"),
    ('tfds:imdb_reviews', r"^data.name='tfds:imdb_reviews' has no image feature \(its "
                          r'features: label, text\)'),
    ('tfds:a:b:c', r"^data.name='tfds:a:b:c' must be 'tfds:NAME' or 'tfds:NAME:VERSION'"),
])
def test_bad_tfds_names_get_one_line_errors(tfds_mock, name, message):
  with pytest.raises(sources.SourceError, match=message) as e:
    sources.describe(tfds_config(name))
  assert '\n' not in str(e.value)


@pytest.fixture(scope='module')
def prepared_tfds(tmp_path_factory):
  """tfds' dummy_mnist (20 train and 20 test 28x28 grey digits) prepared offline."""
  tfds = pytest.importorskip('tensorflow_datasets')
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  tfds.testing.DummyMnist(data_dir=data_dir).download_and_prepare()
  return data_dir


def test_a_prepared_tfds_set_has_split_sizes_slices_and_streams(prepared_tfds):
  d = tfds_config('tfds:dummy_mnist', data_dir=prepared_tfds, download=False, image_size=8,
                  train_split='train[:75%]', test_split='train[75%:]')
  source = sources.describe(d)
  assert source.sizes == {'train': 15, 'test': 5} and source.image_shape == (8, 8, 1)
  d.in_memory = False
  assert not sources.in_memory(d)
  config = folder_search.get_config()
  config.data = d
  config.data.mean, config.data.std = (0.5,), (0.25,)  # dummy_mnist's images are all black
  config.search.batch_size, config.search.eval_batch_size = 3, 4
  config = sources.resolve_config(config)
  inputs = input_pipeline.search_inputs(config)
  assert (inputs.train_size, inputs.arch_size) == (7, 8)  # in order, as CIFAR: 50% and the rest
  assert next(inputs.arch)['image'].shape == (3, 8, 8, 1)
  memory = sources.load_split(config.data, 'train')
  evaluated = np.concatenate([b['label'][b['mask'] > 0] for b in inputs.eval_batches(4)])
  assert evaluated.tolist() == memory.labels[7:].tolist()
  with pytest.raises(sources.SourceError,
                     match=r"^data.test_split='validation': dummy_mnist has no split "
                           r"'validation' \(it has \['test', 'train'\]\); tfds slices"):
    sources.describe(tfds_config('tfds:dummy_mnist', data_dir=prepared_tfds, download=False,
                                 test_split='validation'))


# ------------------------------------------------------------------ streaming


def test_a_streamed_folder_gives_the_in_memory_images(tmp_path):
  """Streamed (TensorFlow decodes and resizes) and in memory (PIL) give the same
  labelled images up to resampling; a streamed epoch is a permutation."""
  pytest.importorskip('tensorflow')
  config = folder_search.get_config()
  config.data = folder_config(make_folder(tmp_path / 'pics'), in_memory=False)
  config.search.batch_size, config.search.eval_batch_size = 4, 5
  config = sources.resolve_config(config)
  assert input_pipeline.streams(config.data)
  inputs = input_pipeline.search_inputs(config)
  weights, arch = sources.search_sets(config.data)
  assert (inputs.train_size, inputs.arch_size) == (len(weights), len(arch))
  memory = weights.images.astype(np.int32)
  matched = []
  for _ in range(inputs.train.steps_per_epoch):
    batch = next(inputs.train)
    assert batch['image'].shape == (4, 8, 8, 3)
    for image, label in zip(batch['image'], batch['label']):
      # Mean absolute difference: < 1 (of 255) for the same file resampled by
      # TensorFlow instead of PIL, > 3.5 to any other image here.
      error = np.abs(memory - image).mean(axis=(1, 2, 3))
      matched.append(int(np.argmin(error)))
      assert error.min() < 2 and weights.labels[matched[-1]] == label, error.min()
  assert len(set(matched)) == len(matched) == inputs.train.steps_per_epoch * 4
  masks = [b['mask'] for b in inputs.eval_batches(5)]
  assert sum(m.sum() for m in masks) == len(arch)
  # The trainer's source: the held-out split once, masked.
  train_config = folder_train.get_config()
  train_config.data = config.data
  train_config.train.batch_size, train_config.train.eval_batch_size = 9, 2
  source = input_pipeline.train_data_source(train_config)
  assert source.steps_per_epoch == 3 and source.test_size == 3
  test = list(source.test_batches())
  assert sum(b['mask'].sum() for b in test) == 3
  assert next(iter(source.train_batches(0)))['image'].shape == (9, 8, 8, 3)


# ------------------------------------------------------------------ runs

def _tiny_search(d):
  config = folder_search.get_config()
  config.data = d
  config.model.init_channels, config.model.layers, config.model.partial_channels = 4, 2, 2
  config.model.steps = config.model.multiplier = 2  # 2 nodes per cell: a quicker compile
  config.model.depthwise_impl = 'dense'  # compiles fastest on XLA:CPU at these widths
  config.search.epochs, config.search.arch_start_epoch = 1, 0
  config.search.batch_size, config.search.eval_batch_size = 4, 16
  config.search.log_every_steps = 0
  config.monitor.tensorboard = config.monitor.pictures = False
  config.monitor.progress = 'lines'
  return config


def _tiny_train(d, genotype):
  config = folder_train.get_config()
  config.data = d
  config.genotype = genotype
  config.model.init_channels, config.model.layers = 4, 2  # both cells reduce: 8 -> 4 -> 2
  config.model.auxiliary, config.model.depthwise_impl = False, 'dense'
  config.train.epochs, config.train.batch_size, config.train.eval_batch_size = 1, 8, 16
  config.train.cutout_length, config.train.log_every_steps = 0, 0
  config.monitor.tensorboard = config.monitor.pictures = False
  config.monitor.progress = 'lines'
  return config


def _grey_npz(tmp_path):
  """3 classes of 8x8 grey-scale arrays (NHW), class c about 40 + 80 c bright."""
  rng = np.random.default_rng(3)
  labels = np.repeat(np.arange(3), 12)
  images = np.clip(rng.normal(40 + 80 * labels[:, None, None], 10, (36, 8, 8)), 0, 255)
  return _npz(tmp_path / 'grey.npz', x_train=images.astype(np.uint8), y_train=labels,
              class_names=np.array(['low', 'mid', 'high']))


def _own_source(tmp_path, source):
  """(data config, channels, class names) of a generated folder or .npz."""
  if source == 'folder':
    return folder_config(make_folder(tmp_path / 'pics')), 3, list(CLASSES)
  return arrays_config(_grey_npz(tmp_path)), 1, ['low', 'mid', 'high']


# CI time (each source compiles its own programs: 1 or 3 channels): the default run
# searches on the arrays and trains on the folder, so each source goes end to end
# once; -m slow runs the other two.
@pytest.mark.parametrize('source', [pytest.param('folder', marks=pytest.mark.slow), 'arrays'])
def test_a_search_on_own_data_records_its_classes_and_statistics(tmp_path, source):
  from pcdarts_jax.search import search as search_lib  # pylint: disable=g-import-not-at-top
  d, channels, names = _own_source(tmp_path, source)
  workdir = str(tmp_path / 'search')
  genotype = search_lib.search(_tiny_search(d), workdir)
  assert len(genotype.normal) == 2 * 2  # two edges per node, model.steps=2
  with open(os.path.join(workdir, 'config.json')) as f:
    recorded = json.load(f)
  assert recorded['model']['num_classes'] == 3 and len(recorded['data']['mean']) == channels
  assert sources.read_classes(workdir) == names
  with open(os.path.join(workdir, 'data_stats.json')) as f:
    assert json.load(f)['mean'] == recorded['data']['mean']


@pytest.mark.parametrize('source', ['folder', pytest.param('arrays', marks=pytest.mark.slow)])
def test_training_and_evaluation_on_own_data(tmp_path, source):
  from pcdarts_jax.train import train as train_lib  # pylint: disable=g-import-not-at-top
  d, channels, names = _own_source(tmp_path, source)
  workdir = str(tmp_path / 'train')
  summary = train_lib.train(_tiny_train(d, 'PCDARTS'), workdir)
  assert summary['epochs'] == 1 and 0.0 <= summary['test']['accuracy'] <= 1.0
  assert sources.read_classes(workdir) == names
  with open(os.path.join(workdir, 'config.json')) as f:
    assert len(json.load(f)['data']['std']) == channels
  result = train_lib.evaluate_checkpoint(_tiny_train(d, 'PCDARTS'), workdir=workdir)
  assert result['classes'] == names and result['images'] == 3  # a tenth of each class
  assert result['top1_accuracy'] == pytest.approx(summary['test']['accuracy'])


def test_a_bad_folder_stops_a_search_before_anything_is_written(tmp_path):
  from pcdarts_jax.search import search as search_lib  # pylint: disable=g-import-not-at-top
  root = make_folder(tmp_path / 'pics', per_class=3)
  _truncate(os.path.join(root, 'owl', '01.jpg'))
  workdir = str(tmp_path / 'run')
  with pytest.raises(config_validation.ConfigError, match=r"owl/01.jpg' is not a readable"):
    search_lib.search(_tiny_search(folder_config(root)), workdir)
  assert not os.path.exists(workdir)


@pytest.mark.slow  # About 100 s of CPU: two compiles of each phase.
def test_nb201_and_sgnas_searches_take_own_data(tmp_path):
  """The other search paths read own data the same way: an NB-201 search on the
  colour folder, an SGNAS search (supernet and generator) on the grey arrays."""
  from configs import nb201_digits_search  # pylint: disable=g-import-not-at-top
  from configs import sgnas_digits_search  # pylint: disable=g-import-not-at-top
  from pcdarts_jax.search import search as search_lib  # pylint: disable=g-import-not-at-top
  nb201 = nb201_digits_search.get_config()
  nb201.data = folder_config(make_folder(tmp_path / 'pics'))
  nb201.model.init_channels, nb201.model.num_classes = 4, None
  nb201.search.epochs, nb201.search.arch_start_epoch = 1, 0
  nb201.search.batch_size, nb201.search.eval_batch_size = 4, 16
  nb201.monitor.tensorboard = nb201.monitor.pictures = False
  search_lib.search(nb201, str(tmp_path / 'nb201'))
  assert sources.read_classes(str(tmp_path / 'nb201')) == list(CLASSES)
  sgnas = sgnas_digits_search.get_config()
  sgnas.data = arrays_config(_grey_npz(tmp_path))
  sgnas.model.num_classes = None
  sgnas.search.epochs = sgnas.generator.epochs = 1
  sgnas.search.batch_size, sgnas.search.eval_batch_size = 4, 16
  sgnas.monitor.tensorboard = False
  summary = search_lib.search(sgnas, str(tmp_path / 'sgnas'))
  assert sources.read_classes(str(tmp_path / 'sgnas')) == ['low', 'mid', 'high']
  assert summary
