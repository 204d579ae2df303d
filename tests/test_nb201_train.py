"""Training NAS-Bench-201 genotypes (model.network='nb201'): genotype resolution,
validation, parameter / FLOP counts, a digits run through train.train and
launch/evaluate.py, and the schedule options every trainer config shares
(train.lr_schedule_offset, train.warmup_lr, train.nesterov)."""

import json
import math
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from configs import cifar10_train
from configs import digits_train
from configs import imagenet_train
from configs import nb201_cifar100_train
from configs import nb201_cifar10_train
from configs import nb201_digits_train
from configs import nb201_imagenet16_train
from configs import sgnas_cifar10_train
from pcdarts_jax.search import validation as config_validation
from pcdarts_jax.spaces.darts import genotypes
from pcdarts_jax.spaces.darts import network
from pcdarts_jax.spaces.nb201 import space as nb201
from pcdarts_jax.train import networks
from pcdarts_jax.train import train as trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEST = nb201_cifar10_train.NB201_BEST
ALL_3X3 = ('|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+'
           '|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|')
SMALLEST = '|none~0|+|none~0|none~1|+|skip_connect~0|none~1|none~2|'
SMALL = '|nor_conv_1x1~0|+|skip_connect~0|avg_pool_3x3~1|+|none~0|nor_conv_3x3~1|skip_connect~2|'


def test_published_nb201_train_configs_validate_with_the_autodl_recipe():
  for module in (nb201_cifar10_train, nb201_cifar100_train, nb201_digits_train):
    trainer.validate_train_config(module.get_config(), num_devices=8 if module !=
                                  nb201_digits_train else 2)
  config = nb201_cifar10_train.get_config()
  t = config.train
  assert (t.epochs, t.batch_size, t.learning_rate, t.learning_rate_min) == (200, 256, 0.1, 0.0)
  assert (t.momentum, t.nesterov, t.weight_decay, t.lr_schedule_offset) == (0.9, True, 5e-4, 0)
  assert (t.cutout_length, t.grad_clip, t.label_smoothing) == (0, 0.0, 0.0)
  assert (config.data.crop_padding, config.data.random_flip) == (4, True)
  assert 'aux_weight' not in t and 'drop_path_prob' not in config.model
  in16 = nb201_imagenet16_train.get_config()
  assert (in16.data.name, in16.data.crop_padding, in16.model.num_classes) == (
      'imagenet16_120', 2, 120)


@pytest.mark.parametrize('genotype,params,mflops', [
    # Hand count, C 16: stem 3*3*3*16 + BN 32; block 16->32: 3x3 convs 4608 + 9216,
    # BNs 64 + 64, shortcut 1x1 512; block 32->64: 18432 + 36864 + 128 + 128 + 2048;
    # last BN 128, classifier 64*10 + 10. = 73,306: NB-201's smallest (0.073 MB).
    (SMALLEST, 73_306, 7.78304),
    # + 6 conv 3x3 + BN per cell, 5 cells per stage: 5 * 6 * (9C^2 + 2C) at C 16, 32, 64
    # = 1,458,240 more: NB-201's largest (1.531 MB, 220.11 MFLOPs on CIFAR-10).
    (ALL_3X3, 1_531_546, 220.11968),
])
def test_nb201_network_counts_match_the_benchmark(genotype, params, mflops):
  config = nb201_cifar10_train.get_config()
  config.genotype = genotype
  model = networks.build_network(config)
  assert isinstance(model, nb201.Network) and model.genotype == nb201.parse(genotype)
  shape = network.input_shape(config)
  assert shape == (1, 32, 32, 3)
  assert network.count_params(model, shape) == params
  assert network.count_macs(model, shape) / 1e6 == pytest.approx(mflops, abs=1e-5)


def test_genotype_from_a_search_workdir_and_its_genotype_json(tmp_path):
  genotype = nb201.parse(SMALL)
  search = tmp_path / 'search'
  search.mkdir()
  # As pcdarts_jax.search writes it at the end of an NB-201 search.
  (search / 'genotype.json').write_text(json.dumps(nb201.genotype_to_dict(genotype)) + '\n')
  config = nb201_digits_train.get_config()
  for name in (str(search), str(search / 'genotype.json'), SMALL, f'  {SMALL}\n'):
    config.genotype = name
    trainer.validate_train_config(config)
    assert networks.resolve_architecture(config) == genotype
    assert networks.build_network(config).genotype == genotype
  # {"nodes": ...} alone reads too; the record written by training round-trips.
  (tmp_path / 'nodes.json').write_text(json.dumps(
      {'nodes': nb201.genotype_to_dict(genotype)['nodes']}))
  assert networks.resolve_nb201_genotype(str(tmp_path / 'nodes.json')) == genotype
  assert json.loads(networks.architecture_json(config, genotype)) == {
      'arch_str': SMALL, 'nodes': nb201.genotype_to_dict(genotype)['nodes']}
  # A DARTS search's genotype.json: one line that names the other network.
  darts = tmp_path / 'darts'
  darts.mkdir()
  (darts / 'genotype.json').write_text(genotypes.to_json(genotypes.PCDARTS))
  config.genotype = str(darts)
  with pytest.raises(config_validation.ConfigError) as info:
    trainer.validate_train_config(config)
  message = str(info.value)
  assert '\n' not in message and message.startswith(f'genotype={str(darts)!r}')
  assert "no NB-201 genotype" in message and "model.network='cifar'" in message


