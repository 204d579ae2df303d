"""Input pipelines: in-memory CIFAR (tfds), the embedded digits data set, and
ImageNet16-120 (NAS-Bench-201) from the down-sampled ImageNet files.

Images stay uint8 on the host; batches go to the device as uint8 and are
augmented (pad + random crop, flip) and normalised there, inside the jitted step.
"""

import dataclasses
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from typing import Dict, Iterator, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

DATASETS = ('cifar10', 'cifar100', 'digits', 'imagenet16_120')
NUM_CLASSES = {'cifar10': 10, 'cifar100': 100, 'digits': 10, 'imagenet16_120': 120}
IMAGE_SHAPES = {'cifar10': (32, 32, 3), 'cifar100': (32, 32, 3), 'digits': (8, 8, 1),
                'imagenet16_120': (16, 16, 3)}
DIGITS_TRAIN_SIZE = 1500  # The rest of scikit-learn's 1797 digits is the test split.
# Images in each train split (before the weight / arch cut), for estimates made
# without the data (the benchmark's projected search time).
TRAIN_SIZES = {'cifar10': 50000, 'cifar100': 50000, 'digits': DIGITS_TRAIN_SIZE,
               'imagenet16_120': 151700, 'imagenet2012': 1281167}


class DataError(ValueError):
  """A data set cannot be loaded; the message says what to do."""


CIFAR_PAGE = 'https://www.cs.toronto.edu/~kriz/'
# The "binary version" archives tfds' CIFAR builders read, and the directory
# their files sit under (tfds' url_checksums hold their size and sha256).
CIFAR_ARCHIVES = {'cifar10': ('cifar-10-binary.tar.gz', 'cifar-10-batches-bin'),
                  'cifar100': ('cifar-100-binary.tar.gz', 'cifar-100-binary')}
# Top directories of the other archives on the CIFAR page, to name a wrong one.
OTHER_CIFAR_ARCHIVES = {'cifar-10-batches-py': 'the CIFAR-10 python version',
                        'cifar-10-batches-mat': 'the CIFAR-10 Matlab version',
                        'cifar-100-python': 'the CIFAR-100 python version',
                        'cifar-100-matlab': 'the CIFAR-100 Matlab version'}


@dataclasses.dataclass
class ArraySet:
  images: np.ndarray  # uint8, NHWC
  labels: np.ndarray  # int32

  def __len__(self):
    return len(self.labels)

  def subset(self, start, stop) -> 'ArraySet':
    return ArraySet(self.images[start:stop], self.labels[start:stop])


def _round_half_up(x: np.ndarray) -> np.ndarray:
  return np.floor(np.asarray(x, np.float64) + 0.5).astype(np.int64)


def select_subsets(labels: np.ndarray, fractions: Sequence[float],
                   seed: int) -> Tuple[np.ndarray, ...]:
  """Per class, a seeded random `fractions[i]` of the examples, the subsets
  disjoint. Returns one sorted index array per fraction.

  Counts are cumulative and rounded half up per class (class with n examples:
  subset i gets round((f_0 + .. + f_i) n) - round((f_0 + .. + f_{i-1}) n)), so
  every subset is proportional to the class sizes. The choice depends only on
  (labels, fractions, seed): the order in which classes or hosts are visited
  does not matter.
  """
  labels = np.asarray(labels)
  if sum(fractions) > 1.0 + 1e-9 or min(fractions) < 0:
    raise ValueError(f'subset fractions {tuple(fractions)} must be >= 0 and sum to <= 1.')
  chosen = [[] for _ in fractions]
  bounds = np.concatenate([[0.0], np.cumsum(fractions)])
  for cls in np.unique(labels):
    members = np.flatnonzero(labels == cls)
    order = members[np.random.default_rng([seed, int(cls)]).permutation(len(members))]
    cuts = _round_half_up(bounds * len(members))
    for i in range(len(fractions)):
      chosen[i].append(order[cuts[i]:cuts[i + 1]])
  return tuple(np.sort(np.concatenate(c)) if c else np.zeros(0, np.int64) for c in chosen)


