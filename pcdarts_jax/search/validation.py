"""Checks a search config before anything is compiled or written.

Every error is one line naming the field, its value and what is allowed.
"""

import math
from typing import Any, Mapping

from pcdarts_jax.search import architect
from pcdarts_jax.run import config_fields
from pcdarts_jax.run import driver
from pcdarts_jax.data import datasets as data
from pcdarts_jax.spaces.darts import genotypes
from pcdarts_jax.data import pipeline as input_pipeline
from pcdarts_jax.data import sources
from pcdarts_jax.nn import ops
from pcdarts_jax.search import optim
from pcdarts_jax.search import progressive
from pcdarts_jax.search import seeds
from pcdarts_jax.spaces import relaxation
from pcdarts_jax import spaces
from pcdarts_jax.spaces.darts import supernet
from pcdarts_jax.spaces.darts import cell_parts

ARCHITECTS = tuple(architect.ARCHITECTS)
PROGRESS_MODES = driver.PROGRESS_MODES
BILEVEL_PHASES = ('sequence', 'loop')


ConfigError = config_fields.ConfigError
# This module's short names for the shared checks.
_require = config_fields.require
_is_int = config_fields.is_int
_require_bool = config_fields.require_bool


def _positive(config, section: str, field: str, allow_zero: bool = False):
  value = config[section][field]
  ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (
      value >= 0 if allow_zero else value > 0)
  _require(ok, f'{section}.{field}={value!r} must be a number '
           f'{">= 0" if allow_zero else "> 0"}.')


def validate_archive(data_config):
  """data.archive, the hand-downloaded CIFAR archive: a file, and the right one."""
  problem = data.archive_problem(data_config.name, data_config.get('archive'))
  _require(problem is None, problem)


def validate_data(config):
  """data.* and model.num_classes against the data: own data's fields
  (sources.check_fields; bad files are named by sources.describe), the
  normalisation's length, the class count. Shared by the search, the trainer
  and SGNAS."""
  d, m = config.data, config.model
  if sources.is_own(d.name):
    sources.check_fields(d)
  channels = input_pipeline.image_shape(d)[-1]
  for field in ('mean', 'std'):
    _require(d.get(field) is not None,
             f'data.{field}=None: the statistics of the train split fill it in when a run '
             f'starts (sources.resolve_config); give {channels} value(s) to set it.')
  _require(len(d.mean) == channels and len(d.std) == channels,
           f'data.mean / data.std need {channels} values for {d.name}, got '
           f'{len(d.mean)} / {len(d.std)}.')
  classes = input_pipeline.num_classes(d)
  _require(m.num_classes == classes,
           f'model.num_classes={m.num_classes!r} but {d.name} has {classes} classes.')


def require_image_size(d, halvings: int, what: str):
  """The image size a network that halves it `halvings` times accepts (a
  multiple of 2**halvings: every reduction needs an even input); the error
  suggests the nearest sizes."""
  size = input_pipeline.image_shape(d)[0]
  multiple = 2 ** halvings
  if size % multiple == 0:
    return
  needs = f'{what} halves the images {halvings} times and needs a size divisible by {multiple}'
  if d.name == input_pipeline.IMAGENET or sources.is_own(d.name):
    nearest = ' or '.join(str(n) for n in sources.nearest_sizes(size, multiple))
    raise ConfigError(f'data.image_size={size}: {needs}; nearest: {nearest}.')
  raise ConfigError(f'{d.name} images are {size}x{size}; {needs}.')