@pytest.mark.parametrize('genotype,message', [
    ('|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|', r'has 2 nodes separated by "\+"'),
    ('|conv_3x3~0|+|none~0|none~1|+|none~0|none~1|none~2|', r"'conv_3x3~0' is not \"op~input\""),
    ('|none~0|+|none~1|none~0|+|none~0|none~1|none~2|', r'input 0 of node 2 reads'),
    ('|none~0|+|none~0|+|none~0|none~1|none~2|', r'node 2 has 1 inputs'),
    ('PCDARTS', r"neither an NB-201 genotype string \('\|op~0\|\+"),
    ('/no/such/workdir', r'neither an NB-201 genotype string'),
])
def test_bad_genotype_is_one_config_error_line(genotype, message):
  config = nb201_digits_train.get_config()
  config.genotype = genotype
  with pytest.raises(config_validation.ConfigError, match=message) as info:
    trainer.validate_train_config(config)
  assert '\n' not in str(info.value) and str(info.value).startswith(f'genotype={genotype!r}: ')


@pytest.mark.parametrize('field,value,message', [
    ('model.drop_path_prob', 0.2, r"model\.drop_path_prob=0\.2: model\.network='nb201' trains "
                                  r'without drop-path; allowed: 0'),
    ('model.auxiliary', True, r"model\.auxiliary=True: model\.network='nb201' has no "
                              r'auxiliary head; allowed: False'),
    ('model.cells_per_stage', 0, r'model\.cells_per_stage=0 must be an integer >= 1'),
    ('train.lr_schedule_offset', 2, r'train\.lr_schedule_offset=2 is not one of \(0, 1\)'),
    ('train.warmup_lr', 'cosine',
     r"train\.warmup_lr='cosine' is not one of \('base', 'schedule'\)"),
    ('model.network', 'nb-201', r"model\.network='nb-201' is not one of "
                                r"\('cifar', 'imagenet', 'sgnas', 'nb201'\)"),
])
def test_nb201_fields_are_validated(field, value, message):
  config = nb201_digits_train.get_config()
  section, _, name = field.rpartition('.')
  config[section][name] = value
  with pytest.raises(config_validation.ConfigError, match=message):
    trainer.validate_train_config(config)


def _epoch_lr(config, epoch):
  return float(trainer.learning_rate_fn(config, steps_per_epoch=3)(3 * epoch + 2))


def test_lr_at_the_first_and_last_epoch_with_and_without_the_offset():
  config = cifar10_train.get_config()  # 600 epochs, 0.025 -> 0
  cosine = lambda t: 0.025 * 0.5 * (1 + math.cos(math.pi * t / 600))
  # DARTS / PC-DARTS train.py: scheduler.step() before each epoch, epoch e at lr(e + 1).
  assert config.train.lr_schedule_offset == 1
  assert _epoch_lr(config, 0) == pytest.approx(cosine(1), rel=1e-6)
  assert _epoch_lr(config, 0) < 0.025
  assert _epoch_lr(config, 599) == pytest.approx(0.0, abs=1e-9)  # the last at lr_min
  config.train.lr_schedule_offset = 0
  assert _epoch_lr(config, 0) == pytest.approx(0.025)
  assert _epoch_lr(config, 599) == pytest.approx(cosine(599), rel=1e-3)
  assert _epoch_lr(config, 599) > 1e-7
  # NAS-Bench-201 (AutoDL: scheduler.update(epoch) as each epoch starts): lr(e).
  config = nb201_cifar10_train.get_config()
  assert _epoch_lr(config, 0) == pytest.approx(0.1)
  assert _epoch_lr(config, 199) == pytest.approx(
      0.05 * (1 + math.cos(math.pi * 199 / 200)), rel=1e-3)
  # The trainer configs that are not the DARTS reference keep lr(e).
  for module in (sgnas_cifar10_train, imagenet_train):
    assert module.get_config().train.lr_schedule_offset == 0
  assert digits_train.get_config().train.lr_schedule_offset == 1  # as cifar10_train


