"""Own data: a folder of class subfolders, any tfds image-classification data
set, or arrays in an .npz, at any image size, with 1 or 3 channels.

  data.name='folder'      data.data_dir=DIR holding DIR/CLASS/*.jpg|png|..., or
                          DIR/train/CLASS/... with DIR/val/ (or validation/, test/).
  data.name='tfds:NAME[:VERSION]'  data.train_split / data.test_split (tfds split
                          strings, slices allowed); its 'image' and 'label'
                          features (else its only Image / ClassLabel feature).
  data.name='arrays'      data.path=FILE.npz: x_train, y_train[, x_test, y_test]
                          [, class_names]; uint8 images NHWC, or NHW grey-scale.

Images are resized to data.image_size (data.resize 'crop': the shorter side to
the size, then the centre; 'pad': the longer side, then a black border) and
converted to data.channels (None: the images' own count, which must agree).
A folder or arrays without a test split hold out a seeded stratified
data.test_portion of each class; a search's weight / architecture halves are
drawn the same way (tfds sets, shuffled when tfds prepares them, are cut in
order, as CIFAR is).

`describe(d)` says what a source holds (classes, image shape, split sizes) from
a listing and the image headers, the builder's info or the arrays' shapes, and
refuses bad input with one line naming the file or field (`SourceError`, a
ConfigError). `load_split` reads a split into memory; `stream` gives its
records for tf.data when `in_memory(d)` says no. `resolve_config` fills in
what the data decide (model.num_classes; data.mean / data.std from the train
split, cached in the workdir), `write_run_files` records classes.json and
data_stats.json in a run's workdir.
"""

import concurrent.futures
import copy
import dataclasses
import json
import os
import sys
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from pcdarts_jax.data import datasets as data
from pcdarts_jax.run import config_fields
from pcdarts_jax.run import parallel
from pcdarts_jax.run import rundir

FOLDER = 'folder'
ARRAYS = 'arrays'
TFDS_PREFIX = 'tfds:'
NAMES = (FOLDER, ARRAYS, TFDS_PREFIX + 'NAME[:VERSION]')
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp', '.tif', '.tiff',
                    '.ppm', '.pgm')
TF_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif')  # What tf.io.decode_image reads.
TRAIN_DIR = 'train'
TEST_DIRS = ('val', 'validation', 'test')  # The first one present is the test split.
RESIZE_MODES = ('crop', 'pad')
BAD_IMAGE_POLICIES = ('error', 'skip')
CHANNELS = (1, 3)
CLASSES_FILE = 'classes.json'
STATS_FILE = 'data_stats.json'
STATS_SAMPLE = 10_000  # Images the statistics of a streamed train split are taken from.
# PIL modes with one channel; every other mode (RGB, RGBA, P, CMYK, ...) is colour.
GREY_MODES = ('1', 'L', 'LA', 'La', 'I', 'I;16', 'I;16B', 'I;16L', 'I;16N', 'F')
PROBE_THREADS = 8  # File opens overlap on I/O; PIL releases the GIL while decoding.

# The one default of each own-data field, for a config that lacks it (one made
# from a CIFAR config); configs/folder_search.py sets every one of them.
DEFAULTS = {'data_dir': None, 'path': None, 'image_size': None, 'channels': None,
            'resize': 'crop', 'test_portion': 0.1, 'split_seed': 0, 'train_split': 'train',
            'test_split': 'test', 'on_bad_image': 'error', 'in_memory': None,
            'max_memory_gb': 4.0, 'download': True}


class SourceError(config_fields.ConfigError, data.DataError):
  """Own data that cannot be used: one line naming the file or field. A
  ConfigError (nothing is written) and a DataError (what launchers and the
  benchmark catch for data problems)."""


def is_own(name) -> bool:
  """Whether data.name is one of this module's sources."""
  return isinstance(name, str) and (name in (FOLDER, ARRAYS) or name.startswith(TFDS_PREFIX))


def field(d, name: str):
  """data.<name>, or its DEFAULTS entry where the config lacks it."""
  return config_fields.field(d, name, DEFAULTS.get(name))


def _require(ok: bool, message: str):
  if not ok:
    raise SourceError(message)


def _log(message: str):
  print(f'data: {message}', file=sys.stderr, flush=True)


# ------------------------------------------------------------------ fields


