"""Tests for the shipped configs, config_validation and the launcher's refusals.

Nothing here compiles a model: every refusal happens before the supernet is built.
"""

import os
import pathlib
import subprocess
import sys

import ml_collections
import pytest

from configs import cifar100_search
from configs import cifar10_search
from configs import digits_search
from configs import imagenet_search
from pcdarts_jax.data import pipeline as input_pipeline
from pcdarts_jax.search import validation as config_validation
from pcdarts_jax.search.validation import ConfigError

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHIPPED = {'cifar10_search': cifar10_search, 'cifar100_search': cifar100_search,
           'digits_search': digits_search}
HALVES = {'cifar10_search': (25000, 25000), 'cifar100_search': (25000, 25000),
          'digits_search': (750, 750)}

# PC-DARTS' CIFAR search hyperparameters (Xu et al. ICLR 2020) and where they live in the config.
SPEC3_FIELDS = (
    'data.train_portion', 'data.crop_padding', 'data.random_flip', 'data.mean', 'data.std',
    'model.init_channels', 'model.layers', 'model.partial_channels', 'model.num_classes',
    'search.batch_size', 'search.epochs', 'search.learning_rate',
    'search.learning_rate_min', 'search.momentum', 'search.weight_decay',
    'search.grad_clip', 'search.arch_learning_rate', 'search.arch_beta1',
    'search.arch_beta2', 'search.arch_weight_decay', 'search.arch_start_epoch',
    'search.architect', 'search.lr_schedule_offset')


def _get(config, dotted):
  section, field = dotted.split('.')
  return config[section][field]


def _one_line_error(config, field, **kwargs):
  with pytest.raises(ConfigError) as info:
    config_validation.validate_search_config(config, **kwargs)
  message = str(info.value)
  assert field in message
  assert '\n' not in message
  return message


# ------------------------------------------------------------ shipped configs


@pytest.mark.parametrize('name', sorted(SHIPPED))
def test_shipped_configs_validate(name):
  config = SHIPPED[name].get_config()
  config_validation.validate_search_config(config)
  input_pipeline.check_batch_fits(config, *HALVES[name])
  for field in SPEC3_FIELDS:
    section, key = field.split('.')
    assert key in config[section], f'{name} lacks {field}'


def test_cifar10_has_the_spec_section3_values():
  c = cifar10_search.get_config()
  assert c.data.name == 'cifar10'
  assert c.data.train_portion == 0.5
  assert c.data.crop_padding == 4
  assert c.data.random_flip is True
  assert tuple(c.data.mean) == pytest.approx((0.49139968, 0.48215827, 0.44653124))
  assert tuple(c.data.std) == pytest.approx((0.24703233, 0.24348505, 0.26158768))
  assert c.model.num_classes == 10
  assert c.model.init_channels == 16
  assert c.model.layers == 8
  assert c.model.partial_channels == 4
  s = c.search
  assert s.batch_size == 256
  assert s.epochs == 50
  assert s.learning_rate == 0.1
  assert s.learning_rate_min == 0.0
  assert s.momentum == 0.9
  assert s.weight_decay == 3e-4
  assert s.grad_clip == 5.0
  assert s.arch_learning_rate == 6e-4
  assert (s.arch_beta1, s.arch_beta2) == (0.5, 0.999)
  assert s.arch_weight_decay == 1e-3
  assert s.arch_start_epoch == 15
  assert s.architect == 'first_order'
  assert s.lr_schedule_offset == 1  # The scheduler steps before each epoch.


def test_cifar100_is_cifar10_with_100_classes():
  c10, c100 = cifar10_search.get_config(), cifar100_search.get_config()
  assert c100.data.name == 'cifar100'
  assert c100.model.num_classes == 100
  for field in SPEC3_FIELDS:
    if field in ('model.num_classes', 'data.mean', 'data.std'):
      continue
    assert _get(c100, field) == _get(c10, field), field


# -------------------------------------------------------------- bad configs


def test_partial_channels_must_divide_init_channels():
  config = digits_search.get_config()
  assert config.model.init_channels == 8
  config.model.partial_channels = 3
  message = _one_line_error(config, 'model.partial_channels')
  assert '[1, 2, 4, 8]' in message  # the allowed divisors of 8


def test_unknown_data_name():
  config = digits_search.get_config()
  config.data.name = 'mnist'
  assert 'mnist' in _one_line_error(config, 'data.name')


def test_negative_learning_rate():
  config = digits_search.get_config()
  config.search.learning_rate = -0.1
  assert '-0.1' in _one_line_error(config, 'search.learning_rate')


@pytest.mark.parametrize('delta', [0, 3])
def test_arch_start_epoch_must_precede_the_end(delta):
  config = digits_search.get_config()
  config.search.arch_start_epoch = config.search.epochs + delta
  _one_line_error(config, 'search.arch_start_epoch')
  config.search.arch_start_epoch = config.search.epochs - 1  # last epoch is fine
  config_validation.validate_search_config(config)


