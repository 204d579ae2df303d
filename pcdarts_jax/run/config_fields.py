"""Reading and checking config fields, shared by every module that takes a config.

A config section is an ml_collections ConfigDict or a plain object with the same
attributes (a library caller's dataclass); `field` reads either. The checks raise
`ConfigError`, whose message is the one line a launcher prints: the field, its
value and what is allowed.
"""

from typing import Any, Optional


class ConfigError(ValueError):
  """A config field has a value the search cannot use."""


def require(ok: bool, message: str):
  """Raises ConfigError(message) unless `ok`."""
  if not ok:
    raise ConfigError(message)


def is_int(value) -> bool:
  """An int that is not a bool (True would otherwise pass as 1)."""
  return isinstance(value, int) and not isinstance(value, bool)


def require_bool(value, name: str):
  require(isinstance(value, bool), f'{name}={value!r} must be True or False.')


def require_number(config, section: str, name: str, allow_zero: bool = False):
  """config.section.name is a number (not a bool) > 0, or >= 0 with `allow_zero`."""
  value = config[section][name]
  ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (
      value >= 0 if allow_zero else value > 0)
  require(ok, f'{section}.{name}={value!r} must be a number {">= 0" if allow_zero else "> 0"}.')


def field(section, name: str, default: Any = None) -> Any:
  """section.name, or `default` where the section is None or lacks the field."""
  if section is None:
    return default
  if hasattr(section, 'get'):
    return section.get(name, default)
  return getattr(section, name, default)


# The one default of each optional search field below, for a config that lacks
# it (a library caller's); every shipped config sets these fields.
DEFAULT_SPACE = 'darts'
DEFAULT_PARTIAL_CHANNELS = 1  # K = 1: every channel goes through the ops (DARTS).
DEFAULT_BILEVEL_PHASES = 'sequence'
DEFAULT_ARCH_REGULARIZER = 'l2'
DEFAULT_NUM_SEEDS = 1  # One search per run.
DEFAULT_SEED_DATA = 'shared'


def space(model) -> str:
  """`model.space`: the search space's name (spaces.SPACES)."""
  return field(model, 'space', DEFAULT_SPACE)


def partial_channels(model) -> int:
  """`model.partial_channels`: K, where 1/K of each edge's channels go through its ops."""
  return field(model, 'partial_channels', DEFAULT_PARTIAL_CHANNELS)


def bilevel_phases(search) -> str:
  """`search.bilevel_phases`: how one step runs its arch and weight phases."""
  return field(search, 'bilevel_phases', DEFAULT_BILEVEL_PHASES)


def arch_regularizer(search) -> str:
  """`search.arch_regularizer`: `l2` (Adam weight decay) or `kl` (DrNAS' loss term)."""
  return field(search, 'arch_regularizer', DEFAULT_ARCH_REGULARIZER)


def num_seeds(search) -> int:
  """`search.num_seeds`: independent searches run as one vmapped program."""
  return field(search, 'num_seeds', DEFAULT_NUM_SEEDS)


def seed_data(search) -> str:
  """`search.seed_data`: `shared` batches for every seed, or `per_seed` streams."""
  return field(search, 'seed_data', DEFAULT_SEED_DATA)


# model.dtype, the activations' precision (params, arch values, BatchNorm
# statistics, optimizer state and logits stay float32). `auto` is bfloat16 on
# the backends below, float32 elsewhere: on GPUs bfloat16 stepped 2.4x faster,
# and a bfloat16 search keeps within a fraction of the float32 seeds' spread of
# its float32 twin (docs/benchmarks.md, search fidelity).
DTYPES = ('auto', 'float32', 'bfloat16')
BFLOAT16_BACKENDS = ('gpu', 'cuda', 'rocm', 'tpu')


def require_dtype(dtype: str):
  """ConfigError for a model.dtype not in DTYPES (the backend is not asked)."""
  require(dtype in DTYPES, f'model.dtype={dtype!r} is not one of {DTYPES}.')


def resolve_dtype(dtype: str, platform: Optional[str] = None) -> str:
  """model.dtype with `auto` resolved for `platform` (default: the backend JAX
  runs on); ConfigError for anything not in DTYPES."""
  require_dtype(dtype)
  if dtype != 'auto':
    return dtype
  if platform is None:
    import jax  # pylint: disable=g-import-not-at-top  (launchers read configs before JAX)
    platform = jax.default_backend()
  return 'bfloat16' if platform in BFLOAT16_BACKENDS else 'float32'


def model_dtype(model, platform: Optional[str] = None) -> str:
  """model.dtype resolved (resolve_dtype); float32 where the model has none."""
  return resolve_dtype(field(model, 'dtype', 'float32'), platform)