def check_fields(d):
  """The own-data fields, without reading the data (SourceError naming the field)."""
  name = d.name
  _require(is_own(name), f'data.name={name!r} is not one of {NAMES}.')
  if name.startswith(TFDS_PREFIX):
    _tfds_name(name)
  size = field(d, 'image_size')
  _require(size is None or (config_fields.is_int(size) and size >= 1),
           f'data.image_size={size!r} must be an integer >= 1, or None (the images\' own '
           f'size).')
  channels = field(d, 'channels')
  _require(channels is None or channels in CHANNELS,
           f'data.channels={channels!r} is not one of {CHANNELS} or None (the images\' own '
           f'count).')
  _require(field(d, 'resize') in RESIZE_MODES,
           f"data.resize={field(d, 'resize')!r} is not one of {RESIZE_MODES}.")
  _require(field(d, 'on_bad_image') in BAD_IMAGE_POLICIES,
           f"data.on_bad_image={field(d, 'on_bad_image')!r} is not one of "
           f'{BAD_IMAGE_POLICIES}.')
  portion = field(d, 'test_portion')
  _require(isinstance(portion, (int, float)) and not isinstance(portion, bool)
           and 0.0 < portion < 1.0,
           f'data.test_portion={portion!r} must be in (0, 1) (the share of each class held '
           f'out where the data have no test split).')
  _require(config_fields.is_int(field(d, 'split_seed')) and field(d, 'split_seed') >= 0,
           f"data.split_seed={field(d, 'split_seed')!r} must be an integer >= 0.")
  in_memory = field(d, 'in_memory')
  _require(in_memory is None or isinstance(in_memory, bool),
           f'data.in_memory={in_memory!r} must be True, False or None (in memory when the '
           f'decoded images fit in data.max_memory_gb).')
  _require(not (name == ARRAYS and in_memory is False),
           "data.in_memory=False: data.name='arrays' is read whole from its .npz; allowed: "
           'True or None.')
  limit = field(d, 'max_memory_gb')
  _require(isinstance(limit, (int, float)) and not isinstance(limit, bool) and limit > 0,
           f'data.max_memory_gb={limit!r} must be a number > 0.')
  if name.startswith(TFDS_PREFIX):
    for key in ('train_split', 'test_split'):
      _require(isinstance(field(d, key), str) and field(d, key),
               f'data.{key}={field(d, key)!r} must be a tfds split name, e.g. \'train\' or '
               f"'train[:90%]'.")
  if name == FOLDER:
    _require(isinstance(field(d, 'data_dir'), str) and field(d, 'data_dir'),
             f"data.data_dir={field(d, 'data_dir')!r}: data.name='folder' reads the "
             f'folder given here (one subfolder of images per class).')
  if name == ARRAYS:
    _require(isinstance(field(d, 'path'), str) and field(d, 'path'),
             f"data.path={field(d, 'path')!r}: data.name='arrays' reads the .npz file given "
             f'here (x_train, y_train, optional x_test, y_test).')


# ------------------------------------------------------------------ description


@dataclasses.dataclass
class Source:
  """What a source holds, as the run will see it (after resizing / conversion)."""
  kind: str                               # 'folder' | 'arrays' | 'tfds'
  classes: Tuple[str, ...]
  image_shape: Tuple[int, int, int]       # (size, size, channels)
  sizes: Dict[str, Optional[int]]         # 'train' / 'test' -> images (None: unknown)
  # folder: split -> (paths, labels); arrays: split -> (images, labels) as stored.
  parts: Dict[str, Tuple[np.ndarray, np.ndarray]] = dataclasses.field(default_factory=dict)
  tfds: Dict[str, Any] = dataclasses.field(default_factory=dict)  # builder name, keys


_DESCRIBED: Dict[tuple, Source] = {}  # describe()'s results in this process.
_LOADED: Dict[tuple, data.ArraySet] = {}  # load_split()'s last results (MAX_LOADED).
MAX_LOADED = 2  # A train and a test split: what one run reads.


def _key(d) -> tuple:
  fields = tuple((k, repr(field(d, k))) for k in sorted(DEFAULTS) if k not in
                 ('in_memory', 'max_memory_gb'))
  stamp = None
  if d.name == ARRAYS and field(d, 'path') and os.path.isfile(_expand(field(d, 'path'))):
    stat = os.stat(_expand(field(d, 'path')))
    stamp = (stat.st_size, stat.st_mtime_ns)
  if d.name == FOLDER and field(d, 'data_dir') and os.path.isdir(_expand(field(d, 'data_dir'))):
    stamp = _folder_stamp(_expand(field(d, 'data_dir')))
  return (d.name, fields, stamp)


def _folder_stamp(root: str, depth: int = 3) -> tuple:
  """The modification times of the folder and its subfolders `depth` levels
  down: a class folder or an image added or removed there changes it."""
  stamps, level = [], [root]
  for _ in range(depth):
    below = []
    for path in level:
      stamps.append(os.stat(path).st_mtime_ns)
      below.extend(os.path.join(path, name) for name in _subdirs(path))
    level = below
  return tuple(stamps)


def describe(d) -> Source:
  """The classes, image shape and split sizes of own source `d` (cached per
  process). Raises SourceError naming the field or file of bad input."""
  check_fields(d)
  key = _key(d)
  if key not in _DESCRIBED:
    if d.name == FOLDER:
      source = _describe_folder(d)
    elif d.name == ARRAYS:
      source = _describe_arrays(d)
    else:
      source = _describe_tfds(d)
    _DESCRIBED[key] = source
  return _DESCRIBED[key]


def image_shape(d) -> Tuple[int, int, int]:
  return describe(d).image_shape


def num_classes(d) -> int:
  return len(describe(d).classes)


def in_memory(d) -> bool:
  """data.in_memory, or (None) whether the decoded train and test images fit in
  data.max_memory_gb; a source of unknown size (a tfds mock) is read into memory."""
  choice = field(d, 'in_memory')
  if isinstance(choice, bool):
    return choice
  source = describe(d)
  if any(n is None for n in source.sizes.values()):
    return True
  nbytes = sum(source.sizes.values()) * int(np.prod(source.image_shape))
  return nbytes <= field(d, 'max_memory_gb') * 2 ** 30


def _expand(path: str) -> str:
  return os.path.abspath(os.path.expanduser(path))


# ------------------------------------------------------------------ folder


def _subdirs(path: str) -> list:
  return sorted(e.name for e in os.scandir(path)
                if e.is_dir() and not e.name.startswith('.'))


def _is_image(name: str) -> bool:
  return not name.startswith('.') and name.lower().endswith(IMAGE_EXTENSIONS)


def _images_under(path: str) -> list:
  """The image files under `path` (recursively, sorted)."""
  found = []
  for top, dirs, files in os.walk(path, followlinks=True):
    dirs[:] = sorted(x for x in dirs if not x.startswith('.'))
    found.extend(os.path.join(top, f) for f in sorted(files) if _is_image(f))
  return found