def test_imagenet_warmup_scales_the_scheduled_lr_as_pc_darts():
  config = imagenet_train.get_config()  # linear 0.5 over 250 epochs, 5 warm-up epochs
  linear = lambda e: 0.5 * (245 - e) / 245
  assert config.train.warmup_lr == 'schedule'
  for epoch in range(5):
    assert _epoch_lr(config, epoch) == pytest.approx(linear(epoch) * (epoch + 1) / 5, rel=1e-6)
  assert _epoch_lr(config, 5) == pytest.approx(linear(5), rel=1e-6)
  config.train.warmup_lr = 'base'
  assert _epoch_lr(config, 4) == pytest.approx(0.5)
  assert _epoch_lr(config, 1) == pytest.approx(0.2)
  # With the offset, the schedule moves and the warm-up factor stays (e + 1) / W.
  config.train.warmup_lr, config.train.lr_schedule_offset = 'schedule', 1
  assert _epoch_lr(config, 0) == pytest.approx(linear(1) / 5, rel=1e-6)
  assert _epoch_lr(config, 249) == pytest.approx(0.0, abs=1e-9)


def _run_sgd(config, grads, w):
  tx = trainer.optimizer(config, steps_per_epoch=1)
  opt = tx.init(w)
  for g in grads:
    updates, opt = tx.update(g, opt, w)
    w = w + updates
  return np.asarray(w)


def test_nesterov_is_pytorch_nesterov_sgd_and_off_by_default():
  config = nb201_cifar10_train.get_config()  # Nesterov, wd 5e-4, no clip, lr(e) from 0.1
  config.train.epochs = 2
  w0 = jnp.array([1.0, -2.0])
  grads = [jnp.array([3.0, 4.0]), jnp.array([0.3, -0.4])]
  lrs = [_epoch_lr(config, e) for e in range(2)]
  assert lrs == pytest.approx([0.1, 0.05])

  def reference(nesterov):  # torch.optim.SGD(momentum=0.9, weight_decay=5e-4, nesterov)
    w, buf = np.asarray(w0, np.float64), np.zeros(2)
    for lr, g in zip(lrs, grads):
      d = np.asarray(g) + 5e-4 * w
      buf = 0.9 * buf + d
      w = w - lr * (d + 0.9 * buf if nesterov else buf)
    return w

  np.testing.assert_allclose(_run_sgd(config, grads, w0), reference(True), rtol=1e-6)
  config.train.nesterov = False
  np.testing.assert_allclose(_run_sgd(config, grads, w0), reference(False), rtol=1e-6)
  assert not np.allclose(reference(True), reference(False))
  for module in (cifar10_train, imagenet_train, sgnas_cifar10_train):
    assert module.get_config().train.nesterov is False


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """One short digits epoch of an NB-201 genotype string through train.train."""
  workdir = str(tmp_path_factory.mktemp('nb201') / 'train')
  config = nb201_digits_train.get_config()
  config.genotype = SMALL
  config.train.epochs = 1
  config.monitor.tensorboard = False
  summary = trainer.train(config, workdir)
  return workdir, config, summary


def test_nb201_genotype_string_trains_on_digits(trained):
  workdir, config, summary = trained
  assert summary['network'] == 'nb201' and summary['genotype']['arch_str'] == SMALL
  assert summary['genotype_name'] == SMALL
  model = networks.build_network(config)
  assert summary['parameters'] == network.count_params(model, (1, 8, 8, 1))
  assert summary['macs'] == network.count_macs(model, (1, 8, 8, 1)) > 0
  assert math.isfinite(summary['test']['loss'])
  assert 0.0 <= summary['test']['accuracy'] <= 1.0 and summary['epochs'] == 1
  with open(os.path.join(workdir, 'train_log.jsonl')) as f:
    log = [json.loads(line) for line in f]
  assert len(log) == 1 and log[0]['lr'] == pytest.approx(0.1)  # epoch 0 at lr(0)
  assert math.isfinite(log[0]['train']['loss']) and 'accuracy' in log[0]['train']
  assert log[0]['test']['accuracy'] == summary['test']['accuracy']
  # genotype.json loads back as the genotype (launch.evaluate reads it).
  assert networks.resolve_nb201_genotype(workdir) == nb201.parse(SMALL)
  assert any(name.startswith('nb201_cell.') for name in os.listdir(os.path.join(workdir,
                                                                                  'plots')))


def test_launch_evaluate_on_an_nb201_workdir(trained):
  workdir, _, summary = trained
  env = dict(os.environ, PYTHONPATH=REPO)
  run = subprocess.run(
      [sys.executable, '-m', 'launch.evaluate', '--config=configs/nb201_digits_train.py',
       f'--workdir={workdir}'], cwd=REPO, env=env, capture_output=True, text=True,
      timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  result = json.loads(run.stdout.strip().splitlines()[-1])
  assert result['top1_error'] == pytest.approx(1 - summary['test']['accuracy'])
  assert result['images'] == 297
  # A PyTorch state_dict is read only for the DARTS networks.
  with pytest.raises(config_validation.ConfigError, match=r"not 'nb201'"):
    trainer.evaluate_checkpoint(nb201_digits_train.get_config(), torch_state_dict={})
