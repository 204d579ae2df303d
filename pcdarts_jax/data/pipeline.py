"""Search inputs: in-memory arrays (CIFAR, digits) or a streaming tf.data pipeline
(the ImageNet subset search, or CIFAR with `data.in_memory=False`).

Both give the loop the same thing (`SearchInputs`): two endless iterators of
*host-local* uint8 batches (this process's slice of each global batch) with
`steps_per_epoch`, `state()` and `restore()` for checkpoints, and masked
validation batches over the architecture half. Normalisation and the cheap
augmentations (pad + crop for CIFAR, flips) happen on the device.

ImageNet (as PC-DARTS' search, Xu et al. ICLR 2020): per class, a seeded 10% of
the train split trains the weights and a disjoint 2.5% the architecture. The subsets are
chosen once from a pass over the labels (images are not decoded), cached as a
small .npz of example keys, and then streamed: decode, random-resized-crop to
224 (stateless, seeded per example), batch, prefetch. Each process reads only
its share of the record files.
"""

import collections
import dataclasses
import hashlib
import os
from typing import Callable, Dict, Iterator, Optional, Tuple

import jax
import numpy as np

from pcdarts_jax.data import datasets as data
from pcdarts_jax.data import sources
from pcdarts_jax.run import config_fields
from pcdarts_jax.run import parallel

IMAGENET = 'imagenet2012'
STREAMING = {IMAGENET: {'classes': 1000, 'key': 'file_name'},
             'cifar10': {'classes': 10, 'key': 'id'},
             'cifar100': {'classes': 100, 'key': 'id'}}
EVAL_RESIZE_RATIO = 0.875  # Resize to size / 0.875 (256 for 224), centre-crop size.

IMAGENET_PREPARE = (
    'ImageNet cannot be downloaded automatically. Download ILSVRC2012_img_train.tar and '
    'ILSVRC2012_img_val.tar from https://image-net.org into {manual_dir}, then run once: '
    'python -c "import tensorflow_datasets as tfds; tfds.builder(\'imagenet2012\', '
    'data_dir=\'{data_dir}\').download_and_prepare(download_config='
    'tfds.download.DownloadConfig(manual_dir=\'{manual_dir}\'))" (about 150 GB of disk, '
    'hours of CPU); then pass --config.data.data_dir={data_dir} '
    '--config.data.manual_dir={manual_dir}.')


def num_classes(data_config) -> int:
  """The class count of a data config (or of a built-in data set's name; own
  data (`sources`) need their config: the count comes from the data)."""
  name = data_config if isinstance(data_config, str) else data_config.name
  if sources.is_own(name):
    if isinstance(data_config, str):
      raise sources.SourceError(f'data.name={name!r}: its class count comes from the data; '
                                f'pass the data config.')
    return sources.num_classes(data_config)
  return STREAMING[name]['classes'] if name == IMAGENET else data.NUM_CLASSES[name]


def image_shape(data_config) -> Tuple[int, int, int]:
  """(H, W, C) of the images the network sees."""
  if data_config.name == IMAGENET:
    size = data_config.image_size
    return (size, size, 3)
  if sources.is_own(data_config.name):
    return sources.image_shape(data_config)
  return data.IMAGE_SHAPES[data_config.name]


class DatasetNames(tuple):
  """The data.name values: the built-in data sets, 'folder', 'arrays' and the
  pattern 'tfds:NAME[:VERSION]', which `in` matches for every NAME."""

  def __contains__(self, name) -> bool:
    return sources.is_own(name) or tuple.__contains__(self, name)


def dataset_names() -> Tuple[str, ...]:
  return DatasetNames(data.DATASETS + (IMAGENET,) + sources.NAMES)


def streams(data_config) -> bool:
  """Whether a run streams `data_config` with tf.data (else it is in memory)."""
  if sources.is_own(data_config.name):
    return not sources.in_memory(data_config)
  return data_config.name == IMAGENET or not data_config.get('in_memory', True)


# --------------------------------------------------------------------------
# Subset selection (pure NumPy; the expensive label pass is separate).


# Per class, seeded disjoint subsets (defined with the data sets, which split
# their own train sets the same way).
select_subsets = data.select_subsets


