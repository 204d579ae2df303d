"""Tests for pcdarts_jax.data.datasets: loaders, splits, iterators and the on-device augment.

Nothing here compiles a model; the tfds path runs on tfds' mock data (offline).
"""

import itertools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import digits_search
from pcdarts_jax.data import datasets as data

MEAN = (0.5, 0.4, 0.3)
STD = (0.2, 0.25, 0.3)


def _digits_data_config():
  return digits_search.get_config().data


def _indexed_set(n, shape=(2, 2, 1)):
  """Images whose pixels all hold the image's index (mod 256), label = index."""
  labels = np.arange(n, dtype=np.int32)
  images = np.broadcast_to((labels % 256).astype(np.uint8)[:, None, None, None],
                           (n,) + shape).copy()
  return data.ArraySet(images, labels)


def _take(iterator, steps):
  return [next(iterator) for _ in range(steps)]


# --------------------------------------------------------------------- digits


def test_digits_train_split():
  train = data.load_split(_digits_data_config(), 'train')
  assert len(train) == 1500
  assert train.images.shape == (1500, 8, 8, 1)
  assert train.images.dtype == np.uint8
  assert train.images.min() == 0 and train.images.max() == 255
  assert train.labels.dtype == np.int32
  assert train.labels.shape == (1500,)
  assert sorted(set(train.labels.tolist())) == list(range(10))


def test_digits_test_split():
  test = data.load_split(_digits_data_config(), 'test')
  assert len(test) == 297
  assert test.images.shape == (297, 8, 8, 1)
  assert test.images.dtype == np.uint8
  assert test.labels.dtype == np.int32
  assert test.labels.min() >= 0 and test.labels.max() <= 9


def test_digits_splits_are_the_sklearn_data_in_order():
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  cfg = _digits_data_config()
  train, test = data.load_split(cfg, 'train'), data.load_split(cfg, 'test')
  images = np.concatenate([train.images, test.images])[..., 0].astype(np.float64)
  np.testing.assert_allclose(images * 16.0 / 255.0, digits.images, atol=0.5 * 16 / 255)
  np.testing.assert_array_equal(np.concatenate([train.labels, test.labels]), digits.target)


def test_digits_unknown_split_raises():
  with pytest.raises(data.DataError, match='validation'):
    data.load_split(_digits_data_config(), 'validation')


# ------------------------------------------------------------- search splits


@pytest.mark.parametrize('portion,cut', [(0.5, 750), (0.3, 450), (0.8, 1200)])
def test_search_splits_sizes_and_order(portion, cut):
  cfg = _digits_data_config()
  cfg.train_portion = portion
  full = data.load_split(cfg, 'train')
  weights, arch = data.search_splits(cfg)
  assert len(weights) == cut
  assert len(arch) == 1500 - cut
  assert weights.images.shape == (cut, 8, 8, 1)
  assert arch.images.shape == (1500 - cut, 8, 8, 1)
  # The first part trains the weights, the remainder the architecture.
  np.testing.assert_array_equal(weights.images[0], full.images[0])
  np.testing.assert_array_equal(arch.images[0], full.images[cut])
  assert arch.labels[0] == full.labels[cut]
  np.testing.assert_array_equal(np.concatenate([weights.images, arch.images]), full.images)
  np.testing.assert_array_equal(np.concatenate([weights.labels, arch.labels]), full.labels)


# ------------------------------------------------------------------ tfds path


@pytest.mark.parametrize('name,num_classes', [('cifar10', 10), ('cifar100', 100)])
def test_tfds_cifar_on_mock_data(name, num_classes):
  tfds = pytest.importorskip('tensorflow_datasets')
  cfg = ml_collections.ConfigDict({'name': name, 'data_dir': None, 'download': False})
  with tfds.testing.mock_data(num_examples=20):
    split = data.load_split(cfg, 'train')
  assert len(split) == 20
  assert split.images.shape == (20, 32, 32, 3)
  assert split.images.dtype == np.uint8
  assert split.labels.shape == (20,)
  assert split.labels.dtype == np.int32
  assert split.labels.min() >= 0
  assert split.labels.max() < num_classes


def test_missing_data_dir_raises(tmp_path, monkeypatch):
  missing = tmp_path / 'no_such_dir'

  def _no_tfds(*args, **kwargs):
    raise AssertionError('tfds was consulted although data.data_dir is missing')

  monkeypatch.setattr(data, '_load_tfds', _no_tfds)  # refused before tfds is touched
  cfg = ml_collections.ConfigDict({'name': 'cifar10', 'data_dir': str(missing),
                                   'download': False})
  with pytest.raises(data.DataError, match=r'data\.data_dir') as info:
    data.load_split(cfg, 'train')
  assert str(missing) in str(info.value)
  assert not missing.exists()