def _load_digits(split: str) -> ArraySet:
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  # Pixel values are 0..16; stored like any image as uint8 0..255.
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  labels = digits.target.astype(np.int32)
  if split == 'train':
    return ArraySet(images[:DIGITS_TRAIN_SIZE], labels[:DIGITS_TRAIN_SIZE])
  if split == 'test':
    return ArraySet(images[DIGITS_TRAIN_SIZE:], labels[DIGITS_TRAIN_SIZE:])
  raise DataError(f"data split {split!r} is not one of ('train', 'test') for digits.")


def import_tfds(name: str):
  """(tensorflow, tensorflow_datasets), with TF kept off the accelerators. Imported
  on first use: the digits data set and the synthetic benchmark need neither."""
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise DataError(
        f'data.name={name!r} is read with tensorflow-datasets, which needs tensorflow '
        f'(tensorflow-cpu): {e}. Install them with pip install -r requirements.txt, or '
        f"use data.name='digits', which needs neither.") from e
  try:
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:  # TF already initialised its devices in this process.
    pass
  return tf, tfds


def cifar_archive_url(name: str) -> str:
  return CIFAR_PAGE + CIFAR_ARCHIVES[name][0]


def archive_problem(name: str, archive) -> Optional[str]:
  """What is wrong with `data.archive` for data set `name` (one line), or None.
  Only the archive's first header is read: which CIFAR archive it is. Its bytes
  are checked by tfds against the official size and sha256 when it is used."""
  if archive is None:
    return None
  if name not in CIFAR_ARCHIVES:
    return (f'data.archive={archive!r} is only read for {tuple(CIFAR_ARCHIVES)} (the '
            f'hand-downloaded binary-version archive); data.name={name!r}: leave it None.')
  filename, top = CIFAR_ARCHIVES[name]
  fetch = f'download {cifar_archive_url(name)} and pass its path'
  if not isinstance(archive, str) or not archive:
    return f'data.archive={archive!r} must be the path of {filename} ({fetch}), or None.'
  path = os.path.expanduser(archive)
  if not os.path.isfile(path):
    return (f'data.archive={archive!r} does not exist or is not a file: {fetch}, or leave '
            f'data.archive None to let tfds download it.')
  try:
    with tarfile.open(path, 'r:*') as tar:
      first = tar.next()
  except (tarfile.TarError, OSError, EOFError) as e:
    return (f'data.archive={archive!r} is not a tar archive ({type(e).__name__}: {e}); '
            f'{name} needs {filename}: {fetch}.')
  found = first.name.lstrip('./').split('/')[0] if first is not None else ''
  if found == top:
    return None
  other = [n for n, (_, t) in CIFAR_ARCHIVES.items() if t == found]
  what = (f'the {other[0]} archive ({CIFAR_ARCHIVES[other[0]][0]})' if other else
          OTHER_CIFAR_ARCHIVES.get(found, f'an archive of {found!r}' if found else
                                   'an empty archive'))
  hint = f" or set data.name={other[0]!r}" if other else ''
  return (f'data.archive={archive!r} is {what}, not {filename} (the {name} binary '
          f'version, files under {top}/) that tfds reads: {fetch}{hint}.')


def _load_tfds(name: str, split: str, data_dir: Optional[str], download: bool,
               archive: Optional[str] = None) -> ArraySet:
  """Reads a whole tfds split into host memory once. Reading needs TensorFlow,
  which would then hold about 0.8 GB of this process's memory for the whole
  search; so unless TensorFlow or tfds is already loaded here (a tfds mock in a
  test, a notebook), the read runs in a child process."""
  if 'tensorflow' in sys.modules or 'tensorflow_datasets' in sys.modules:
    return _read_tfds(name, split, data_dir, download, archive)
  return run_isolated('_read_tfds', name, split, data_dir, download, archive)