@pytest.mark.parametrize('module,epochs,warmup', [
    (digits_search, 2, 1),    # The README's example: 4 of 12 epochs -> 1 of 2.
    (digits_search, 1, 0),
    (digits_search, 4, 1),
    (cifar10_search, 10, 3),  # 15 of 50 -> 3 of 10.
])
def test_a_search_shortened_below_its_warmup_keeps_the_warmup_share(module, epochs, warmup,
                                                                    capsys):
  config = module.get_config()
  config.search.epochs = epochs
  fitted = config_validation.fit_arch_warmup(config, module.get_config(),
                                             {'search.epochs': epochs})
  assert fitted.search.arch_start_epoch == warmup
  config_validation.validate_search_config(fitted)
  assert f'arch steps from epoch {warmup + 1}' in capsys.readouterr().out
  assert config.search.arch_start_epoch == module.get_config().search.arch_start_epoch


def test_an_explicit_or_fitting_warmup_is_kept():
  config = digits_search.get_config()
  config.search.epochs, config.search.arch_start_epoch = 3, 5  # Both given: refused as is.
  given = {'search.epochs': 3, 'search.arch_start_epoch': 5}
  assert config_validation.fit_arch_warmup(config, digits_search.get_config(), given) is config
  _one_line_error(config, 'search.arch_start_epoch')
  config.search.epochs, config.search.arch_start_epoch = 6, 4  # Still room: the file's warm-up.
  assert config_validation.fit_arch_warmup(config, digits_search.get_config(),
                                           {'search.epochs': 6}) is config


def test_unknown_architect():
  config = digits_search.get_config()
  config.search.architect = 'bogus'
  message = _one_line_error(config, 'search.architect')
  assert 'bogus' in message and 'first_order' in message


@pytest.mark.parametrize('impl', ['shifted', 'fused'])
def test_second_order_exact_refuses_the_scan_unsafe_depthwise_forms(impl):
  config = cifar10_search.get_config()
  config.search.architect = 'second_order_exact'
  config.model.depthwise_impl = impl
  message = _one_line_error(config, 'model.depthwise_impl')
  assert 'search.architect' in message and "'conv'" in message and impl in message


def test_second_order_exact_builds_auto_as_conv():
  from pcdarts_jax.search import architect
  from pcdarts_jax.spaces.darts import supernet
  config = cifar10_search.get_config()
  # As the search builds it: the architect picks the depthwise form, the supernet takes it.
  build = lambda: supernet.build_supernet(config, depthwise_impl=architect.depthwise_impl(config))
  assert build().depthwise_impl == 'auto'
  config.search.architect = 'second_order_exact'
  config_validation.validate_search_config(config)
  assert build().depthwise_impl == 'conv'
  config.model.depthwise_impl = 'dense'  # explicit choices stay
  assert build().depthwise_impl == 'dense'


def test_unknown_depthwise_impl():
  config = digits_search.get_config()
  config.model.depthwise_impl = 'fast'
  message = _one_line_error(config, 'model.depthwise_impl')
  assert 'fast' in message and 'dense' in message


def test_num_classes_must_match_the_data_set():
  config = digits_search.get_config()
  config.model.num_classes = 100
  message = _one_line_error(config, 'model.num_classes')
  assert 'digits' in message
  c100 = cifar100_search.get_config()
  c100.model.num_classes = 10
  _one_line_error(c100, 'model.num_classes')


@pytest.mark.parametrize('field,value,expect', [
    ('checkpoint.every_steps', -1, '>= 0'),
    ('checkpoint.every_steps', 2.5, 'integer'),
    ('checkpoint.keep', 0, '>= 1'),
    ('checkpoint.resume', 'yes', 'True or False'),
    ('checkpoint.async_save', 1, 'True or False'),
    ('search.skip_nonfinite', 1, 'True or False'),
    ('search.nesterov', 1, 'True or False'),
    ('monitor.progress', 'fancy', "('auto', 'bar', 'lines')"),
    ('monitor.tensorboard', 'on', 'True or False'),
    ('monitor.pictures', None, 'True or False'),
    ('search.epochs', 2.5, 'integer'),
    ('search.batch_size', 0, '> 0'),
    ('search.batch_size', 32.0, 'integer'),
    ('search.momentum', -0.9, '>= 0'),
    ('search.weight_decay', -1e-4, '>= 0'),
    ('search.arch_beta1', 1.0, '[0, 1)'),
    ('search.grad_clip', 0.0, '> 0'),
    ('search.lr_schedule_offset', 2, '(0, 1)'),
    ('search.lr_schedule_offset', True, '(0, 1)'),
    ('data.train_portion', 1.0, '(0, 1)'),
    ('model.layers', 0, '>= 1'),
    ('model.stem', 'resnet', "('cifar', 'imagenet')"),
    ('seed', -1, '>= 0'),
])
def test_every_field_error_is_one_line_naming_the_field(field, value, expect):
  config = digits_search.get_config()
  # A config file may hold any type; rebuild the section so ConfigDict's own type
  # check (which guards command-line overrides) does not intercept the value.
  if '.' in field:
    section, key = field.split('.')
    config[section] = ml_collections.ConfigDict({**config[section].to_dict(), key: value})
  else:
    config = ml_collections.ConfigDict({**config.to_dict(), field: value})
  message = _one_line_error(config, field)
  assert expect in message, message
  assert repr(value) in message or str(value) in message