# --------------------------------------------------------------------------
# Iterators with checkpointable positions.


class HostSlice:
  """An in-memory `data.EpochIterator` of global batches, yielding this
  process's slice (every process draws the same global batch)."""

  def __init__(self, iterator: data.EpochIterator):
    self.inner = iterator

  @property
  def steps_per_epoch(self) -> int:
    return self.inner.steps_per_epoch

  def state(self):
    return self.inner.state()

  def restore(self, state):
    self.inner.restore(state)

  def __iter__(self):
    return self

  def __next__(self):
    return parallel.host_slice(next(self.inner))


class StreamIterator:
  """Endless host-local batches from `make_epoch(epoch, skip_batches)`, a
  tf.data pipeline of one epoch; `restore` rebuilds the epoch and skips the
  batches already consumed (before decoding, so resuming is cheap)."""

  def __init__(self, make_epoch: Callable, steps_per_epoch: int):
    self.make_epoch, self.steps_per_epoch = make_epoch, steps_per_epoch
    self.epoch, self.position, self._iterator = 0, 0, None

  def state(self) -> Dict[str, int]:
    return {'epoch': self.epoch, 'position': self.position}

  def restore(self, state: Dict[str, int]):
    self.epoch, self.position = int(state['epoch']), int(state['position'])
    self._iterator = None

  def __iter__(self):
    return self

  def __next__(self) -> Dict[str, np.ndarray]:
    if self.position >= self.steps_per_epoch:
      self.epoch, self.position, self._iterator = self.epoch + 1, 0, None
    if self._iterator is None:
      self._iterator = iter(self.make_epoch(self.epoch, self.position))
    batch = next(self._iterator)
    self.position += 1
    return batch


class DevicePrefetch:
  """Shards batches and copies them to the local devices `size` steps ahead, so
  the transfer overlaps the running step. `state()` is the position after the
  batches handed out, not those in flight: a checkpoint resumes exactly."""

  def __init__(self, iterator, size: int = 2):
    self.inner, self.size = iterator, size
    self._queue = collections.deque()
    self._state = iterator.state()

  @property
  def steps_per_epoch(self) -> int:
    return self.inner.steps_per_epoch

  def state(self):
    return self._state

  def restore(self, state):
    self.inner.restore(state)
    self._queue.clear()
    self._state = state

  def __iter__(self):
    return self

  def __next__(self):
    while len(self._queue) <= self.size:
      batch = parallel.put_sharded(next(self.inner))
      self._queue.append((batch, self.inner.state()))
    batch, self._state = self._queue.popleft()
    return batch


@dataclasses.dataclass
class SearchInputs:
  train: Iterator          # host-local weight batches
  arch: Iterator           # host-local architecture batches
  eval_batches: Callable   # eval_batches(global_batch_size) -> host-local masked batches
  sample_image: np.ndarray  # (1, H, W, C) uint8, to initialise the model
  train_size: int
  arch_size: int


def check_batch_fits(config, train_size: int, arch_size: int):
  """Both halves must hold at least one full batch (the last partial one is dropped)."""
  b = config.search.batch_size
  config_fields.require(
      b <= min(train_size, arch_size),
      f'search.batch_size={b} is larger than the data halves ({train_size} weight / '
      f'{arch_size} arch images with data.train_portion={config.data.train_portion}); '
      f'allowed: 1..{min(train_size, arch_size)}.')


def search_inputs(config) -> SearchInputs:
  """The weight / architecture inputs of a search, in memory or streamed."""
  d = config.data
  if sources.is_own(d.name):
    if streams(d):
      return _own_streaming_search_inputs(config)
    return _memory_search_inputs(config, *sources.search_sets(d))
  if streams(d):
    return _streaming_search_inputs(config)
  return _memory_search_inputs(config, *data.search_splits(d))


def _memory_search_inputs(config, train_set: data.ArraySet,
                          arch_set: data.ArraySet) -> SearchInputs:
  s = config.search
  # Checked here, before an iterator refuses a too-large batch less helpfully.
  check_batch_fits(config, len(train_set), len(arch_set))
  return SearchInputs(
      train=HostSlice(data.EpochIterator(train_set, s.batch_size, seed=config.seed)),
      arch=HostSlice(data.EpochIterator(arch_set, s.batch_size, seed=config.seed + 1)),
      eval_batches=lambda size: (parallel.host_slice(b) for b in data.eval_batches(arch_set, size)),
      sample_image=train_set.images[:1],
      train_size=len(train_set), arch_size=len(arch_set))


