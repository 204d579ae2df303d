"""CIFAR through the real tensorflow-datasets preparation code, offline.

Small archives in the real binary format (cifar-10-binary.tar.gz /
cifar-100-binary.tar.gz: label byte(s) + 3072 channel-planar pixel bytes per
record) are prepared by tfds' own CIFAR builders and read back through the
library's loaders. tfds knows the official archives' size and sha256, so these
tests register the small archives' instead; sockets are closed, so nothing can
be downloaded. A missing package tfds imports (importlib_resources was one) or a
change in the record layout fails here.
"""

import os
import re
import socket
import subprocess
import sys
import tarfile

import ml_collections
import numpy as np
import pytest

from configs import cifar10_search
from configs import cifar10_train
from configs import digits_search
from pcdarts_jax.search import validation as config_validation
from pcdarts_jax.data import datasets as data
from pcdarts_jax.data import pipeline as input_pipeline

# Records per file of the small archives.
CIFAR10_FILES = {f'data_batch_{i}.bin': 3 for i in range(1, 6)} | {'test_batch.bin': 4}
CIFAR100_FILES = {'train.bin': 12, 'test.bin': 5}
SPLIT_FILES = {'cifar10': {'train': [f'data_batch_{i}.bin' for i in range(1, 6)],
                           'test': ['test_batch.bin']},
               'cifar100': {'train': ['train.bin'], 'test': ['test.bin']}}


def _add(tar, name, payload: bytes, root):
  path = os.path.join(root, name)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'wb') as f:
    f.write(payload)
  tar.add(path, arcname=name)


