"""Checks a search config before anything is compiled or written.

Each section is checked next to the code that reads it: data.* in
data/pipeline.py, the supernet's model.* in spaces/darts/space.py, the
relaxation in spaces/relaxation.py, the progressive stages, the seeds, the
optimizers and the architect in their search/ modules, seed / checkpoint.* /
monitor.* in run/driver.py. `validate_search_config` gathers them, with the
fields the search loop itself reads. Every error is one line naming the field,
its value and what is allowed.
"""

import math
from typing import Any, Mapping

from pcdarts_jax.data import pipeline as input_pipeline
from pcdarts_jax.run import config_fields
from pcdarts_jax.run import driver
from pcdarts_jax import spaces
from pcdarts_jax.search import architect
from pcdarts_jax.search import optim
from pcdarts_jax.search import progressive
from pcdarts_jax.search import seeds
from pcdarts_jax.spaces import relaxation
from pcdarts_jax.spaces.darts import space as darts_space

ARCHITECTS = tuple(architect.ARCHITECTS)
ConfigError = config_fields.ConfigError


def validate_search_config(config, num_devices: int = 1):
  """Raises ConfigError for the first field of `config` the search (darts or
  nb201 space) cannot use; `num_devices` must split search.batch_size."""
  input_pipeline.validate_search_data(config)
  darts_space.validate_model(config)
  spaces.validate(config)
  relaxation.validate(config)
  progressive.validate(config, config_fields.require)
  seeds.validate(config, config_fields.require)
  _validate_loop(config)
  optim.validate(config)
  architect.validate(config)
  driver.validate_run(config)
  # The global batch is split evenly over the devices (validation batches are
  # padded and masked, so any eval_batch_size works).
  s = config.search
  config_fields.require(
      s.batch_size % num_devices == 0,
      f'search.batch_size={s.batch_size} is not divisible by the {num_devices} '
      f'devices of this run (allowed: multiples of {num_devices}, e.g. '
      f'{max(num_devices, s.batch_size // num_devices * num_devices)}).')


def _validate_loop(config):
  """The fields search.search itself reads (epochs, batch sizes, the arch
  warm-up, logging, the non-finite guard); it imports this module, so they are
  checked here."""
  s = config.search
  for field in ('batch_size', 'epochs', 'eval_batch_size'):
    config_fields.require_number(config, 'search', field)
  for field in ('arch_start_epoch', 'log_every_steps'):
    config_fields.require_number(config, 'search', field, allow_zero=True)
  for field in ('batch_size', 'epochs', 'eval_batch_size', 'arch_start_epoch',
                'log_every_steps'):
    config_fields.require(config_fields.is_int(s[field]),
                          f'search.{field}={s[field]!r} must be an integer.')
  config_fields.require(
      s.arch_start_epoch < s.epochs,
      f'search.arch_start_epoch={s.arch_start_epoch} must be < search.epochs='
      f'{s.epochs}, or the architecture is never trained.')
  config_fields.require_bool(s.skip_nonfinite, 'search.skip_nonfinite')


def fit_arch_warmup(config, file_config, given: Mapping[str, Any]):
  """A search shortened on the command line to no more epochs than its config
  file's arch warm-up (search.epochs given, search.arch_start_epoch not) keeps the
  warm-up's share of the file's epochs (digits: 4 of 12, a third; never all of
  them), so that the architecture is still searched; prints a note. Otherwise,
  and for progressive learning (warm-ups per stage), returns `config` as is."""
  s, f = config.search, file_config.search
  if ('search.epochs' not in given or 'search.arch_start_epoch' in given
      or 'arch_start_epoch' not in s or s.get('stage_epochs')
      or not (config_fields.is_int(s.epochs) and s.epochs >= 1
              and config_fields.is_int(s.arch_start_epoch))
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