def _folder_layout(root: str) -> Tuple[str, Optional[str]]:
  """(train root, test root or None): DIR/train/ with DIR/val|validation|test/, or DIR."""
  if os.path.isdir(os.path.join(root, TRAIN_DIR)):
    for name in TEST_DIRS:
      if os.path.isdir(os.path.join(root, name)):
        return os.path.join(root, TRAIN_DIR), os.path.join(root, name)
    return os.path.join(root, TRAIN_DIR), None
  return root, None


def _class_files(split_root: str, field_text: str) -> Dict[str, list]:
  """{class name: image paths} of the class folders under `split_root`."""
  classes = _subdirs(split_root)
  if not classes:
    loose = [f for f in os.listdir(split_root) if _is_image(f)]
    what = (f'holds {len(loose)} images but no class folders: put each class\'s images '
            f'into a subfolder named after the class' if loose else
            'is empty: put one subfolder of images per class there')
    raise SourceError(f'{field_text}={split_root!r} {what} ({split_root}/CLASS/IMAGE.jpg; '
                      f'optionally under train/ and val/).')
  files = {}
  for name in classes:
    paths = _images_under(os.path.join(split_root, name))
    _require(bool(paths), f'{field_text}: class folder {os.path.join(split_root, name)!r} '
                          f'holds no images ({" ".join(IMAGE_EXTENSIONS)}); add some or '
                          f'remove the folder.')
    files[name] = paths
  return files


def _tail_is_short(path: str, image_format: str) -> bool:
  """Whether a JPEG lacks its end marker or a PNG its IEND chunk at the end of the
  file: the mark of a truncated download (a few bytes read, no decoding)."""
  if image_format not in ('JPEG', 'PNG'):
    return False
  with open(path, 'rb') as f:
    f.seek(max(0, os.path.getsize(path) - 16))
    tail = f.read()
  return (b'\xff\xd9' not in tail) if image_format == 'JPEG' else (b'IEND' not in tail)