def test_missing_tensorflow_is_a_data_error_naming_the_data_set(monkeypatch):
  # A machine without TF (an accelerator image, say) gets a DataError, which the
  # benchmark answers with synthetic data, instead of an ImportError.
  monkeypatch.setitem(sys.modules, 'tensorflow', None)
  cfg = ml_collections.ConfigDict({'name': 'cifar10', 'data_dir': None, 'download': False})
  with pytest.raises(data.DataError, match=r"data\.name='cifar10'.*tensorflow") as info:
    data.load_split(cfg, 'train')
  assert 'digits' in str(info.value)  # the data set that needs neither


def test_run_isolated_returns_the_arrays_and_data_errors():
  """The child-process read gives the same arrays as reading here, and a
  DataError raised in the child comes back as a DataError with its message."""
  here = data.load_split(_digits_data_config(), 'test')
  there = data.run_isolated('_load_digits', 'test')
  assert there.images.dtype == np.uint8 and there.labels.dtype == np.int32
  np.testing.assert_array_equal(there.images, here.images)
  np.testing.assert_array_equal(there.labels, here.labels)
  with pytest.raises(data.DataError, match=r'data\.data_dir is not set'):
    data.run_isolated('load_imagenet16', None, 'train')


def test_tfds_read_keeps_tensorflow_out_of_the_process(tmp_path):
  """A tfds data set is read in a child process: the searching process never
  loads TensorFlow (~0.8 GB), and a failed read is still a DataError here."""
  pytest.importorskip('tensorflow')
  code = ('import sys, ml_collections; from pcdarts_jax.data import datasets as data; '
          "cfg = ml_collections.ConfigDict({'name': 'cifar10', 'data_dir': sys.argv[1], "
          "'download': False})\n"
          'try:\n  data.load_split(cfg, "train")\n'
          'except data.DataError as e:\n  print("DataError", "cifar10" in str(e))\n'
          'print("tensorflow loaded:", "tensorflow" in sys.modules)')
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  done = subprocess.run([sys.executable, '-c', code, str(tmp_path)], capture_output=True,
                        text=True, env=dict(os.environ, PYTHONPATH=root), check=True)
  assert done.stdout.split('\n')[:2] == ['DataError True', 'tensorflow loaded: False'], (
      done.stdout, done.stderr[-2000:])


def test_unknown_name_raises():
  cfg = ml_collections.ConfigDict({'name': 'mnist', 'data_dir': None, 'download': False})
  with pytest.raises(data.DataError, match=r'data\.name') as info:
    data.load_split(cfg, 'train')
  assert 'mnist' in str(info.value)


# ------------------------------------------------------------- EpochIterator


def test_epoch_iterator_no_repeats_and_drops_partial_batch():
  n, b = 50, 8  # 6 full batches per epoch; 2 images left out each epoch.
  ds = _indexed_set(n)
  it = data.EpochIterator(ds, b, seed=0)
  assert it.steps_per_epoch == 6
  for _ in range(3):  # three epochs
    seen = []
    for batch in _take(it, 6):
      assert batch['image'].shape == (b, 2, 2, 1)
      assert batch['label'].shape == (b,)
      # Images and labels stay paired.
      np.testing.assert_array_equal(batch['image'][:, 0, 0, 0], batch['label'] % 256)
      seen.extend(batch['label'].tolist())
    assert len(seen) == 48
    assert len(set(seen)) == 48  # no index twice within an epoch
    assert set(seen) <= set(range(n))


def test_epoch_iterator_seeded_and_reshuffled():
  ds = _indexed_set(40)
  steps = 5  # one epoch of batch 8

  def epochs(seed, count=2):
    it = data.EpochIterator(ds, 8, seed=seed)
    return [np.concatenate([b['label'] for b in _take(it, steps)]) for _ in range(count)]

  a, a2, other = epochs(7), epochs(7), epochs(8)
  for x, y in zip(a, a2):
    np.testing.assert_array_equal(x, y)  # same seed, same batches
  assert not np.array_equal(a[0], other[0])  # different seed, different order
  assert not np.array_equal(a[0], a[1])  # each epoch is reshuffled
  assert sorted(a[0].tolist()) == list(range(40))
  assert sorted(a[1].tolist()) == list(range(40))


@pytest.mark.parametrize('consumed', [0, 1, 3, 4, 5, 9])
def test_epoch_iterator_state_restore(consumed):
  ds = _indexed_set(37)  # batch 9: 4 steps per epoch
  it = data.EpochIterator(ds, 9, seed=3)
  _take(it, consumed)
  state = it.state()
  expected = _take(it, 6)
  resumed = data.EpochIterator(ds, 9, seed=3)
  _take(resumed, 2)  # wherever it was, restore must override it
  resumed.restore(dict(state))
  for want, got in zip(expected, _take(resumed, 6)):
    np.testing.assert_array_equal(got['label'], want['label'])
    np.testing.assert_array_equal(got['image'], want['image'])