def validate_search_config(config, num_devices: int = 1):
  d, m, s = config.data, config.model, config.search
  names = input_pipeline.dataset_names()
  _require(d.name in names, f'data.name={d.name!r} is not one of {names}.')
  validate_archive(d)
  if d.name == input_pipeline.IMAGENET:
    for field in ('train_fraction', 'arch_fraction'):
      _require(0.0 < d[field] <= 1.0, f'data.{field}={d[field]!r} must be in (0, 1].')
    _require(d.train_fraction + d.arch_fraction <= 1.0,
             f'data.train_fraction + data.arch_fraction = '
             f'{d.train_fraction + d.arch_fraction} must be <= 1 (the subsets are disjoint).')
    _require(_is_int(d.image_size) and d.image_size >= 32,
             f'data.image_size={d.image_size!r} must be an integer >= 32.')
    _require(_is_int(d.get('mock_examples', 0)) and d.get('mock_examples', 0) >= 0,
             f"data.mock_examples={d.get('mock_examples')!r} must be an integer >= 0.")
  else:
    _require(0.0 < d.train_portion < 1.0,
             f'data.train_portion={d.train_portion!r} must be in (0, 1).')
    if not sources.is_own(d.name):  # Own data: sources.check_fields (validate_data).
      in_memory = d.get('in_memory', True)
      _require_bool(in_memory, 'data.in_memory')
      _require(in_memory or d.name in input_pipeline.STREAMING,
               f'data.in_memory=False streams from tfds, which {d.name!r} is not in; '
               f'allowed for {tuple(input_pipeline.STREAMING)}.')
  validate_data(config)

  for field in ('init_channels', 'layers', 'partial_channels', 'steps', 'multiplier',
                'stem_multiplier'):
    value = m[field]
    _require(_is_int(value) and value >= 1,
             f'model.{field}={value!r} must be an integer >= 1.')
  k, c = m.partial_channels, m.init_channels
  _require(c % k == 0,
           f'model.partial_channels={k} must divide model.init_channels={c} '
           f'(allowed: divisors of {c}: {[i for i in range(1, c + 1) if c % i == 0]}).')
  _require(m.stem in supernet.STEM_TYPES,
           f'model.stem={m.stem!r} is not one of {supernet.STEM_TYPES}.')
  _require(m.get('dtype', 'float32') in supernet.DTYPES,
           f"model.dtype={m.get('dtype')!r} is not one of {supernet.DTYPES}.")
  _require(m.depthwise_impl in ops.DEPTHWISE_IMPLS,
           f'model.depthwise_impl={m.depthwise_impl!r} is not one of {ops.DEPTHWISE_IMPLS}.')
  space = config_fields.space(m)
  _require(space in spaces.SPACES, f'model.space={space!r} is not one of {spaces.SPACES}.')
  relax = m.get('relaxation', 'softmax')
  _require(relax in relaxation.RELAXATIONS,
           f'model.relaxation={relax!r} is not one of {relaxation.RELAXATIONS}.')
  regularizer = config_fields.arch_regularizer(s)
  _require(regularizer in relaxation.REGULARIZERS,
           f'search.arch_regularizer={regularizer!r} is not one of {relaxation.REGULARIZERS}.')
  _require(regularizer != 'kl' or relax == 'dirichlet',
           f"search.arch_regularizer='kl' is the Dirichlet KL term and needs "
           f"model.relaxation='dirichlet', not {relax!r}.")
  if regularizer == 'kl':
    _positive(config, 'search', 'arch_regularizer_scale', allow_zero=True)
  if relax in relaxation.TEMPERED:
    for field in ('gumbel_tau_max', 'gumbel_tau_min'):
      _positive(config, 'search', field)
    schedule = s.get('gumbel_tau_schedule', 'exponential')
    _require(schedule in relaxation.GUMBEL_TAU_SCHEDULES,
             f'search.gumbel_tau_schedule={schedule!r} is not one of '
             f'{relaxation.GUMBEL_TAU_SCHEDULES}.')
    _require(s.gumbel_tau_min <= s.gumbel_tau_max,
             f'search.gumbel_tau_min={s.gumbel_tau_min} exceeds search.gumbel_tau_max='
             f'{s.gumbel_tau_max}.')
  progressive.validate(config, _require)
  seeds.validate(config, _require)
  sampling = m.get('channel_sampling', 'first')
  _require(sampling in supernet.CHANNEL_SAMPLINGS,
           f'model.channel_sampling={sampling!r} is not one of {supernet.CHANNEL_SAMPLINGS}.')
  try:
    supernet.resolve_edge_impl(m.get('edge_impl', 'auto'), sampling,
                               m.get('primitives', genotypes.PRIMITIVES))
  except ValueError as e:
    raise ConfigError(str(e)) from None
  mixing = m.get('channel_mixing', 'shuffle')
  _require(mixing in cell_parts.CHANNEL_MIXINGS,
           f'model.channel_mixing={mixing!r} is not one of {cell_parts.CHANNEL_MIXINGS}.')
  _require(mixing != 'shift' or sampling != 'reference_random',
           "model.channel_mixing='shift' has no effect with model.channel_sampling="
           "'reference_random', which (as the reference's model_search_random.py) permutes "
           "no channel after the concat; leave channel_mixing at 'shuffle'.")
  reductions = 2 + (3 if m.stem == 'imagenet' else 0)
  require_image_size(d, reductions, f'model.stem={m.stem!r} with two reduction cells')

  for field in ('learning_rate', 'arch_learning_rate', 'batch_size', 'epochs',
                'eval_batch_size', 'grad_clip'):
    _positive(config, 'search', field)
  for field in ('learning_rate_min', 'weight_decay', 'arch_weight_decay', 'momentum',
                'arch_start_epoch', 'log_every_steps'):
    _positive(config, 'search', field, allow_zero=True)
  for field in ('warmup_epochs', 'arch_grad_clip'):
    if field in s:
      _positive(config, 'search', field, allow_zero=True)
  _require(_is_int(s.get('warmup_epochs', 0)),
           f"search.warmup_epochs={s.get('warmup_epochs')!r} must be an integer.")
  _require(s.get('warmup_lr', 'cosine') in optim.WARMUP_LRS,
           f"search.warmup_lr={s.get('warmup_lr')!r} is not one of {optim.WARMUP_LRS}.")
  offset = s.get('lr_schedule_offset', 0)
  _require(_is_int(offset) and offset in optim.LR_SCHEDULE_OFFSETS,
           f'search.lr_schedule_offset={offset!r} is not one of {optim.LR_SCHEDULE_OFFSETS} '
           f'(1: epoch e runs at the cosine lr(e + 1), as DARTS and PC-DARTS; 0: at lr(e), '
           f'as DrNAS).')
  for field in ('batch_size', 'epochs', 'eval_batch_size', 'arch_start_epoch',
                'log_every_steps'):
    _require(_is_int(s[field]),
             f'search.{field}={s[field]!r} must be an integer.')
  _require(s.learning_rate_min <= s.learning_rate,
           f'search.learning_rate_min={s.learning_rate_min} exceeds '
           f'search.learning_rate={s.learning_rate}.')
  for field in ('arch_beta1', 'arch_beta2'):
    _require(0.0 <= s[field] < 1.0, f'search.{field}={s[field]!r} must be in [0, 1).')
  _require(s.arch_start_epoch < s.epochs,
           f'search.arch_start_epoch={s.arch_start_epoch} must be < search.epochs='
           f'{s.epochs}, or the architecture is never trained.')
  _require(s.architect in ARCHITECTS,
           f'search.architect={s.architect!r} is not one of {ARCHITECTS}.')
  _require(s.architect not in architect.SECOND_REVERSE_ARCHITECTS
           or m.depthwise_impl not in architect.SINGLE_REVERSE_IMPLS,
           f'search.architect={s.architect!r} differentiates a gradient, which '
           f'model.depthwise_impl={m.depthwise_impl!r} does not support in the search '
           f"cell; use 'auto' (= 'conv' for this architect), 'conv' or 'dense'.")
  single_level = s.get('single_level', False)
  _require_bool(single_level, 'search.single_level')
  phases = config_fields.bilevel_phases(s)
  _require(phases in BILEVEL_PHASES,
           f'search.bilevel_phases={phases!r} is not one of {BILEVEL_PHASES}.')
  _require(not single_level or s.architect == 'first_order',
           f'search.single_level=True updates the architecture on the train batch and '
           f'takes no architect; search.architect={s.architect!r} must be \'first_order\'.')
  _require_bool(s.skip_nonfinite, 'search.skip_nonfinite')
  _require_bool(s.get('nesterov', False), 'search.nesterov')
  driver.validate_run(config)
  # The global batch is split evenly over the devices (validation batches are
  # padded and masked, so any eval_batch_size works).
  _require(s.batch_size % num_devices == 0,
           f'search.batch_size={s.batch_size} is not divisible by the {num_devices} '
           f'devices of this run (allowed: multiples of {num_devices}, e.g. '
           f'{max(num_devices, s.batch_size // num_devices * num_devices)}).')