# --------------------------------------------------------------------------
# Streaming (tf.data).


def _tf(name: str):
  return data.import_tfds(name)[0]


def _check_manual_dir(d):
  """ImageNet needs a prepared tfds directory or a manual_dir with the tars."""
  data_dir = os.path.expanduser(d.data_dir or '~/tensorflow_datasets')
  manual_dir = os.path.expanduser(d.manual_dir or os.path.join(data_dir, 'downloads', 'manual'))
  prepared = os.path.isdir(os.path.join(data_dir, IMAGENET))
  if prepared:
    return data_dir, manual_dir
  tars = ('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar')
  have = os.path.isdir(manual_dir) and all(
      os.path.exists(os.path.join(manual_dir, t)) for t in tars)
  if not have:
    state = 'does not exist' if not os.path.isdir(manual_dir) else (
        'is empty' if not os.listdir(manual_dir) else f'lacks {" or ".join(tars)}')
    raise data.DataError(
        f'data.manual_dir={manual_dir!r} {state}, and data.data_dir={data_dir!r} holds no '
        f'prepared {IMAGENET}. ' + IMAGENET_PREPARE.format(manual_dir=manual_dir,
                                                            data_dir=data_dir))
  return data_dir, manual_dir


def _builder(d):
  _, tfds = data.import_tfds(d.name)
  if d.get('mock_examples', 0):
    builder = tfds.builder(d.name, data_dir=d.data_dir)
    return builder
  if d.name == IMAGENET:
    data_dir, manual_dir = _check_manual_dir(d)
    builder = tfds.builder(d.name, data_dir=data_dir)
    if not os.path.isdir(os.path.join(data_dir, IMAGENET)):
      builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    return builder
  if d.get('archive'):  # The hand-downloaded CIFAR archive, prepared offline.
    return data.prepare_from_archive(tfds, d.name, d.data_dir, d.archive)
  builder = tfds.builder(d.name, data_dir=d.data_dir)
  if d.get('download', True):
    try:
      builder.download_and_prepare()
    except Exception as e:  # tfds raises several types; the message names the routes.
      raise data.tfds_failure(d.name, d.data_dir, e, what='prepare') from e
  return builder


class _Mock:
  """`tfds.testing.mock_data` around every tfds read when data.mock_examples > 0:
  random images in the data set's real format, for smoke-testing a config on a
  machine without the data (docs/multi-device.md, the 8-device ImageNet smoke run)."""

  def __init__(self, d):
    self.examples = int(d.get('mock_examples', 0) or 0)
    self.name = d.name

  def __enter__(self):
    if self.examples:
      _, tfds = data.import_tfds(self.name)
      self._context = tfds.testing.mock_data(num_examples=self.examples,
                                             policy=tfds.testing.MockPolicy.USE_CODE)
      self._context.__enter__()
    return self

  def __exit__(self, *exc):
    if self.examples:
      self._context.__exit__(*exc)


def host_range(total: int, process_index: Optional[int] = None,
               process_count: Optional[int] = None) -> Tuple[int, int]:
  """This process's contiguous share [start, stop) of `total` examples."""
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  return index * total // count, (index + 1) * total // count


def _split_size(d, split: str) -> int:
  if d.get('mock_examples', 0):  # Mocked splits carry no metadata; each has this many.
    return int(d.mock_examples)
  with _Mock(d):
    return int(_builder(d).info.splits[split].num_examples)


def _read(d, split: str, shard: bool):
  """The split's records in their stored order, image left encoded; with
  `shard`, only this process's contiguous share (tfds reads only those files)."""
  _, tfds = data.import_tfds(d.name)
  if shard and jax.process_count() > 1:
    start, stop = host_range(_split_size(d, split))
    split = f'{split}[{start}:{stop}]'
  with _Mock(d):
    return _builder(d).as_dataset(
        split=split, shuffle_files=False, decoders={'image': tfds.decode.SkipDecoding()})