def test_batch_size_divisible_by_devices():
  config = digits_search.get_config()
  assert config.search.batch_size % 3 != 0
  message = _one_line_error(config, 'search.batch_size', num_devices=3)
  assert '3 devices' in message
  config_validation.validate_search_config(config, num_devices=2)  # 64 and 250 split


def test_batch_must_fit_the_halves():
  config = digits_search.get_config()
  config.search.batch_size = 751
  with pytest.raises(ConfigError) as info:
    input_pipeline.check_batch_fits(config, 750, 750)
  message = str(info.value)
  assert 'search.batch_size' in message and '751' in message
  assert '\n' not in message
  with pytest.raises(ConfigError):  # the smaller half decides
    input_pipeline.check_batch_fits(config, 1000, 700)
  config.search.batch_size = 750
  input_pipeline.check_batch_fits(config, 750, 750)


# ------------------------------------------------------------------ launcher


@pytest.mark.parametrize('override,field', [
    ('--config.model.partial_channels=3', 'model.partial_channels'),
    ('--config.data.name=mnist', 'data.name'),
])
def test_launcher_refuses_before_touching_workdir(tmp_path, override, field):
  workdir = tmp_path / 'w'
  env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), JAX_PLATFORMS='cpu')
  result = subprocess.run(
      [sys.executable, '-m', 'launch.search', '--config=configs/digits_search.py',
       '--workdir=' + str(workdir), override],
      cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2, result.stderr[-2000:]
  assert field in result.stderr
  assert 'Traceback' not in result.stderr
  assert not workdir.exists()


def test_search_refuses_a_used_workdir(tmp_path):
  from pcdarts_jax.search import search as loop  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / 'w'
  workdir.mkdir()
  existing = workdir / 'genotypes.jsonl'
  content = b'{"epoch": 0, "genotype": "previous run"}\n'
  existing.write_bytes(content)
  with pytest.raises(ConfigError) as info:
    loop.search(digits_search.get_config(), str(workdir))
  assert 'genotypes.jsonl' in str(info.value)
  assert '\n' not in str(info.value)
  assert existing.read_bytes() == content
  assert sorted(p.name for p in workdir.iterdir()) == ['genotypes.jsonl']


# ------------------------------------------------------------ ImageNet search


def test_imagenet_search_has_the_spec_section4_values():
  config = imagenet_search.get_config()
  config_validation.validate_search_config(config, num_devices=8)
  d, m, s = config.data, config.model, config.search
  assert (d.name, d.train_fraction, d.arch_fraction, d.image_size) == (
      'imagenet2012', 0.1, 0.025, 224)
  assert d.mean == (0.485, 0.456, 0.406) and d.std == (0.229, 0.224, 0.225)
  assert (m.stem, m.init_channels, m.layers, m.partial_channels, m.num_classes) == (
      'imagenet', 16, 8, 2, 1000)
  assert (s.batch_size, s.epochs, s.learning_rate, s.learning_rate_min, s.warmup_epochs) == (
      1024, 50, 0.5, 0.0, 5)
  assert (s.arch_learning_rate, s.arch_beta1, s.arch_beta2, s.arch_weight_decay) == (
      6e-3, 0.5, 0.999, 1e-3)
  assert (s.arch_grad_clip, s.arch_start_epoch) == (5.0, 35)


@pytest.mark.parametrize('field,value,expect', [
    ('data.train_fraction', 0.0, 'must be in (0, 1]'),
    ('data.arch_fraction', 0.95, 'must be <= 1'),
    ('data.image_size', 20, 'integer >= 32'),
    ('search.warmup_epochs', -1, '>= 0'),
    ('search.warmup_lr', 'linear', "('base', 'cosine')"),
    ('search.arch_grad_clip', -1.0, '>= 0'),
])
def test_imagenet_field_errors(field, value, expect):
  config = imagenet_search.get_config()
  section, key = field.split('.')
  config[section][key] = value
  message = _one_line_error(config, field)
  assert expect in message, message


def test_global_batch_must_split_over_the_devices():
  config = imagenet_search.get_config()
  message = _one_line_error(config, 'search.batch_size', num_devices=24)
  assert '24 devices' in message and 'multiples of 24' in message


def test_streaming_needs_a_tfds_data_set():
  config = digits_search.get_config()
  config.data.in_memory = False
  message = _one_line_error(config, 'data.in_memory')
  assert "'cifar10'" in message