def run_isolated(function: str, *args, module: str = __name__):
  """`<module>.<function>(*args)` computed in a fresh Python process (its messages
  go to this one's stderr): an ArraySet, whose arrays come back as .npy files, or
  a JSON-able dict. A DataError raised there is raised here with its message."""
  package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  # The child is the same interpreter: its own site-packages are on its path.
  path = os.pathsep.join([package_root] + [p for p in [os.environ.get('PYTHONPATH')] if p])
  code = ('import sys, json; from pcdarts_jax.data import datasets; '
          'datasets.write_isolated(sys.argv[1], sys.argv[2], sys.argv[3], '
          'json.loads(sys.argv[4]))')
  with tempfile.TemporaryDirectory(prefix='pcdarts_jax_data_') as out:
    done = subprocess.run(
        [sys.executable, '-c', code, out, module, function, json.dumps(list(args))],
        env=dict(os.environ, PYTHONPATH=path, JAX_PLATFORMS='cpu'), check=False)
    error = os.path.join(out, 'error.txt')
    if os.path.exists(error):
      with open(error) as f:
        raise DataError(f.read())
    if done.returncode != 0:
      raise DataError(f'data.{function}{tuple(args)} failed in its child process '
                      f'(exit {done.returncode}); its messages are above.')
    if os.path.exists(os.path.join(out, 'result.json')):
      with open(os.path.join(out, 'result.json')) as f:
        return json.load(f)
    return ArraySet(np.load(os.path.join(out, 'images.npy')),
                    np.load(os.path.join(out, 'labels.npy')))


def write_isolated(out: str, module: str, function: str, args) -> None:
  """run_isolated's child: the result as .npy files (an ArraySet) or result.json
  (a dict), or a DataError's message in error.txt."""
  import importlib  # pylint: disable=g-import-not-at-top
  try:
    result = getattr(importlib.import_module(module), function)(*args)
  except DataError as e:
    with open(os.path.join(out, 'error.txt'), 'w') as f:
      f.write(str(e))
    sys.exit(3)
  if isinstance(result, dict):
    with open(os.path.join(out, 'result.json'), 'w') as f:
      json.dump(result, f)
    return
  np.save(os.path.join(out, 'images.npy'), result.images)
  np.save(os.path.join(out, 'labels.npy'), result.labels)


def tfds_failure(name: str, data_dir: Optional[str], error: Exception, what: str = 'load',
                 download: bool = True) -> DataError:
  """The DataError for a failed tfds prepare / read of CIFAR `name`: what failed,
  and the routes that work (a package missing here is named, not sent elsewhere)."""
  where = os.path.abspath(os.path.expanduser(data_dir or '~/tensorflow_datasets'))
  text = str(error).strip()
  first_line = text.splitlines()[0][:300].rstrip('.') if text else ''
  failed = (f'cannot {what} tfds {name!r} in data.data_dir={where!r}'
            f'{"" if download else " (data.download=False)"}: '
            f'{type(error).__name__}: {first_line}')
  if isinstance(error, ImportError):
    return DataError(f'{failed}. tensorflow-datasets lacks a package it imports: install '
                     f'it (pip install -r requirements.txt installs all that {name} needs).')
  filename = CIFAR_ARCHIVES[name][0]
  return DataError(
      f'{failed}. To prepare it: where there is internet (with this project\'s '
      f'requirements installed) run python -c "import tensorflow_datasets as tfds; '
      f"tfds.builder('{name}', data_dir='{where}').download_and_prepare()\" and copy "
      f'that directory here (--config.data.data_dir); or download '
      f'{cifar_archive_url(name)} by hand and pass --config.data.archive=PATH/{filename} '
      f'(or put it into {os.path.join(where, "downloads", "manual")} and keep '
      f'data.download=True).')