def _key_name(d) -> str:
  return STREAMING[d.name]['key']


def _subset_cache_path(d, seed: int, fractions) -> str:
  directory = os.path.expanduser(d.get('subset_dir') or d.data_dir or
                                 os.path.expanduser('~/tensorflow_datasets'))
  tag = hashlib.sha1(repr((d.name, tuple(fractions), seed, int(d.get('mock_examples', 0) or 0))
                          ).encode()).hexdigest()[:10]
  return os.path.join(directory, f'{d.name}_search_subsets_{tag}.npz')


def subset_keys(d, seed: int) -> Dict[str, np.ndarray]:
  """The weight and architecture subsets: `weights` / `arch` keys (file names or
  ids) and `weights_index` / `arch_index` (positions in the split's stored
  order, which tell each process how many of them its share holds). Chosen once
  from one pass over the labels and cached (process 0 writes the cache)."""
  fractions = _fractions(d)
  path = _subset_cache_path(d, seed, fractions)
  if not os.path.exists(path):
    if parallel.is_main_process():
      keys, labels = [], []
      for example in _read(d, 'train', shard=False).map(
          lambda ex: (ex[_key_name(d)], ex['label'])).batch(4096).as_numpy_iterator():
        keys.append(example[0])
        labels.append(example[1])
      keys, labels = np.concatenate(keys).astype(bytes), np.concatenate(labels)
      weight_index, arch_index = _choose(d, labels, fractions, seed)
      os.makedirs(os.path.dirname(path), exist_ok=True)
      tmp = path + f'.tmp-{os.getpid()}.npz'
      np.savez(tmp, weights=keys[weight_index], arch=keys[arch_index],
               weights_index=weight_index, arch_index=arch_index, total=len(keys))
      os.replace(tmp, path)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices('search subsets written')
  with np.load(path) as f:
    return {k: f[k] for k in f.files}


def share_counts(index: np.ndarray, total: int) -> np.ndarray:
  """How many of the examples at positions `index` fall in each process's share."""
  bounds = [host_range(total, p, jax.process_count())[0] for p in range(jax.process_count())]
  return np.diff(np.searchsorted(np.sort(index), bounds + [total]))


def _fractions(d) -> Tuple[float, float]:
  if d.name == IMAGENET:
    return (d.train_fraction, d.arch_fraction)
  return (d.train_portion, 1.0 - d.train_portion)


def _choose(d, labels, fractions, seed):
  if d.name == IMAGENET:
    return select_subsets(labels, fractions, seed)
  # CIFAR: the in-memory path's split, streamed (first part weights, rest arch).
  cut = int(np.floor(fractions[0] * len(labels)))
  return np.arange(cut), np.arange(cut, len(labels))


def _decode(d, train: bool, tf):
  """Encoded image -> uint8 (size, size, 3). ImageNet: random-resized-crop
  (scale 0.08..1, aspect 3/4..4/3, stateless per-example seed) for training,
  resize + centre crop for evaluation. CIFAR: decode only."""
  size = image_shape(d)[0]

  def decode(encoded, seed):
    if d.name != IMAGENET:
      return tf.io.decode_image(encoded, channels=3, expand_animations=False)
    if train:
      shape = tf.io.extract_jpeg_shape(encoded)
      begin, crop, _ = tf.image.stateless_sample_distorted_bounding_box(
          shape, tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed, min_object_covered=0.0,
          aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0), max_attempts=10,
          use_image_if_no_bounding_boxes=True)
      window = tf.stack([begin[0], begin[1], crop[0], crop[1]])
      image = tf.io.decode_and_crop_jpeg(encoded, window, channels=3)
      image = tf.image.resize(image, (size, size), method='bilinear', antialias=True)
    else:
      image = tf.io.decode_jpeg(encoded, channels=3)
      shape = tf.cast(tf.shape(image)[:2], tf.float32)
      scale = (size / EVAL_RESIZE_RATIO) / tf.reduce_min(shape)
      resized = tf.cast(tf.round(shape * scale), tf.int32)
      image = tf.image.resize(image, resized, method='bilinear', antialias=True)
      top = (resized[0] - size) // 2
      left = (resized[1] - size) // 2
      image = image[top:top + size, left:left + size]
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
  return decode