def probe_image(path: str) -> Tuple[Optional[int], Optional[Tuple[int, int]], Optional[str]]:
  """(channels, (width, height), None) of an image file from its header, or
  (None, None, what is wrong) for a file PIL cannot read. A file that looks
  truncated is decoded in full to be sure."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as image:
      mode, size = image.mode, image.size
      if _tail_is_short(path, image.format):
        image.load()  # Raises for a truncated image (PIL's default).
  except Exception as e:  # pylint: disable=broad-except  # PIL raises many types.
    return None, None, f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}'
  return (1 if mode in GREY_MODES else 3), size, None


def _probe_all(paths: Sequence[str]) -> list:
  with concurrent.futures.ThreadPoolExecutor(PROBE_THREADS) as pool:
    return list(pool.map(probe_image, paths))


def _apply_bad_policy(d, bad: Sequence[Tuple[str, str]]):
  """data.on_bad_image: refuse with the first bad file, or log how many are skipped."""
  if not bad:
    return
  path, problem = bad[0]
  if field(d, 'on_bad_image') == 'error':
    raise SourceError(f'data.data_dir: {path!r} is not a readable image ({problem}); remove '
                      f"it, or set data.on_bad_image='skip' to leave out such files "
                      f'({len(bad)} found).')
  _log(f"skipped {len(bad)} unreadable image(s) under data.data_dir={field(d, 'data_dir')!r} "
       f"(data.on_bad_image='skip'), e.g. {path} ({problem}).")


def _common_channels(d, probes, where: str) -> int:
  """data.channels, else the one channel count of the images."""
  if field(d, 'channels') is not None:
    return field(d, 'channels')
  seen = {}
  for path, channels in probes:
    seen.setdefault(channels, path)
  if len(seen) > 1:
    raise SourceError(
        f'data.channels=None: {where} mixes {len(seen)} channel counts ('
        + ', '.join(f'{c}: {p!r}' for c, p in sorted(seen.items()))
        + '); set data.channels=3 (or 1) to convert every image.')
  return next(iter(seen))


def _common_size(d, sizes, where: str) -> int:
  """data.image_size, else the one square size of the images ((width, height) each)."""
  if field(d, 'image_size') is not None:
    return field(d, 'image_size')
  seen = {}
  for path, size in sizes:
    seen.setdefault(tuple(size), path)
  shapes = ', '.join(f'{w}x{h}: {p!r}' for (w, h), p in list(seen.items())[:2])
  if len(seen) > 1:
    raise SourceError(f'data.image_size=None: {where} has images of {len(seen)} sizes '
                      f'({shapes}, ...); set data.image_size to resize them (e.g. 32).')
  (w, h), = seen
  _require(w == h, f'data.image_size=None: the images of {where} are {w}x{h} (width x '
                   f'height), not square; set data.image_size to resize and crop them.')
  return w


def _describe_folder(d) -> Source:
  root = _expand(field(d, 'data_dir'))
  _require(os.path.isdir(root), f'data.data_dir={field(d, "data_dir")!r} does not exist or '
                                f'is not a folder.')
  train_root, test_root = _folder_layout(root)
  train = _class_files(train_root, 'data.data_dir')
  classes = tuple(train)
  _require(len(classes) >= 2, f'data.data_dir={train_root!r} has 1 class folder '
                              f'({classes[0]!r}); a classifier needs at least 2.')
  test = _class_files(test_root, 'data.data_dir') if test_root else {}
  unknown = sorted(set(test) - set(classes))
  _require(not unknown, f'data.data_dir: {test_root!r} has class folders that '
                        f'{train_root!r} lacks: {unknown[:5]}.')
  split_files = {'train': train, 'test': test}
  paths = [p for files in split_files.values() for group in files.values() for p in group]
  probes = dict(zip(paths, _probe_all(paths)))
  bad = [(p, probes[p][2]) for p in paths if probes[p][2] is not None]
  _apply_bad_policy(d, bad)
  parts = {}
  for split, files in split_files.items():
    kept_paths, labels = [], []
    for name, group in files.items():
      good = [p for p in group if probes[p][2] is None]
      _require(bool(good), f'data.data_dir: class folder {os.path.dirname(group[0])!r} '
                           f'holds no readable images.')
      kept_paths.extend(good)
      labels.extend([classes.index(name)] * len(good))
    parts[split] = (np.array(kept_paths, dtype=object), np.array(labels, np.int32))
  good_paths = [p for p in paths if probes[p][2] is None]
  channels = _common_channels(d, [(p, probes[p][0]) for p in good_paths], repr(root))
  size = _common_size(d, [(p, probes[p][1]) for p in good_paths], repr(root))
  if not test:
    parts['train'], parts['test'] = _hold_out(d, *parts['train'], where=f'data.data_dir={root!r}')
  return Source(FOLDER, classes, (size, size, channels),
                {s: len(labels) for s, (_, labels) in parts.items()}, parts)


def _hold_out(d, items: np.ndarray, labels: np.ndarray, where: str):
  """(train, test): a seeded stratified data.test_portion of each class held out."""
  portion = field(d, 'test_portion')
  keep, held = data.select_subsets(labels, (1.0 - portion, portion), field(d, 'split_seed'))
  _require(len(held) > 0, f'data.test_portion={portion} of the {len(labels)} images of {where} '
                          f'holds out none; raise it, or give a test split.')
  return (items[keep], labels[keep]), (items[held], labels[held])


def fit_image(image, size: int, resize: str):
  """A PIL image as size x size: 'crop' scales the shorter side to `size` and
  keeps the centre; 'pad' scales the longer side and centres it on black."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  w, h = image.size
  if (w, h) == (size, size):
    return image
  bilinear = Image.Resampling.BILINEAR  # Filters over the scaled support: antialiased.
  if resize == 'crop':
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    image = image.resize((nw, nh), bilinear)
    left, top = (nw - size) // 2, (nh - size) // 2
    return image.crop((left, top, left + size, top + size))
  scale = size / max(w, h)
  nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
  canvas = Image.new(image.mode, (size, size))
  canvas.paste(image.resize((nw, nh), bilinear), ((size - nw) // 2, (size - nh) // 2))
  return canvas


def decode_file(path: str, size: int, channels: int, resize: str) -> np.ndarray:
  """uint8 (size, size, channels) of an image file (PIL)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(path) as image:
    image = fit_image(image.convert('L' if channels == 1 else 'RGB'), size, resize)
    array = np.asarray(image, np.uint8)
  return array[..., None] if channels == 1 else array


def _decode_files(d, paths: np.ndarray, labels: np.ndarray, shape) -> data.ArraySet:
  """The images of `paths` in memory; a file that fails to decode (corrupt past
  its header) is refused or skipped per data.on_bad_image."""
  size, _, channels = shape
  resize = field(d, 'resize')

  def one(path):
    try:
      return decode_file(path, size, channels, resize), None
    except Exception as e:  # pylint: disable=broad-except  # PIL raises many types.
      return None, f'{type(e).__name__}: {e}'

  images = np.zeros((len(paths),) + tuple(shape), np.uint8)
  bad, keep = [], np.ones(len(paths), bool)
  with concurrent.futures.ThreadPoolExecutor(PROBE_THREADS) as pool:
    for i, (image, problem) in enumerate(pool.map(one, paths)):
      if problem is None:
        images[i] = image
      else:
        bad.append((paths[i], problem))
        keep[i] = False
  _apply_bad_policy(d, bad)
  return data.ArraySet(images[keep], labels[keep])


# ------------------------------------------------------------------ arrays


def _describe_arrays(d) -> Source:
  path = _expand(field(d, 'path'))
  where = f"data.path={field(d, 'path')!r}"
  _require(os.path.isfile(path), f'{where} does not exist or is not a file.')
  try:
    with np.load(path, allow_pickle=False) as f:
      stored = {k: f[k] for k in f.files}
  except Exception as e:  # pylint: disable=broad-except  # zip, pickle, format errors.
    raise SourceError(f'{where} is not a readable .npz file ({type(e).__name__}: {e}); '
                      f'save one with np.savez(path, x_train=..., y_train=...).') from None
  for key in ('x_train', 'y_train'):
    _require(key in stored, f'{where} lacks {key!r} (it holds {sorted(stored)}); expected '
                            f'x_train, y_train and optionally x_test, y_test, class_names.')
  _require(('x_test' in stored) == ('y_test' in stored),
           f'{where} holds {"x_test" if "x_test" in stored else "y_test"} without '
           f'{"y_test" if "x_test" in stored else "x_test"}; give both or neither.')
  splits = ['train'] + (['test'] if 'x_test' in stored else [])
  parts = {}
  for split in splits:
    x, y = stored[f'x_{split}'], stored[f'y_{split}']
    _require(x.dtype == np.uint8,
             f'{where}: x_{split} is {x.dtype}; store uint8 images 0..255 (e.g. '
             f'np.round(x * 255).astype(np.uint8) for floats in [0, 1]).')
    if x.ndim == 3:
      x = x[..., None]
    _require(x.ndim == 4 and x.shape[-1] in CHANNELS and len(x) > 0,
             f'{where}: x_{split} has shape {stored[f"x_{split}"].shape}; expected (N, H, W) '
             f'grey-scale or (N, H, W, C) with C in {CHANNELS}.')
    y = y.reshape(-1) if y.ndim == 2 and y.shape[1] == 1 else y
    _require(y.ndim == 1 and np.issubdtype(y.dtype, np.integer),
             f'{where}: y_{split} is {y.dtype} {y.shape}; expected integer class indices '
             f'of shape (N,).')
    _require(len(y) == len(x), f'{where}: y_{split} has {len(y)} labels for {len(x)} images '
                               f'in x_{split}.')
    _require(y.min() >= 0, f'{where}: label out of range: y_{split} holds {int(y.min())}; '
                           f'labels are class indices 0..K-1.')
    parts[split] = (x, y.astype(np.int32))
  if 'class_names' in stored:
    names = stored['class_names']
    _require(names.ndim == 1 and names.dtype.kind in 'US',
             f'{where}: class_names is {names.dtype} {names.shape}; expected strings (K,).')
    classes = tuple(str(n.decode() if isinstance(n, bytes) else n) for n in names)
    bound = f'class_names names {len(classes)} classes (0..{len(classes) - 1})'
  else:
    classes = tuple(str(i) for i in range(int(parts['train'][1].max()) + 1))
    bound = f'y_train holds only 0..{len(classes) - 1}'
  for split, (_, y) in parts.items():
    _require(int(y.max()) < len(classes),
             f'{where}: label out of range: y_{split} holds {int(y.max())} but {bound}.')
  _require(len(classes) >= 2, f'{where}: the labels name 1 class; a classifier needs at '
                              f'least 2.')
  channels = _common_channels(d, [(f'x_{s}', x.shape[-1]) for s, (x, _) in parts.items()],
                              where)
  size = _common_size(d, [(f'x_{s}', (x.shape[2], x.shape[1])) for s, (x, _) in parts.items()],
                      where)
  if 'test' not in parts:
    parts['train'], parts['test'] = _hold_out(d, *parts['train'], where=where)
  return Source(ARRAYS, classes, (size, size, channels),
                {s: len(y) for s, (_, y) in parts.items()}, parts)


def _convert_arrays(d, images: np.ndarray, shape) -> np.ndarray:
  """Stored uint8 NHWC images at the source's size and channel count."""
  size, _, channels = shape
  if images.shape[-1] != channels:
    if channels == 3:
      images = np.repeat(images, 3, axis=-1)
    else:  # ITU-R 601-2 luma, as PIL's convert('L').
      weights = np.array([299, 587, 114], np.uint32)
      images = ((images.astype(np.uint32) @ weights + 500) // 1000).astype(np.uint8)[..., None]
  if images.shape[1:3] == (size, size):
    return images
  from PIL import Image  # pylint: disable=g-import-not-at-top
  resize = field(d, 'resize')
  out = np.zeros((len(images), size, size, channels), np.uint8)
  for i, image in enumerate(images):
    fitted = fit_image(Image.fromarray(image[..., 0] if channels == 1 else image), size, resize)
    out[i] = np.asarray(fitted, np.uint8).reshape(size, size, channels)
  return out


# ------------------------------------------------------------------ tfds


def _tfds_name(name: str) -> str:
  """The tfds builder name of data.name 'tfds:NAME[:VERSION]' ('NAME:VERSION')."""
  builder = name[len(TFDS_PREFIX):]
  parts = builder.split(':')
  _require(len(parts) <= 2 and all(parts),
           f"data.name={name!r} must be 'tfds:NAME' or 'tfds:NAME:VERSION' (e.g. "
           f"'tfds:mnist' or 'tfds:mnist:3.0.1').")
  return builder


def _tfds_features(name: str, features, tfds) -> Tuple[str, str]:
  """(image key, label key): 'image' / 'label', else the only Image / ClassLabel."""
  items = dict(features.items())

  def pick(kind, key, what):
    if isinstance(items.get(key), kind):
      return key
    found = [k for k, f in items.items() if isinstance(f, kind)]
    _require(len(found) == 1,
             f"data.name={name!r} has {'no' if not found else 'more than one'} {what} feature "
             f'(its features: {", ".join(sorted(items))}); an image classification data set '
             f'has one image and one class-label feature.')
    return found[0]
  return (pick(tfds.features.Image, 'image', 'image'),
          pick(tfds.features.ClassLabel, 'label', 'class-label'))


def _split_bases(split: str) -> list:
  """The split names of a tfds split string ('train[:90%]+validation' -> both)."""
  return [part.split('[')[0].strip() for part in split.split('+')]


def tfds_info(name: str, data_dir: Optional[str], download: bool, train_split: str,
              test_split: str) -> Dict[str, Any]:
  """The builder's facts for own source 'tfds:NAME' (JSON-able: run in a child
  process when TensorFlow is not loaded here). Prepares the data set when
  `download` and it is not prepared yet."""
  _, tfds = data.import_tfds(name)
  builder_name = _tfds_name(name)
  try:
    builder = tfds.builder(builder_name, data_dir=data_dir)
  except Exception as e:  # pylint: disable=broad-except  # not found, bad version, ...
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise SourceError(f'data.name={name!r}: tensorflow-datasets cannot open '
                      f'{builder_name!r} ({type(e).__name__}: {first}); '
                      f'tfds.list_builders() names the data sets it has.') from None
  image_key, label_key = _tfds_features(name, builder.info.features, tfds)
  image, label = builder.info.features[image_key], builder.info.features[label_key]
  if download:
    try:
      builder.download_and_prepare()
    except Exception as e:  # pylint: disable=broad-except  # tfds raises many types.
      first = str(e).strip().splitlines()[0] if str(e).strip() else ''
      raise SourceError(
          f'data.name={name!r}: tfds cannot prepare {builder_name!r} in data.data_dir='
          f'{data_dir!r} ({type(e).__name__}: {first}); prepare it where there is internet '
          f'(tfds.builder({builder_name!r}).download_and_prepare()) and copy that tfds '
          f'directory here, or set data.download=False to read a prepared copy.') from None
  known = dict(builder.info.splits.items())
  sizes = {}
  for field_name, split in (('train_split', train_split), ('test_split', test_split)):
    if known:  # Unknown before preparation, and under tfds' mocks.
      missing = [b for b in _split_bases(split) if b not in known]
      if missing:
        raise SourceError(f'data.{field_name}={split!r}: {builder_name} has no split '
                          f'{missing[0]!r} (it has {sorted(known)}); tfds slices such as '
                          f"'train[:90%]' and 'train[90%:]' cut one.")
      sizes[field_name] = int(builder.info.splits[split].num_examples)
    else:
      sizes[field_name] = None
  return {'builder': builder_name, 'image_key': image_key, 'label_key': label_key,
          'shape': [None if s is None else int(s) for s in image.shape],
          'classes': list(label.names), 'train': sizes['train_split'],
          'test': sizes['test_split']}


def _tfds_in_process() -> bool:
  """Whether tfds is read here: TensorFlow is already loaded (a mock, a notebook)."""
  return 'tensorflow' in sys.modules or 'tensorflow_datasets' in sys.modules


def _data_dir(d) -> Optional[str]:
  return _expand(field(d, 'data_dir')) if field(d, 'data_dir') else None


def _describe_tfds(d) -> Source:
  args = (d.name, _data_dir(d), field(d, 'download'), field(d, 'train_split'),
          field(d, 'test_split'))
  try:
    info = (tfds_info(*args) if _tfds_in_process() else
            data.run_isolated('tfds_info', *args, module=__name__))
  except SourceError:
    raise
  except data.DataError as e:  # From the child process: the same one line.
    raise SourceError(str(e)) from None
  height, width, stored_channels = info['shape']
  channels = field(d, 'channels') or stored_channels or 3
  size = field(d, 'image_size')
  if size is None:
    _require(height is not None and height == width,
             f'data.image_size=None: {d.name} images are '
             f'{"of varying size" if height is None else f"{height}x{width}"}; set '
             f'data.image_size.')
    size = height
  return Source('tfds', tuple(info['classes']), (size, size, channels),
                {'train': info['train'], 'test': info['test']}, tfds=info)


def tf_decoder(tf, size: int, channels: int, resize: str, from_file: bool = False
               ) -> Callable:
  """Encoded image (or, `from_file`, its path) -> uint8 (size, size, channels) with
  TensorFlow ops, as fit_image does with PIL ('crop': the shorter side to `size`,
  the centre; 'pad': the longer side, a black border)."""
  def decode(encoded, seed=None):
    del seed  # Deterministic: augmentation happens on the device.
    if from_file:
      encoded = tf.io.read_file(encoded)
    image = tf.io.decode_image(encoded, channels=channels, expand_animations=False)
    shape = tf.shape(image)
    h, w = shape[0], shape[1]

    def resized():
      if resize == 'crop':
        scale = size / tf.cast(tf.minimum(h, w), tf.float32)
        nh = tf.maximum(size, tf.cast(tf.round(tf.cast(h, tf.float32) * scale), tf.int32))
        nw = tf.maximum(size, tf.cast(tf.round(tf.cast(w, tf.float32) * scale), tf.int32))
        out = tf.image.resize(image, tf.stack([nh, nw]), 'bilinear', antialias=True)
        top, left = (nh - size) // 2, (nw - size) // 2
        out = out[top:top + size, left:left + size]
      else:
        out = tf.image.resize_with_pad(tf.cast(image, tf.float32), size, size, 'bilinear',
                                       antialias=True)
      return tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8)
    same = tf.logical_and(tf.equal(h, size), tf.equal(w, size))
    image = tf.cond(same, lambda: image, resized)
    return tf.ensure_shape(image, (size, size, channels))
  return decode


def read_tfds_split(builder_name: str, data_dir: Optional[str], split: str, image_key: str,
                    label_key: str, shape, resize: str, limit: Optional[int] = None
                    ) -> data.ArraySet:
  """A tfds split decoded and fitted to `shape` (in a child process unless
  TensorFlow is loaded here); `limit`: only its first images."""
  tf, tfds = data.import_tfds(builder_name)
  builder = tfds.builder(builder_name, data_dir=data_dir)
  ds = builder.as_dataset(split=split, shuffle_files=False,
                          decoders={image_key: tfds.decode.SkipDecoding()})
  if limit:
    ds = ds.take(limit)
  decode = tf_decoder(tf, shape[0], shape[2], resize)
  ds = ds.map(lambda ex: (decode(ex[image_key]), tf.cast(ex[label_key], tf.int32)),
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  images, labels = [], []
  for x, y in ds.batch(1024).as_numpy_iterator():
    images.append(x)
    labels.append(y)
  if not images:
    return data.ArraySet(np.zeros((0,) + tuple(shape), np.uint8), np.zeros(0, np.int32))
  return data.ArraySet(np.concatenate(images), np.concatenate(labels))


def _load_tfds(d, source: Source, split: str, limit: Optional[int] = None) -> data.ArraySet:
  info = source.tfds
  args = (info['builder'], _data_dir(d), field(d, f'{split}_split'), info['image_key'],
          info['label_key'], list(source.image_shape), field(d, 'resize'), limit)
  try:
    loaded = (read_tfds_split(*args) if _tfds_in_process() else
              data.run_isolated('read_tfds_split', *args, module=__name__))
  except data.DataError as e:
    raise SourceError(str(e)) from None
  bad = loaded.labels[(loaded.labels < 0) | (loaded.labels >= len(source.classes))]
  if len(bad):
    raise SourceError(f'data.{split}_split={field(d, f"{split}_split")!r} of {d.name}: label '
                      f'out of range: {int(bad[0])} (classes 0..{len(source.classes) - 1}).')
  return loaded


# ------------------------------------------------------------------ loading


def load_split(d, split: str) -> data.ArraySet:
  """Split 'train' or 'test' of own source `d` in memory: uint8 (N, S, S, C)
  and int32 labels. The last MAX_LOADED splits are kept (statistics and the
  run read the same train split)."""
  _require(split in ('train', 'test'), f"data split {split!r} is not one of ('train', 'test').")
  source = describe(d)
  key = (_key(d), split)
  if key not in _LOADED:
    if source.kind == FOLDER:
      loaded = _decode_files(d, *source.parts[split], source.image_shape)
    elif source.kind == ARRAYS:
      images, labels = source.parts[split]
      loaded = data.ArraySet(_convert_arrays(d, images, source.image_shape), labels)
    else:
      loaded = _load_tfds(d, source, split)
    while len(_LOADED) >= MAX_LOADED:
      _LOADED.pop(next(iter(_LOADED)))
    _LOADED[key] = loaded
  return _LOADED[key]


def search_split(d, labels: Optional[np.ndarray], size: int) -> Tuple[np.ndarray, np.ndarray]:
  """Positions of the weight and architecture halves of a search's train split:
  data.train_portion of each class, seeded (folder, arrays: their files or rows
  are ordered by class), or the first data.train_portion and the rest (tfds,
  shuffled when prepared; as CIFAR is cut)."""
  portion = d.train_portion
  if labels is None:
    cut = int(np.floor(portion * size))
    return np.arange(cut), np.arange(cut, size)
  return data.select_subsets(labels, (portion, 1.0 - portion), field(d, 'split_seed') + 1)


def search_sets(d) -> Tuple[data.ArraySet, data.ArraySet]:
  """The weight and architecture halves of the train split, in memory."""
  full = load_split(d, 'train')
  stratified = describe(d).kind != 'tfds'
  weights, arch = search_split(d, full.labels if stratified else None, len(full))
  return (data.ArraySet(full.images[weights], full.labels[weights]),
          data.ArraySet(full.images[arch], full.labels[arch]))


# ------------------------------------------------------------------ streaming


@dataclasses.dataclass
class Stream:
  """A split's records for tf.data: `records(index)` gives those at positions
  `index` (contiguous for tfds) in order as {'image': path or encoded bytes,
  'label': int32}; `decode(image, seed)` makes the uint8 image."""
  size: int
  labels: Optional[np.ndarray]  # Known for folders (from the listing); None for tfds.
  records: Callable[[np.ndarray], Any]
  decode: Callable


def stream(d, split: str, tf) -> Stream:
  """Split 'train' or 'test' of own source `d`, to be read with tf.data."""
  source = describe(d)
  size, _, channels = source.image_shape
  if source.kind == FOLDER:
    paths, labels = source.parts[split]
    other = [p for p in paths if not p.lower().endswith(TF_EXTENSIONS)]
    _require(not other, f'data.in_memory: streamed images are decoded by TensorFlow, which reads '
                        f'{" ".join(TF_EXTENSIONS)} only, and data.data_dir holds {len(other)} '
                        f'other files (e.g. {other[0] if other else ""!r}); convert them, or read '
                        f'the images into memory (data.in_memory=True, or a larger '
                        f'data.max_memory_gb).')

    def records(index):
      return tf.data.Dataset.from_tensor_slices(
          {'image': paths[index].astype(str), 'label': labels[index]})
    # TensorFlow ops, not PIL in tf.numpy_function: Python calls on tf.data's
    # threads can hang the interpreter's exit.
    return Stream(len(labels), labels, records,
                  tf_decoder(tf, size, channels, field(d, 'resize'), from_file=True))
  _require(source.kind == 'tfds', f"data.name={d.name!r} is read into memory (data.in_memory "
                                  f"must be True or None).")
  _, tfds = data.import_tfds(d.name)
  info, split_name = source.tfds, field(d, f'{split}_split')
  total = source.sizes[split]
  _require(total is not None, f'data.{split}_split={split_name!r} of {d.name}: its size is '
                              f'unknown (not prepared?); set data.in_memory=True.')
  builder = tfds.builder(info['builder'], data_dir=_data_dir(d))

  def tfds_records(index):
    index = np.asarray(index)
    if len(index):
      _require(bool(np.all(np.diff(index) == 1)), 'tfds records are read in contiguous runs.')
    ds = builder.as_dataset(split=split_name, shuffle_files=False,
                            decoders={info['image_key']: tfds.decode.SkipDecoding()})
    ds = ds.skip(int(index[0]) if len(index) else 0).take(len(index))
    return ds.map(lambda ex: {'image': ex[info['image_key']],
                              'label': tf.cast(ex[info['label_key']], tf.int32)})
  return Stream(total, None, tfds_records,
                tf_decoder(tf, size, channels, field(d, 'resize')))


# ------------------------------------------------------------------ statistics


def channel_stats(images: np.ndarray, chunk: int = 512) -> Tuple[Tuple[float, ...], ...]:
  """(mean, std) per channel of uint8 NHWC images scaled to [0, 1] (population
  standard deviation, as torchvision recipes compute it), rounded to 6 places."""
  total = np.zeros(images.shape[-1], np.float64)
  squares = np.zeros(images.shape[-1], np.float64)
  for start in range(0, len(images), chunk):
    x = images[start:start + chunk].astype(np.float64) / 255.0
    total += x.sum(axis=(0, 1, 2))
    squares += np.square(x).sum(axis=(0, 1, 2))
  count = max(1, len(images) * images.shape[1] * images.shape[2])
  mean = total / count
  std = np.sqrt(np.maximum(squares / count - np.square(mean), 0.0))
  return tuple(round(float(m), 6) for m in mean), tuple(round(float(s), 6) for s in std)


def _stats_images(d) -> np.ndarray:
  """The train images the statistics come from: all of them in memory; a seeded
  sample of STATS_SAMPLE when streamed."""
  if in_memory(d):
    return load_split(d, 'train').images
  source = describe(d)
  if source.kind == FOLDER:
    paths, labels = source.parts['train']
    pick = np.sort(np.random.default_rng(field(d, 'split_seed')).permutation(len(paths))
                   [:STATS_SAMPLE])
    return _decode_files(d, paths[pick], labels[pick], source.image_shape).images
  return _load_tfds(d, source, 'train', limit=STATS_SAMPLE).images


def norm_stats(d) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
  """(mean, std) per channel of the train split of own source `d`."""
  mean, std = channel_stats(_stats_images(d))
  _require(min(std) > 0, f'data.std: a channel of the {d.name} train images is constant '
                         f'(std {std}); give data.mean and data.std.')
  return mean, std


# ------------------------------------------------------------------ run hooks


def _read_json(path: str):
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def read_classes(workdir: str) -> Optional[list]:
  """The class names a run recorded (its classes.json; index = label), or None."""
  return _read_json(os.path.join(workdir, CLASSES_FILE)) if workdir else None


def resolve_config(config, workdir: Optional[str] = None):
  """`config` with what own data decide filled in, before validation: data.mean
  and data.std where None (from `workdir`'s data_stats.json when a run there
  recorded them, else computed from the train split), model.num_classes where
  None. Refuses, writing nothing, a model.num_classes other than the data's or
  data whose classes differ from the run's classes.json. Other data sets and
  complete configs come back unchanged (the same object)."""
  d = config.data
  if not is_own(d.name):
    return config
  source = describe(d)
  _log(describe_text(d))
  classes = list(source.classes)
  recorded = read_classes(workdir)
  if recorded is not None and recorded != classes:
    shown = lambda names: ', '.join(map(str, names[:6])) + (', ...' if len(names) > 6 else '')
    raise SourceError(f'data: the classes of {d.name} ({shown(classes)}) differ from those of '
                      f'the run in --workdir={workdir!r} ({CLASSES_FILE}: {shown(recorded)}); '
                      f'use the data it was started with, or a new workdir.')
  num = config_fields.field(config.model, 'num_classes')
  _require(num is None or num == len(classes),
           f'model.num_classes={num!r} but {d.name} has {len(classes)} classes; set it to '
           f'{len(classes)} or None (from the data).')
  mean, std = config_fields.field(d, 'mean'), config_fields.field(d, 'std')
  if num is not None and mean is not None and std is not None:
    return config
  if mean is None or std is None:
    cached = _read_json(os.path.join(workdir, STATS_FILE)) if workdir else None
    if cached is not None and len(cached['mean']) == source.image_shape[-1]:
      computed = tuple(cached['mean']), tuple(cached['std'])
    else:
      computed = norm_stats(d)
      _log(f'{d.name} train split: mean {computed[0]}, std {computed[1]} per channel '
           f'(data.mean / data.std).')
    mean = computed[0] if mean is None else mean
    std = computed[1] if std is None else std
  resolved = (config.copy_and_resolve_references() if hasattr(config, 'copy_and_resolve_references')
              else copy.deepcopy(config))
  _set(resolved.data, 'mean', tuple(mean))
  _set(resolved.data, 'std', tuple(std))
  _set(resolved.model, 'num_classes', len(classes))
  return resolved


def _set(section, name: str, value):
  if hasattr(section, 'unlocked'):
    with section.unlocked():
      section[name] = value
  else:
    setattr(section, name, value)


def write_run_files(config, workdir: str) -> list:
  """Records in `workdir` (process 0; files already there are kept, so a
  resumed run reads back what it started with): classes.json, the class names
  (index = label), and data_stats.json, the data.mean / data.std the run
  normalises with. For own data only; returns the paths written."""
  d = config.data
  if not is_own(d.name) or not parallel.is_main_process():
    return []
  source = describe(d)
  os.makedirs(workdir, exist_ok=True)
  written = []
  files = {CLASSES_FILE: list(source.classes),
           STATS_FILE: {'mean': list(d.mean), 'std': list(d.std),
                        'image_shape': list(source.image_shape), 'data': d.name}}
  for name, content in files.items():
    path = os.path.join(workdir, name)
    if not os.path.exists(path):
      rundir.write_atomic(path, json.dumps(content, indent=1) + '\n')
      written.append(path)
  return written


def nearest_sizes(size: int, multiple: int) -> Tuple[int, ...]:
  """The multiples of `multiple` nearest to `size` (one or two, >= multiple)."""
  low = max(multiple, size // multiple * multiple)
  high = low + multiple if low < size else low
  return tuple(sorted({low, high} - {size})) or (low,)


def describe_text(d) -> str:
  """One line for logs: the source, its classes, shape and split sizes."""
  s = describe(d)
  h, w, c = s.image_shape
  return (f'{d.name}: {len(s.classes)} classes, {h}x{w}x{c}, '
          + ', '.join(f'{n if n is not None else "?"} {k}' for k, n in s.sizes.items())
          + f', {"in memory" if in_memory(d) else "streamed"}')