def fit_arch_warmup(config, file_config, given: Mapping[str, Any]):
  """A search shortened on the command line to no more epochs than its config
  file's arch warm-up (search.epochs given, search.arch_start_epoch not) keeps the
  warm-up's share of the file's epochs (digits: 4 of 12, a third; never all of
  them), so that the architecture is still searched; prints a note. Otherwise,
  and for progressive learning (warm-ups per stage), returns `config` as is."""
  s, f = config.search, file_config.search
  if ('search.epochs' not in given or 'search.arch_start_epoch' in given
      or 'arch_start_epoch' not in s or s.get('stage_epochs')
      or not (_is_int(s.epochs) and s.epochs >= 1 and _is_int(s.arch_start_epoch))
      or s.arch_start_epoch < s.epochs):
    return config
  warmup = min(math.floor(f.arch_start_epoch / f.epochs * s.epochs + 0.5), s.epochs - 1)
  fitted = config.copy_and_resolve_references()
  fitted.search.arch_start_epoch = warmup
  print(f'note: --config.search.epochs={s.epochs} leaves no epoch for the config\'s arch '
        f'warm-up (search.arch_start_epoch={s.arch_start_epoch}, of {f.epochs} epochs); it '
        f'keeps its share: {warmup} epoch(s), arch steps from epoch {warmup + 1}. '
        f'--config.search.arch_start_epoch=N sets it.', flush=True)
  return fitted