def _subset_dataset(d, keys: np.ndarray, tf):
  """This process's records whose key is in `keys` (images still encoded)."""
  table = tf.lookup.StaticHashTable(
      tf.lookup.KeyValueTensorInitializer(tf.constant(keys), tf.ones(len(keys), tf.int32)),
      default_value=0)
  name = _key_name(d)
  ds = _read(d, 'train', shard=True).filter(lambda ex: table.lookup(ex[name]) > 0)
  ds = ds.map(lambda ex: {'image': ex['image'], 'label': tf.cast(ex['label'], tf.int32)})
  cache = d.get('cache_dir')
  if cache:  # The encoded subset on local disk: later epochs skip the full read.
    os.makedirs(os.path.expanduser(cache), exist_ok=True)
    ds = ds.cache(os.path.join(os.path.expanduser(cache),
                               f'{d.name}-{hashlib.sha1(keys.tobytes()).hexdigest()[:10]}-'
                               f'{jax.process_index()}'))
  return ds


def _batches(ds, decode, local_batch: int, steps: int, seed: int, shuffle_buffer: int, tf):
  """`make_epoch(epoch, skip_batches)` over records `ds`: a seeded shuffle per
  epoch (repeated, so a process whose share is a little short never runs dry),
  `steps` batches, the first `skip_batches` skipped before decoding."""
  def make_epoch(epoch, skip_batches):
    epoch_ds = ds.repeat().shuffle(shuffle_buffer, seed=seed * 100_003 + epoch,
                                   reshuffle_each_iteration=False)
    epoch_ds = epoch_ds.take(steps * local_batch).enumerate()
    epoch_ds = epoch_ds.skip(skip_batches * local_batch)
    base = (seed * 7919 + epoch) * 1024 + jax.process_index()
    epoch_ds = epoch_ds.map(
        lambda i, ex: {'image': decode(ex['image'], tf.stack([tf.cast(base, tf.int64), i])),
                       'label': ex['label']},
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return epoch_ds.batch(local_batch, drop_remainder=True).prefetch(2).as_numpy_iterator()
  return make_epoch


def _masked_batches(ds, decode, local_size: int, steps: int, shape, tf):
  """One pass of masked batches; every process yields `steps` of them (padding
  batches at the end), as the pmapped collectives need."""
  ds = ds.map(lambda ex: {'image': decode(ex['image'], None), 'label': ex['label']},
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  count = 0
  for batch in ds.batch(local_size).prefetch(2).as_numpy_iterator():
    count += 1
    yield _pad(batch, local_size)
  for _ in range(steps - count):
    yield _pad({'image': np.zeros((0,) + shape, np.uint8), 'label': np.zeros(0, np.int32)},
               local_size)


def _local_eval_size(global_size: int) -> int:
  """Per-process eval batch, the global one rounded up to split over the devices."""
  return -(-global_size // parallel.device_count()) * parallel.local_device_count()


def _streaming_search_inputs(config) -> SearchInputs:
  tf = _tf(config.data.name)
  d, s = config.data, config.search
  subsets = subset_keys(d, config.data.get('subset_seed', config.seed))
  total = int(subsets['total'])
  local_batch = s.batch_size // jax.process_count()
  local_eval = _local_eval_size(s.eval_batch_size)
  shuffle_buffer = int(d.get('shuffle_buffer', 10_000))
  shape = image_shape(d)

  def train_iterator(name, seed):
    size = len(subsets[name])
    steps = size // s.batch_size
    if steps == 0:
      raise data.DataError(
          f'search.batch_size={s.batch_size} is larger than the {size} images of the '
          f'{d.name} {name} subset; lower it (allowed: 1..{size}).')
    make_epoch = _batches(_subset_dataset(d, subsets[name], tf), _decode(d, True, tf),
                          local_batch, steps, seed, shuffle_buffer, tf)
    return StreamIterator(make_epoch, steps), size

  train_iter, train_size = train_iterator('weights', config.seed)
  arch_iter, arch_size = train_iterator('arch', config.seed + 1)
  eval_steps = int(max(-(-share_counts(subsets['arch_index'], total) // local_eval)))
  eval_batches = lambda global_size: _masked_batches(
      _subset_dataset(d, subsets['arch'], tf), _decode(d, False, tf), local_eval,
      eval_steps, shape, tf)
  return SearchInputs(train=train_iter, arch=arch_iter, eval_batches=eval_batches,
                      sample_image=np.zeros((1,) + shape, np.uint8),
                      train_size=train_size, arch_size=arch_size)


def _host_share(index: np.ndarray) -> np.ndarray:
  """This process's contiguous share of the positions `index`."""
  start, stop = host_range(len(index))
  return index[start:stop]


def _own_epochs(d, stream: sources.Stream, share: np.ndarray, local_batch: int, steps: int,
                seed: int, tf) -> Callable:
  """`make_epoch(epoch, skip_batches)` over this process's records `share`. A
  folder's records are paths, in class order: each epoch a seeded permutation
  of all of them (exact epochs; repeated where a share is a little short). tfds
  records are encoded images, shuffled when tfds prepared them: a shuffle buffer."""
  if stream.labels is None:
    return _batches(stream.records(share), stream.decode, local_batch, steps, seed,
                    int(d.get('shuffle_buffer', 10_000)), tf)

  def make_epoch(epoch, skip_batches):
    order = share[np.random.default_rng([seed, epoch]).permutation(len(share))]
    ds = stream.records(order).repeat().take(steps * local_batch)
    ds = ds.skip(skip_batches * local_batch).map(
        lambda ex: {'image': stream.decode(ex['image']), 'label': ex['label']},
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(local_batch, drop_remainder=True).prefetch(2).as_numpy_iterator()
  return make_epoch


def _own_streaming_search_inputs(config) -> SearchInputs:
  """Own data streamed (sources.stream): the weight / architecture positions of
  the train split chosen as in memory (sources.search_split); each process
  reads its contiguous share of each, decodes and fits the images."""
  d, s = config.data, config.search
  tf = _tf(d.name)
  train = sources.stream(d, 'train', tf)
  weights, arch = sources.search_split(d, train.labels, train.size)
  check_batch_fits(config, len(weights), len(arch))
  local_batch = s.batch_size // jax.process_count()
  local_eval = _local_eval_size(s.eval_batch_size)
  shape = image_shape(d)

  def train_iterator(index, seed):
    steps = len(index) // s.batch_size
    make_epoch = _own_epochs(d, train, _host_share(index), local_batch, steps, seed, tf)
    return StreamIterator(make_epoch, steps)

  shares = [host_range(len(arch), p, jax.process_count()) for p in range(jax.process_count())]
  eval_steps = max(-(-(stop - start) // local_eval) for start, stop in shares)
  eval_batches = lambda global_size: _masked_batches(
      train.records(_host_share(arch)), train.decode, local_eval, eval_steps, shape, tf)
  return SearchInputs(train=train_iterator(weights, config.seed),
                      arch=train_iterator(arch, config.seed + 1), eval_batches=eval_batches,
                      sample_image=np.zeros((1,) + shape, np.uint8),
                      train_size=len(weights), arch_size=len(arch))


@dataclasses.dataclass
class DataSource:
  """What the trainer reads: endless train batches from a global step on, and
  one pass of masked test batches (`mask` 0 on padding). Batches are this
  process's slice of each global batch, dicts of uint8 NHWC `image` and int32
  `label`; crops/flips and normalisation happen on device (data.augment)."""
  steps_per_epoch: int
  train_batches: Callable[[int], Iterator[Dict[str, np.ndarray]]]
  test_batches: Callable[[], Iterator[Dict[str, np.ndarray]]]
  test_size: int


def memory_source(config, train_set: Optional[data.ArraySet],
                  test_set: data.ArraySet) -> DataSource:
  """The trainer's data from arrays in memory (train_set None: evaluation only)."""
  t = config.train
  steps_per_epoch, batches = 0, None
  if train_set is not None:
    config_fields.require(t.batch_size <= len(train_set),
                          f'train.batch_size={t.batch_size} is larger than the '
                          f'{len(train_set)} {config.data.name} train images; allowed: '
                          f'1..{len(train_set)}.')
    steps_per_epoch = len(train_set) // t.batch_size

    def batches(start_step: int):
      it = data.EpochIterator(train_set, t.batch_size, seed=config.seed)
      # Batches are drawn in a fixed order, so the position follows from the step.
      it.restore({'epoch': start_step // steps_per_epoch,
                  'position': start_step % steps_per_epoch})
      return (parallel.host_slice(b) for b in it)

  # Rounded up to split over the devices; the padding is masked out.
  devices = parallel.device_count()
  eval_size = -(-t.eval_batch_size // devices) * devices
  return DataSource(
      steps_per_epoch, batches,
      lambda: (parallel.host_slice(b) for b in data.eval_batches(test_set, eval_size)),
      len(test_set))


def _own_train_source(config, need_train: bool) -> DataSource:
  """Own data for the trainer: the train and test splits, in memory or streamed
  (each process its contiguous share, reshuffled every epoch)."""
  d, t = config.data, config.train
  if not streams(d):
    return memory_source(config, sources.load_split(d, 'train') if need_train else None,
                         sources.load_split(d, 'test'))
  tf = _tf(d.name)
  shape = image_shape(d)
  steps, train_batches = 0, None
  if need_train:
    train = sources.stream(d, 'train', tf)
    steps = train.size // t.batch_size
    config_fields.require(steps > 0, f'train.batch_size={t.batch_size} is larger than the '
                                     f'{train.size} {d.name} train images; allowed: '
                                     f'1..{train.size}.')
    make_epoch = _own_epochs(d, train, _host_share(np.arange(train.size)),
                             t.batch_size // jax.process_count(), steps, config.seed, tf)

    def train_batches(start_step: int):
      iterator = StreamIterator(make_epoch, steps)
      iterator.restore({'epoch': start_step // steps, 'position': start_step % steps})
      return iterator

  test = sources.stream(d, 'test', tf)
  local_eval = _local_eval_size(t.eval_batch_size)
  eval_steps = max(-(-(b - a) // local_eval) for a, b in
                   (host_range(test.size, p) for p in range(jax.process_count())))
  test_batches = lambda: _masked_batches(test.records(_host_share(np.arange(test.size))),
                                         test.decode, local_eval, eval_steps, shape, tf)
  return DataSource(steps, train_batches, test_batches, test.size)


def train_data_source(config, need_train: bool = True) -> DataSource:
  """The trainer's data for ImageNet and own data (`sources`). ImageNet: the
  whole train split streamed (each process its share, random-resized crops),
  the validation split as the test set (resize 256, centre crop 224)."""
  if sources.is_own(config.data.name):
    return _own_train_source(config, need_train)
  tf = _tf(config.data.name)
  d, t = config.data, config.train
  shape = image_shape(d)
  train_total = _split_size(d, 'train')
  test_total = _split_size(d, 'validation')
  local_batch = t.batch_size // jax.process_count()
  steps = train_total // t.batch_size
  train_batches = None
  if need_train:
    if steps == 0:
      raise data.DataError(f'train.batch_size={t.batch_size} is larger than the '
                           f'{train_total} {d.name} train images.')
    records = _read(d, 'train', shard=True).map(
        lambda ex: {'image': ex['image'], 'label': tf.cast(ex['label'], tf.int32)})
    make_epoch = _batches(records, _decode(d, True, tf), local_batch, steps, config.seed,
                          int(d.get('shuffle_buffer', 10_000)), tf)

    def train_batches(start_step: int):
      iterator = StreamIterator(make_epoch, steps)
      iterator.restore({'epoch': start_step // steps, 'position': start_step % steps})
      return iterator

  local_eval = _local_eval_size(t.eval_batch_size)
  shares = [b - a for a, b in (host_range(test_total, p) for p in range(jax.process_count()))]
  eval_steps = max(-(-n // local_eval) for n in shares)
  test_batches = lambda: _masked_batches(
      _read(d, 'validation', shard=True).map(
          lambda ex: {'image': ex['image'], 'label': tf.cast(ex['label'], tf.int32)}),
      _decode(d, False, tf), local_eval, eval_steps, shape, tf)
  return DataSource(steps, train_batches, test_batches, test_total)


def _pad(batch, size: int) -> Dict[str, np.ndarray]:
  n = len(batch['label'])
  mask = np.zeros(size, np.float32)
  mask[:n] = 1.0
  pad = lambda x: np.concatenate([x, np.zeros((size - n,) + x.shape[1:], x.dtype)])
  return {'image': pad(batch['image']), 'label': pad(batch['label']), 'mask': mask}


# ------------------------------------------------------------------ validation


def validate_archive(data_config):
  """data.archive, the hand-downloaded CIFAR archive: a file, and the right one."""
  problem = data.archive_problem(data_config.name, data_config.get('archive'))
  config_fields.require(problem is None, problem)


def validate_data(config):
  """data.* and model.num_classes against the data: own data's fields
  (sources.check_fields; bad files are named by sources.describe), the
  normalisation's length, the class count. Shared by the search, the trainer
  and SGNAS."""
  d, m = config.data, config.model
  require = config_fields.require
  if sources.is_own(d.name):
    sources.check_fields(d)
  channels = image_shape(d)[-1]
  for field in ('mean', 'std'):
    require(d.get(field) is not None,
            f'data.{field}=None: the statistics of the train split fill it in when a run '
            f'starts (sources.resolve_config); give {channels} value(s) to set it.')
  require(len(d.mean) == channels and len(d.std) == channels,
          f'data.mean / data.std need {channels} values for {d.name}, got '
          f'{len(d.mean)} / {len(d.std)}.')
  classes = num_classes(d)
  require(m.num_classes == classes,
          f'model.num_classes={m.num_classes!r} but {d.name} has {classes} classes.')


def validate_search_data(config):
  """data.* of a search: the data set, its archive, the weight / arch split
  (fractions of ImageNet's train split; train_portion elsewhere), where it is
  read from (in memory or streamed), then `validate_data`."""
  d = config.data
  require, is_int = config_fields.require, config_fields.is_int
  names = dataset_names()
  require(d.name in names, f'data.name={d.name!r} is not one of {names}.')
  validate_archive(d)
  if d.name == IMAGENET:
    for field in ('train_fraction', 'arch_fraction'):
      require(0.0 < d[field] <= 1.0, f'data.{field}={d[field]!r} must be in (0, 1].')
    require(d.train_fraction + d.arch_fraction <= 1.0,
            f'data.train_fraction + data.arch_fraction = '
            f'{d.train_fraction + d.arch_fraction} must be <= 1 (the subsets are disjoint).')
    require(is_int(d.image_size) and d.image_size >= 32,
            f'data.image_size={d.image_size!r} must be an integer >= 32.')
    require(is_int(d.get('mock_examples', 0)) and d.get('mock_examples', 0) >= 0,
            f"data.mock_examples={d.get('mock_examples')!r} must be an integer >= 0.")
  else:
    require(0.0 < d.train_portion < 1.0,
            f'data.train_portion={d.train_portion!r} must be in (0, 1).')
    if not sources.is_own(d.name):  # Own data: sources.check_fields (validate_data).
      in_memory = d.in_memory
      config_fields.require_bool(in_memory, 'data.in_memory')
      require(in_memory or d.name in STREAMING,
              f'data.in_memory=False streams from tfds, which {d.name!r} is not in; '
              f'allowed for {tuple(STREAMING)}.')
  validate_data(config)


def require_image_size(d, halvings: int, what: str):
  """The image size a network that halves it `halvings` times accepts (a
  multiple of 2**halvings: every reduction needs an even input); the error
  suggests the nearest sizes."""
  size = image_shape(d)[0]
  multiple = 2 ** halvings
  if size % multiple == 0:
    return
  needs = f'{what} halves the images {halvings} times and needs a size divisible by {multiple}'
  if d.name == IMAGENET or sources.is_own(d.name):
    nearest = ' or '.join(str(n) for n in sources.nearest_sizes(size, multiple))
    raise config_fields.ConfigError(f'data.image_size={size}: {needs}; nearest: {nearest}.')
  raise config_fields.ConfigError(f'{d.name} images are {size}x{size}; {needs}.')