def test_epoch_iterator_batch_too_large():
  with pytest.raises(data.DataError, match='11'):
    data.EpochIterator(_indexed_set(10), 11, seed=0)
  data.EpochIterator(_indexed_set(10), 10, seed=0)  # exactly the data is fine


# --------------------------------------------------------------- eval_batches


@pytest.mark.parametrize('n,b', [(10, 4), (12, 4), (3, 5)])
def test_eval_batches_cover_every_image_once(n, b):
  ds = _indexed_set(n)
  ds.labels = ds.labels + 1  # labels 1..n, so zero padding cannot pass for data
  batches = list(data.eval_batches(ds, b))
  assert len(batches) == -(-n // b)
  for batch in batches:
    assert batch['image'].shape == (b, 2, 2, 1)
    assert batch['label'].shape == (b,)
    assert batch['mask'].shape == (b,)
  mask = np.concatenate([x['mask'] for x in batches])
  labels = np.concatenate([x['label'] for x in batches])
  images = np.concatenate([x['image'] for x in batches])
  assert mask.sum() == n
  np.testing.assert_array_equal(labels[mask == 1], ds.labels)  # each once, in order
  np.testing.assert_array_equal(images[mask == 1], ds.images)
  # Padding sits at the end of the last batch only, and is zero.
  np.testing.assert_array_equal(mask[:n], np.ones(n))
  np.testing.assert_array_equal(mask[n:], np.zeros(len(mask) - n))
  assert np.all(labels[n:] == 0) and np.all(images[n:] == 0)


# -------------------------------------------------------------------- augment


def _images(seed=0):
  return np.random.default_rng(seed).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)


def _denormalise(x):
  pixels = (np.asarray(x, np.float64) * np.asarray(STD) + np.asarray(MEAN)) * 255.0
  return pixels


def test_augment_identity_is_normalize():
  images = _images()
  out = data.augment(jax.random.PRNGKey(0), jnp.asarray(images), MEAN, STD,
                     crop_padding=0, random_flip=False)
  want = data.normalize(jnp.asarray(images), MEAN, STD)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out), np.asarray(want), rtol=1e-6, atol=1e-6)
  # normalize itself: (x / 255 - mean) / std.
  np.testing.assert_allclose(
      np.asarray(want), (images / 255.0 - np.asarray(MEAN)) / np.asarray(STD), atol=1e-5)


def test_augment_crop_is_a_window_of_the_zero_padded_input():
  p = 2
  images = _images(1)
  padded = np.pad(images, ((0, 0), (p, p), (p, p), (0, 0))).astype(np.float64)
  offsets_used = []
  for seed in range(4):
    out = _denormalise(data.augment(jax.random.PRNGKey(seed), jnp.asarray(images), MEAN,
                                    STD, crop_padding=p, random_flip=False))
    assert out.shape == images.shape
    for i in range(len(images)):
      matches = [(dy, dx) for dy, dx in itertools.product(range(2 * p + 1), repeat=2)
                 if np.allclose(out[i], padded[i, dy:dy + 8, dx:dx + 8], atol=1e-2)]
      assert matches, f'image {i} (seed {seed}) is no window of the padded input'
      offsets_used.append(matches[0])
  # The crop is random: not every image is the centred (un-shifted) window.
  assert len(set(offsets_used)) > 1
  assert any(o != (p, p) for o in offsets_used)


def test_augment_flip_only():
  images = _images(2)
  kinds = []
  for seed in range(4):
    out = _denormalise(data.augment(jax.random.PRNGKey(seed), jnp.asarray(images), MEAN,
                                    STD, crop_padding=0, random_flip=True))
    for i in range(len(images)):
      same = np.allclose(out[i], images[i], atol=1e-2)
      mirrored = np.allclose(out[i], images[i, :, ::-1], atol=1e-2)
      assert same or mirrored, f'image {i} (seed {seed}) is neither original nor mirror'
      kinds.append('mirror' if mirrored else 'same')
  assert set(kinds) == {'same', 'mirror'}  # the flip is random, not always / never


def test_augment_rng_determinism():
  images = jnp.asarray(_images(3))
  run = lambda key: np.asarray(data.augment(jax.random.PRNGKey(key), images, MEAN, STD,
                                            crop_padding=2, random_flip=True))
  np.testing.assert_array_equal(run(5), run(5))
  assert not np.allclose(run(5), run(6))