def _write_archive(directory, name, seed):
  """A small `name` archive in the real layout; returns its path and, per file,
  the (images HWC uint8, fine labels) it holds."""
  rng = np.random.default_rng(seed)
  filename, top = data.CIFAR_ARCHIVES[name]
  files = CIFAR10_FILES if name == 'cifar10' else CIFAR100_FILES
  classes = 10 if name == 'cifar10' else 100
  written = {}
  staging = os.path.join(directory, f'{name}_staging')
  path = os.path.join(directory, filename)
  os.makedirs(os.path.join(staging, top))
  with tarfile.open(path, 'w:gz') as tar:
    # The directory first, as in the real archives.
    tar.add(os.path.join(staging, top), arcname=top, recursive=False)
    for file, count in files.items():
      images = rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
      labels = rng.integers(0, classes, count).astype(np.uint8)
      planar = images.transpose(0, 3, 1, 2).reshape(count, 3072)  # R, G, B planes
      if name == 'cifar10':
        records = np.concatenate([labels[:, None], planar], axis=1)
      else:  # coarse label, fine label, pixels
        records = np.concatenate([(labels // 5)[:, None], labels[:, None], planar], axis=1)
      _add(tar, f'{top}/{file}', records.tobytes(), staging)
      written[file] = (images, labels.astype(np.int32))
    if name == 'cifar10':
      names = [f'class_{i}' for i in range(10)]
      _add(tar, f'{top}/batches.meta.txt', ('\n'.join(names) + '\n\n').encode(), staging)
    else:
      _add(tar, f'{top}/coarse_label_names.txt',
           '\n'.join(f'coarse_{i}' for i in range(20)).encode(), staging)
      _add(tar, f'{top}/fine_label_names.txt',
           '\n'.join(f'fine_{i}' for i in range(100)).encode(), staging)
  return path, written


@pytest.fixture(scope='module')
def archives(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp('cifar_archives'))
  return {name: _write_archive(directory, name, seed)
          for seed, name in enumerate(('cifar10', 'cifar100'))}


def _expected(written, name, split):
  images, labels = zip(*(written[f] for f in SPLIT_FILES[name][split]))
  return np.concatenate(images), np.concatenate(labels)


def _assert_same_examples(got_images, got_labels, images, labels):
  """tfds stores a split in its own (hashed) order: match images by content."""
  assert got_images.shape == images.shape and got_images.dtype == np.uint8
  where = {img.tobytes(): i for i, img in enumerate(images)}
  assert len(where) == len(images)  # the random images are distinct
  order = [where.get(img.tobytes(), -1) for img in got_images]
  assert -1 not in order, f'{order.count(-1)} loaded images match no written one'
  assert sorted(order) == list(range(len(images)))
  np.testing.assert_array_equal(got_images, images[order])
  np.testing.assert_array_equal(got_labels, labels[order])


def _config(name, **fields):
  return ml_collections.ConfigDict(dict({'name': name, 'data_dir': None, 'download': False,
                                         'archive': None}, **fields))


@pytest.fixture
def offline_tfds(monkeypatch, archives):
  """tensorflow_datasets, imported here (so the library reads in this process),
  with no network and the small archives registered as the official ones."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core.download import checksums  # pylint: disable=g-import-not-at-top

  def refuse(*args, **kwargs):
    raise OSError('network access in an offline test')

  monkeypatch.setattr(socket.socket, 'connect', refuse)
  monkeypatch.setattr(socket, 'create_connection', refuse)
  infos = {data.cifar_archive_url(name): checksums.compute_url_info(path)
           for name, (path, _) in archives.items()}
  for name in archives:
    monkeypatch.setattr(tfds.builder_cls(name), 'url_infos', infos)
  return tfds


# ------------------------------------------------------------- the real tfds path


def test_archive_is_prepared_by_tfds_and_loaded_by_the_library(offline_tfds, archives,
                                                                  tmp_path):
  """data.archive: tfds' CIFAR-10 and CIFAR-100 builders prepare the archive
  (a renamed copy, too) and load_split returns exactly the pixels and labels
  written; the search and trainer data paths read it the same way."""
  del offline_tfds
  for name, (path, written) in archives.items():
    renamed = tmp_path / f'{name}-download.tgz'
    os.link(path, renamed)
    cfg = _config(name, data_dir=str(tmp_path / name), archive=str(renamed))
    os.makedirs(cfg.data_dir)
    for split in ('train', 'test'):
      got = data.load_split(cfg, split)
      assert got.labels.dtype == np.int32
      _assert_same_examples(got.images, got.labels, *_expected(written, name, split))

  # The search's and the trainer's loaders, from configs that declare data.archive.
  path, written = archives['cifar10']
  search = cifar10_search.get_config()
  search.data.update(data_dir=str(tmp_path / 'search'), archive=path, download=False)
  search.search.update(batch_size=2, eval_batch_size=4)
  os.makedirs(search.data.data_dir)
  config_validation.validate_search_config(search)
  inputs = input_pipeline.search_inputs(search)
  train_images, train_labels = _expected(written, 'cifar10', 'train')
  assert inputs.train_size + inputs.arch_size == len(train_labels)
  weights = inputs.train.inner.data  # the weight half, as the iterator holds it
  arch = list(inputs.eval_batches(4))
  _assert_same_examples(
      np.concatenate([weights.images] + [b['image'][b['mask'] > 0] for b in arch]),
      np.concatenate([weights.labels] + [b['label'][b['mask'] > 0] for b in arch]),
      train_images, train_labels)

  from pcdarts_jax.train import train as trainer  # pylint: disable=g-import-not-at-top
  train = cifar10_train.get_config()
  train.data.update(data_dir=search.data.data_dir, archive=path, download=False)
  train.train.update(batch_size=3, eval_batch_size=4)
  trainer.validate_train_config(train)
  source = trainer._datasets(train)  # pylint: disable=protected-access
  assert source.steps_per_epoch == len(train_labels) // 3
  test = list(source.test_batches())
  _assert_same_examples(np.concatenate([b['image'][b['mask'] > 0] for b in test]),
                        np.concatenate([b['label'][b['mask'] > 0] for b in test]),
                        *_expected(written, 'cifar10', 'test'))


def test_streaming_search_prepares_from_the_archive(offline_tfds, archives, tmp_path):
  """data.in_memory=False: the tf.data path prepares from data.archive too."""
  del offline_tfds
  tf, _ = data.import_tfds('cifar100')
  path, written = archives['cifar100']
  d = _config('cifar100', data_dir=str(tmp_path), archive=path, in_memory=False)
  images, labels = _expected(written, 'cifar100', 'train')
  assert input_pipeline._split_size(d, 'train') == len(labels)  # pylint: disable=protected-access
  records = input_pipeline._read(d, 'train', shard=False)  # pylint: disable=protected-access
  decode = input_pipeline._decode(d, False, tf)  # pylint: disable=protected-access
  got = [(decode(ex['image'], None).numpy(), int(ex['label'])) for ex in records]
  _assert_same_examples(np.stack([g[0] for g in got]), np.array([g[1] for g in got]),
                        images, labels)


def test_unprepared_message_names_routes_that_prepare_offline(offline_tfds, archives,
                                                              tmp_path):
  """The error for CIFAR that is not prepared names the routes, and they work:
  its command prepares CIFAR-10 with the archive in the manual dir it names, and
  with data.download=True the library itself prepares CIFAR-100 from there."""
  del offline_tfds
  for name in ('cifar10', 'cifar100'):
    path, written = archives[name]
    cfg = _config(name, data_dir=str(tmp_path / name))
    os.makedirs(cfg.data_dir)
    with pytest.raises(data.DataError) as info:
      data.load_split(cfg, 'test')
    message = str(info.value)
    assert '\n' not in message and '(data.download=False)' in message
    assert f'--config.data.archive=PATH/{data.CIFAR_ARCHIVES[name][0]}' in message
    assert data.cifar_archive_url(name) in message
    manual = re.search(r'or put it into (\S+) and keep data\.download=True', message).group(1)
    os.makedirs(manual)
    os.link(path, os.path.join(manual, data.CIFAR_ARCHIVES[name][0]))
    if name == 'cifar10':
      command = re.search(r'python -c "([^"]+)"', message).group(1)
      exec(command, {})  # pylint: disable=exec-used
    else:
      cfg.download = True
    got = data.load_split(cfg, 'test')
    _assert_same_examples(got.images, got.labels, *_expected(written, name, 'test'))


def test_child_process_checks_the_archive_against_the_official_checksum(archives, tmp_path):
  """Read in a child process (as a search does), with tfds' real checksums: the
  small archive is refused as not the official download, in one line."""
  path, _ = archives['cifar10']
  with pytest.raises(data.DataError) as info:
    data.run_isolated('_read_tfds', 'cifar10', 'train', str(tmp_path), False, path)
  message = str(info.value)
  assert message.startswith(f'data.archive={path!r} ({os.path.getsize(path)} bytes) is not '
                            f'the official cifar-10-binary.tar.gz (170052171 bytes'), message
  assert '\n' not in message and data.cifar_archive_url('cifar10') in message


def test_missing_package_is_named_not_sent_elsewhere():
  error = data.tfds_failure('cifar10', None, ModuleNotFoundError(
      "No module named 'importlib_resources'"), what='prepare')
  assert 'importlib_resources' in str(error) and 'requirements.txt' in str(error)
  assert 'internet' not in str(error)


# ---------------------------------------------------------------- validation


def _search_config(**data_fields):
  config = cifar10_search.get_config()
  config.data.update(data_fields)
  return config


def test_archive_validation_refuses_before_anything_runs(archives, tmp_path):
  missing = str(tmp_path / 'cifar-10-binary.tar.gz')
  with pytest.raises(config_validation.ConfigError) as info:
    config_validation.validate_search_config(_search_config(archive=missing))
  assert str(info.value).startswith(f'data.archive={missing!r} does not exist')
  assert data.cifar_archive_url('cifar10') in str(info.value)

  c100, _ = archives['cifar100']
  with pytest.raises(config_validation.ConfigError,
                     match=r"is the cifar100 archive \(cifar-100-binary.tar.gz\), not "
                           r"cifar-10-binary.tar.gz.*or set data.name='cifar100'"):
    config_validation.validate_search_config(_search_config(archive=c100))

  python_version = str(tmp_path / 'cifar-10-python.tar.gz')
  with tarfile.open(python_version, 'w:gz') as tar:
    tar.add(str(tmp_path), arcname='cifar-10-batches-py', recursive=False)
  with pytest.raises(config_validation.ConfigError, match='the CIFAR-10 python version'):
    config_validation.validate_search_config(_search_config(archive=python_version))

  not_tar = tmp_path / 'cifar-10-binary.tar.gz'
  not_tar.write_bytes(b'<html>not found</html>')
  with pytest.raises(config_validation.ConfigError, match='is not a tar archive'):
    config_validation.validate_search_config(_search_config(archive=str(not_tar)))

  digits = digits_search.get_config()
  digits.data.archive = archives['cifar10'][0]
  with pytest.raises(config_validation.ConfigError,
                     match=r"only read for \('cifar10', 'cifar100'\)"):
    config_validation.validate_search_config(digits)

  config_validation.validate_search_config(_search_config(archive=archives['cifar10'][0]))
  from pcdarts_jax.train import train as trainer  # pylint: disable=g-import-not-at-top
  train = cifar10_train.get_config()
  train.data.archive = missing
  with pytest.raises(config_validation.ConfigError, match=r'^data\.archive='):
    trainer.validate_train_config(train)


def test_load_split_refuses_a_wrong_archive_without_tfds(archives, monkeypatch):
  def no_tfds(*args, **kwargs):
    raise AssertionError('tfds was consulted for a wrong data.archive')

  monkeypatch.setattr(data, '_load_tfds', no_tfds)
  with pytest.raises(data.DataError, match=r'data\.archive=.*cifar100 archive'):
    data.load_split(_config('cifar10', archive=archives['cifar100'][0]), 'train')


def test_search_launcher_refuses_a_missing_archive_in_one_line(tmp_path):
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  workdir, missing = tmp_path / 'w', tmp_path / 'cifar-10-binary.tar.gz'
  done = subprocess.run(
      [sys.executable, '-m', 'launch.search', '--config=configs/cifar10_search.py',
       f'--workdir={workdir}', f'--config.data.archive={missing}'],
      cwd=root, env=dict(os.environ, PYTHONPATH=root, JAX_PLATFORMS='cpu'),
      capture_output=True, text=True, timeout=300)
  assert done.returncode == 2, done.stderr[-2000:]
  errors = [line for line in done.stderr.splitlines() if line.startswith('error:')]
  assert errors == [f'error: data.archive={str(missing)!r} does not exist or is not a file: '
                    f'download {data.cifar_archive_url("cifar10")} and pass its path, or '
                    f'leave data.archive None to let tfds download it.'], done.stderr[-2000:]
  assert 'Traceback' not in done.stderr and not workdir.exists()