def prepare_from_archive(tfds, name: str, data_dir: Optional[str], archive: str):
  """Prepares `name` in data_dir from the hand-downloaded archive, offline: tfds
  takes a file named as its download from the manual dir (checking its size and
  sha256 against the official ones) instead of downloading it. A no-op when the
  data set is already prepared there."""
  problem = archive_problem(name, archive)
  if problem:
    raise DataError(problem)
  filename = CIFAR_ARCHIVES[name][0]
  builder = tfds.builder(name, data_dir=data_dir)
  with tempfile.TemporaryDirectory(prefix='pcdarts_jax_cifar_') as manual_dir:
    # Linked under tfds' name for it, so a renamed download works too.
    os.symlink(os.path.abspath(os.path.expanduser(archive)), os.path.join(manual_dir, filename))
    config = tfds.download.DownloadConfig(manual_dir=manual_dir, try_download_gcs=False)
    try:
      builder.download_and_prepare(download_config=config)
    except Exception as e:  # tfds raises several types; the message names the routes.
      # tfds.download does not export this class; its name has been stable.
      if type(e).__name__ != 'NonMatchingChecksumError':
        raise tfds_failure(name, data_dir, e, what='prepare') from e
      expected = (type(builder).url_infos or {}).get(cifar_archive_url(name))
      official = f' ({int(expected.size)} bytes, sha256 {expected.checksum})' if expected else ''
      raise DataError(
          f'data.archive={archive!r} ({os.path.getsize(os.path.expanduser(archive))} bytes) '
          f'is not the official {filename}{official}: a partial or altered download? '
          f'Download it again from {cifar_archive_url(name)}.') from e
  return builder


def _read_tfds(name: str, split: str, data_dir: Optional[str], download: bool,
               archive: Optional[str] = None) -> ArraySet:
  _, tfds = import_tfds(name)
  if archive is not None:  # Prepared here, so tfds.load has nothing to fetch.
    prepare_from_archive(tfds, name, data_dir, archive)
  try:
    ds = tfds.load(name, split=split, data_dir=data_dir, as_supervised=True,
                   download=download and archive is None, shuffle_files=False)
  except Exception as e:  # tfds raises several types for "not there".
    raise tfds_failure(name, data_dir, e, download=download) from e
  images, labels = [], []
  # Batched reads; tfds' batch_size=-1 reserves one giant buffer and can abort.
  for x, y in tfds.as_numpy(ds.batch(4096)):
    images.append(x)
    labels.append(y)
  return ArraySet(np.concatenate(images).astype(np.uint8),
                  np.concatenate(labels).astype(np.int32))


IMAGENET16_TRAIN_FILES = tuple(f'train_data_batch_{i}' for i in range(1, 11))
IMAGENET16_TEST_FILES = ('val_data',)
IMAGENET16_CLASSES = 120  # ImageNet16-120 keeps the classes with label <= 120.


def _imagenet16_dir(data_dir: Optional[str]) -> str:
  """The directory holding the down-sampled files: data_dir itself or its
  `ImageNet16` subdirectory."""
  names = IMAGENET16_TRAIN_FILES + IMAGENET16_TEST_FILES
  how = (f'ImageNet16-120 is read from the 16x16 down-sampled ImageNet files '
         f'(Chrabaszcz et al. 2017, image-net.org "Downsampled ImageNet 16x16", as used by '
         f'NAS-Bench-201): put {", ".join(names)} into one directory and pass '
         f'--config.data.data_dir=DIR.')
  if data_dir is None:
    raise DataError(f'data.data_dir is not set. {how}')
  data_dir = os.path.expanduser(data_dir)
  for candidate in (data_dir, os.path.join(data_dir, 'ImageNet16')):
    if all(os.path.isfile(os.path.join(candidate, n)) for n in names):
      return candidate
  missing = [n for n in names if not os.path.isfile(os.path.join(data_dir, n))]
  raise DataError(f'data.data_dir={data_dir!r} lacks {missing}. {how}')


def load_imagenet16(data_dir: Optional[str], split: str,
                    num_classes: int = IMAGENET16_CLASSES) -> ArraySet:
  """ImageNet16-120: `train` from train_data_batch_1..10, `test` from val_data.

  Each file is a pickled dict: 'data' uint8 (N, 768), every row a 3x16x16
  channel-planar image, and 'labels', class ids 1..1000. Classes 1..`num_classes`
  are kept and relabelled 0..num_classes-1.
  """
  import pickle  # pylint: disable=g-import-not-at-top
  if split not in ('train', 'test'):
    raise DataError(f"data split {split!r} is not one of ('train', 'test') for "
                    f'imagenet16_120.')
  root = _imagenet16_dir(data_dir)
  images, labels = [], []
  for name in IMAGENET16_TRAIN_FILES if split == 'train' else IMAGENET16_TEST_FILES:
    path = os.path.join(root, name)
    try:
      with open(path, 'rb') as f:
        entry = pickle.load(f, encoding='latin1')
      x = np.asarray(entry['data'], np.uint8)
      x = x.reshape(len(x), 3, 16, 16)
      y = np.asarray(entry['labels'], np.int64).reshape(-1)
    except Exception as e:  # Unreadable or not in the expected layout.
      raise DataError(f'data.data_dir: {path!r} is not a down-sampled ImageNet 16x16 file '
                      f"(a pickled dict with 'data' uint8 (N, 3 * 16 * 16) and 'labels'): "
                      f'{type(e).__name__}: {e}') from e
    if len(x) != len(y):
      raise DataError(f'data.data_dir: {path!r} has {len(x)} images but {len(y)} labels.')
    keep = (y >= 1) & (y <= num_classes)
    images.append(x[keep].transpose(0, 2, 3, 1))  # channel-planar -> HWC
    labels.append((y[keep] - 1).astype(np.int32))
  return ArraySet(np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels))


def load_split(data_config, split: str = 'train') -> ArraySet:
  """The whole split `split` of `data_config.name` as uint8 NHWC arrays."""
  name = data_config.name
  if name not in DATASETS:
    raise DataError(f'data.name={name!r} is not one of {DATASETS}.')
  if name == 'digits':
    return _load_digits(split)
  if name == 'imagenet16_120':
    return load_imagenet16(data_config.get('data_dir'), split)
  data_dir = data_config.get('data_dir')
  if data_dir is not None:
    data_dir = os.path.expanduser(data_dir)
    if not os.path.isdir(data_dir):
      raise DataError(f'data.data_dir={data_dir!r} does not exist; give the tfds data '
                      f'directory that holds {name}, or leave it None for the default.')
  archive = data_config.get('archive')
  problem = archive_problem(name, archive)
  if problem:
    raise DataError(problem)
  return _load_tfds(name, split, data_dir, data_config.get('download', True), archive)


def search_splits(data_config) -> Tuple[ArraySet, ArraySet]:
  """Train split cut in two as the reference does: the first `train_portion` of the
  images trains the weights, the remainder trains the architecture."""
  full = load_split(data_config, 'train')
  cut = int(np.floor(data_config.train_portion * len(full)))
  return full.subset(0, cut), full.subset(cut, len(full))


class EpochIterator:
  """Endless batches over an ArraySet, reshuffled every epoch, last partial batch
  dropped (one compiled shape). Deterministic given the seed; `state` / `restore`
  give the position for checkpoints."""

  def __init__(self, data: ArraySet, batch_size: int, seed: int):
    if batch_size > len(data):
      raise DataError(f'batch size {batch_size} is larger than the {len(data)} '
                      f'images it draws from.')
    self.data, self.batch_size, self.seed = data, batch_size, seed
    self.epoch, self.position = 0, 0
    self._order = self._permutation(0)

  @property
  def steps_per_epoch(self) -> int:
    return len(self.data) // self.batch_size

  def _permutation(self, epoch: int) -> np.ndarray:
    return np.random.default_rng([self.seed, epoch]).permutation(len(self.data))

  def state(self) -> Dict[str, int]:
    return {'epoch': self.epoch, 'position': self.position}

  def restore(self, state: Dict[str, int]):
    self.epoch, self.position = int(state['epoch']), int(state['position'])
    self._order = self._permutation(self.epoch)

  def __iter__(self) -> Iterator[Dict[str, np.ndarray]]:
    return self

  def __next__(self) -> Dict[str, np.ndarray]:
    if self.position >= self.steps_per_epoch:
      self.epoch, self.position = self.epoch + 1, 0
      self._order = self._permutation(self.epoch)
    index = self._order[self.position * self.batch_size:(self.position + 1) * self.batch_size]
    self.position += 1
    return {'image': self.data.images[index], 'label': self.data.labels[index]}


def eval_batches(data: ArraySet, batch_size: int) -> Iterator[Dict[str, np.ndarray]]:
  """Every image once, in order; the last batch is padded and masked (`mask`)."""
  for start in range(0, len(data), batch_size):
    images = data.images[start:start + batch_size]
    labels = data.labels[start:start + batch_size]
    n = len(labels)
    mask = np.zeros(batch_size, np.float32)
    mask[:n] = 1.0
    if n < batch_size:
      images = np.concatenate([images, np.zeros((batch_size - n,) + images.shape[1:], images.dtype)])
      labels = np.concatenate([labels, np.zeros(batch_size - n, labels.dtype)])
    yield {'image': images, 'label': labels, 'mask': mask}


def _standardize(x: jax.Array, mean, std) -> jax.Array:
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def normalize(images: jax.Array, mean, std) -> jax.Array:
  """uint8 (or [0, 255] float) images -> float32, per-channel standardised."""
  return _standardize(images.astype(jnp.float32) / 255.0, mean, std)


def augment(rng: jax.Array, images: jax.Array, mean, std, crop_padding: int,
            random_flip: bool) -> jax.Array:
  """Reference train transform on device: zero-pad, random crop, flip, normalise.

  Padding is applied to raw pixels (black border), before normalisation, as
  torchvision's RandomCrop(padding=...) does.
  """
  n, h, w, _ = images.shape
  x = images.astype(jnp.float32) / 255.0
  crop_rng, flip_rng = jax.random.split(rng)
  if crop_padding > 0:
    p = crop_padding
    x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    offsets = jax.random.randint(crop_rng, (n, 2), 0, 2 * p + 1)
    crop = lambda img, off: jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, img.shape[-1]))
    x = jax.vmap(crop)(x, offsets)
  if random_flip:
    flip = jax.random.bernoulli(flip_rng, 0.5, (n, 1, 1, 1))
    x = jnp.where(flip, x[:, :, ::-1, :], x)
  return _standardize(x, mean, std)


def train_augment(data_config):
  """`augment` with the config's crop padding, flip and normalisation bound:
  (rng, uint8 images) -> float32 images."""
  d = data_config
  return lambda rng, images: augment(rng, images, d.mean, d.std, d.crop_padding,
                                     d.random_flip)


def cutout(rng: jax.Array, images: jax.Array, length: int) -> jax.Array:
  """Zeroes one length x length square per image (reference Cutout, applied after
  normalisation): the centre is uniform over the image and the square is clipped
  at the borders, rows and columns [centre - length//2, centre + length//2)."""
  if length <= 0:
    return images
  n, h, w, _ = images.shape
  y_rng, x_rng = jax.random.split(rng)
  cy = jax.random.randint(y_rng, (n, 1), 0, h)
  cx = jax.random.randint(x_rng, (n, 1), 0, w)
  half = length // 2
  rows, cols = jnp.arange(h)[None], jnp.arange(w)[None]
  in_rows = (rows >= cy - half) & (rows < cy + half)
  in_cols = (cols >= cx - half) & (cols < cx + half)
  keep = ~(in_rows[:, :, None] & in_cols[:, None, :])
  return images * keep[..., None].astype(images.dtype)
