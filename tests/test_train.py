"""The trainer: cutout, label smoothing, schedules, optimizer, the train step,
validation, resume, and end-to-end runs of launch/train.py and launch/evaluate.py
on the real digits data."""

import json
import math
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import cifar10_train
from configs import digits_train
from configs import imagenet_train
from pcdarts_jax.run import checkpoint
from pcdarts_jax.run import metrics as metrics_lib
from pcdarts_jax.search import validation as config_validation
from pcdarts_jax.data import datasets as data
from pcdarts_jax.spaces.darts import genotypes
from pcdarts_jax.spaces.darts import network
from pcdarts_jax.train import torch_import
from pcdarts_jax.train import train as trainer
from pcdarts_jax.spaces.darts import visualize
from tests import compile_options

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS_ACCURACY_BAR = 0.90  # configs/digits_train.py measured 0.976.


@pytest.mark.parametrize('length', [4, 5, 16])
def test_cutout_zeroes_one_clipped_square(length):
  n, h, w = 400, 12, 10
  images = jnp.ones((n, h, w, 3))
  out = np.asarray(data.cutout(jax.random.PRNGKey(length), images, length))
  zero = out[..., 0] == 0
  assert np.array_equal(zero, np.all(out == 0, -1))  # All channels alike.
  half = length // 2
  sides = set()
  for i in range(n):
    rows, cols = np.nonzero(zero[i].any(1))[0], np.nonzero(zero[i].any(0))[0]
    assert rows.size and cols.size  # A centre inside the image hides >= 1 pixel.
    # A solid rectangle [top, bottom] x [left, right] ...
    assert zero[i].sum() == rows.size * cols.size
    assert np.all(zero[i][rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1])
    assert np.all(np.diff(rows) == 1) and np.all(np.diff(cols) == 1)
    # ... of side 2 * (length // 2), shortened only where it meets a border.
    for idx, size in ((rows, h), (cols, w)):
      assert idx.size <= 2 * half
      assert idx.size == 2 * half or idx[0] == 0 or idx[-1] == size - 1
      sides.add(idx.size)
  assert min(sides) < 2 * half  # Clipped squares occur ...
  assert 2 * half in sides or 2 * half > min(h, w)  # ... and whole ones where they fit.
  np.testing.assert_array_equal(out[~zero], 1.0)
  assert np.array_equal(data.cutout(jax.random.PRNGKey(0), images, 0), images)


def test_cutout_centres_cover_the_image():
  out = np.asarray(data.cutout(jax.random.PRNGKey(1), jnp.ones((2000, 8, 8, 1)), 2))
  # With length 2 the hole is pixel (cy-1..cy, cx-1..cx): its bottom-right
  # corner is the centre, uniform over all 64 positions.
  hit = (out[..., 0] == 0).reshape(2000, -1)
  assert hit.any(0).all()  # Every pixel is hidden by some image's square.


def test_label_smoothing_by_hand():
  logits = jnp.array([[1.0, 2.0, 0.5, -1.0]])
  s, k = 0.1, 4
  log_p = np.log(np.exp([1.0, 2.0, 0.5, -1.0]) / np.exp([1.0, 2.0, 0.5, -1.0]).sum())
  targets = np.full(k, s / k)
  targets[1] += 1 - s
  expected = -(targets * log_p).sum()
  got = metrics_lib.cross_entropy(logits, jnp.array([1]), s)
  np.testing.assert_allclose(got, [expected], rtol=1e-6)
  np.testing.assert_allclose(metrics_lib.cross_entropy(logits, jnp.array([1])), [-log_p[1]],
                             rtol=1e-6)


def test_learning_rate_schedules():
  config = cifar10_train.get_config()  # cosine, 600 epochs, lr 0.025
  config.train.lr_schedule_offset = 0  # epoch e at lr(e) (tests/test_nb201_train.py: 1)
  lr = trainer.learning_rate_fn(config, steps_per_epoch=10)
  assert float(lr(0)) == pytest.approx(0.025)
  assert float(lr(9)) == pytest.approx(0.025)  # constant within an epoch
  assert float(lr(3000)) == pytest.approx(0.0125)  # epoch 300 of 600
  assert float(lr(5990)) == pytest.approx(0.025 * 0.5 * (1 + math.cos(math.pi * 599 / 600)),
                                         rel=1e-3)  # float32 near 0
  config = imagenet_train.get_config()  # linear, 250 epochs, 5 warm-up, lr 0.5
  config.train.warmup_lr = 'base'  # 'schedule' (the config's): tests/test_nb201_train.py
  lr = trainer.learning_rate_fn(config, steps_per_epoch=1)
  expected = {0: 0.1, 1: 0.2, 4: 0.5, 5: 0.5 * 240 / 245, 100: 0.5 * 145 / 245,
              244: 0.5 / 245, 245: 0.5 * 5 / (245 * 5), 249: 0.5 / (245 * 5)}
  for epoch, value in expected.items():
    assert float(lr(epoch)) == pytest.approx(value, rel=1e-5), epoch


def test_optimizer_is_pytorch_sgd_with_clip_and_l2():
  config = cifar10_train.get_config()
  config.train.grad_clip, config.train.weight_decay, config.train.momentum = 1.0, 0.1, 0.9
  tx = trainer.optimizer(config, steps_per_epoch=1)
  w = jnp.array([1.0, -2.0])
  opt = tx.init(w)
  grads = [jnp.array([3.0, 4.0]), jnp.array([0.3, 0.4])]
  lr = [float(trainer.learning_rate_fn(config, 1)(i)) for i in range(2)]
  buf, ref = np.zeros(2), np.asarray(w)
  for i, g in enumerate(grads):
    g = np.asarray(g) * min(1.0, 1.0 / np.linalg.norm(g))  # clip the raw gradient
    buf = 0.9 * buf + g + 0.1 * ref                         # then L2, then momentum
    ref = ref - lr[i] * buf
    updates, opt = tx.update(grads[i], opt, w)
    w = w + updates
  np.testing.assert_allclose(w, ref, rtol=1e-6)


def _tiny_cifar(drop_path_prob=0.3):
  config = cifar10_train.get_config()
  config.model.init_channels, config.model.layers = 4, 3
  config.model.depthwise_impl = 'dense'
  config.model.drop_path_prob = drop_path_prob
  config.data.crop_padding, config.data.random_flip = 0, False
  config.train.cutout_length = 0
  return config


def test_train_step_loss_aux_and_one_compile_for_every_drop_probability():
  config = _tiny_cifar()
  model = network.build_network(config)
  state = trainer.create_train_state(model, config, jax.random.PRNGKey(0), 10)
  step = jax.jit(trainer.make_train_step(model, config, trainer.optimizer(config, 10)))
  rng = np.random.default_rng(0)
  batch = {'image': rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8),
           'label': np.array([0, 1, 2, 3], np.int32)}
  # Loss = CE + 0.4 CE_aux in train mode; drop probability 0 drops nothing.
  images = data.normalize(batch['image'], config.data.mean, config.data.std)
  forward = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']))
  (logits, aux), _ = forward({'params': state.params, 'batch_stats': state.batch_stats},
                             images)
  expected = (metrics_lib.cross_entropy(logits, batch['label']).mean() +
              0.4 * metrics_lib.cross_entropy(aux, batch['label']).mean())
  new, metrics = step(state, batch, jax.random.PRNGKey(1), jnp.float32(0.0))
  np.testing.assert_allclose(metrics['loss_sum'] / metrics['count'], expected, rtol=1e-5)
  assert float(metrics['count']) == 4
  assert int(new.step) == 1
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), new.params, state.params)
  assert all(jax.tree.leaves(changed))
  assert not np.array_equal(new.batch_stats['stem_bn']['mean'],
                            state.batch_stats['stem_bn']['mean'])
  # A different drop probability reuses the compiled step and changes the loss.
  _, dropped = step(new, batch, jax.random.PRNGKey(1), jnp.float32(0.5))
  _, undropped = step(new, batch, jax.random.PRNGKey(1), jnp.float32(0.0))
  assert step._cache_size() == 1  # pylint: disable=protected-access
  assert float(dropped['loss_sum']) != float(undropped['loss_sum'])


@pytest.mark.parametrize('field,value,message', [
    ('genotype', 'NOT_A_GENOTYPE', r"genotype='NOT_A_GENOTYPE'.*published genotype"),
    ('model.auxiliary', True, r'model\.auxiliary=True needs 5x5 maps.*allowed: False'),
    ('model.drop_path_prob', 1.0, r'model\.drop_path_prob=1\.0 must be a number in \[0'),
    ('train.lr_schedule', 'step',
     r"train\.lr_schedule='step' is not one of \('cosine', 'linear'\)"),
    ('model.network', 'resnet',
     r"model\.network='resnet' is not one of \('cifar', 'imagenet', 'sgnas', 'nb201'\)"),
    ('data.name', 'mnist', r"data\.name='mnist' is not one of"),
    ('train.cutout_length', -1, r'train\.cutout_length=-1 must be an integer >= 0'),
    ('model.num_classes', 100, r'model\.num_classes=100 but digits has 10 classes'),
])
def test_validation_names_the_field(field, value, message):
  config = digits_train.get_config()
  section, _, name = field.rpartition('.')
  (config[section] if section else config)[name] = value
  with pytest.raises(config_validation.ConfigError, match=message):
    trainer.validate_train_config(config)


def test_validation_batch_and_devices_and_published_configs():
  config = digits_train.get_config()
  with pytest.raises(config_validation.ConfigError, match=r'train\.batch_size=50 is not '
                     r'divisible by the 3 devices \(allowed: multiples of 3\)'):
    trainer.validate_train_config(config, num_devices=3)
  for module, devices in ((cifar10_train, 8), (imagenet_train, 8), (digits_train, 2)):
    trainer.validate_train_config(module.get_config(), num_devices=devices)
  config = imagenet_train.get_config()
  config.train.epochs = 5
  with pytest.raises(config_validation.ConfigError, match=r'train\.epochs=5 must be > 5'):
    trainer.validate_train_config(config)


def test_imagenet_without_data_says_how_to_prepare_it(tmp_path):
  config = imagenet_train.get_config()
  config.data.data_dir = str(tmp_path / 'tfds')
  config.data.manual_dir = str(tmp_path / 'missing')
  with pytest.raises(data.DataError) as info:
    trainer._datasets(config)  # pylint: disable=protected-access
  assert 'data.manual_dir' in str(info.value) and 'ILSVRC2012_img_val.tar' in str(info.value)


def test_one_and_four_devices_train_alike():
  """Crops, cutout and drop-path keyed by global example positions, BatchNorm
  over the global batch: 4 devices on 4 images each follow the 1-device run."""
  env = dict(compile_options.devices_env(4), PYTHONPATH=REPO)
  run = subprocess.run([sys.executable, os.path.join('tests', 'multidevice',
                                                     'train_one_vs_many.py'), '3'],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  figures = json.loads(run.stdout.strip().splitlines()[-1])
  assert figures['devices'] == 4 and figures['moved'] > 1e-2
  assert figures['params'] < 1e-5 and figures['batch_stats'] < 1e-5, figures
  assert figures['metrics'] < 1e-4 and figures['test'] < 1e-4, figures


def _tiny_digits():
  config = digits_train.get_config()
  config.model.init_channels, config.model.layers = 4, 2
  config.train.epochs, config.train.batch_size = 2, 100  # 15 steps per epoch
  config.checkpoint.every_steps, config.checkpoint.keep = 10, 10
  config.monitor.tensorboard = config.monitor.pictures = False
  return config


def _final_state(workdir, step):
  """The arrays of checkpoint `step` as saved (nested dicts), and its meta."""
  ckpts = checkpoint.Checkpoints(os.path.join(workdir, 'checkpoints'), 10)
  state, meta = ckpts.restore(step, None)
  ckpts.close()
  return state, meta


def test_resume_from_a_mid_epoch_checkpoint_reproduces_the_run(tmp_path):
  config = _tiny_digits()
  workdir = str(tmp_path / 'run')
  first = trainer.train(config, workdir)
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['10', '15', '20', '30']
  final, _ = _final_state(workdir, 30)
  with open(os.path.join(workdir, 'train_log.jsonl')) as f:
    log = [json.loads(line) for line in f]
  # Interrupted after step 10 of epoch 1 (of 15): only that checkpoint survives.
  for step in ('15', '20', '30'):
    shutil.rmtree(os.path.join(workdir, 'checkpoints', step))
  second = trainer.train(config, workdir)
  again, meta = _final_state(workdir, 30)
  assert meta['resumed_from'] == [10]
  jax.tree.map(np.testing.assert_array_equal, final, again)
  with open(os.path.join(workdir, 'train_log.jsonl')) as f:
    relog = [json.loads(line) for line in f]
  assert [(r['train'], r['test']) for r in relog] == [(r['train'], r['test']) for r in log]
  assert [r['epoch'] for r in relog] == [1, 2]  # As on the console.
  assert second['test'] == first['test'] and second['resumed_from_steps'] == [10]
  assert second['steps_per_second'] > 0
  # Run again, finished: the summary is returned and nothing is written.
  summary_file = os.path.join(workdir, 'summary.json')
  written = os.stat(summary_file).st_mtime_ns, sorted(os.listdir(workdir))
  assert trainer.train(config, workdir) == json.loads(json.dumps(second))
  assert (os.stat(summary_file).st_mtime_ns, sorted(os.listdir(workdir))) == written
  # Evaluated with another model: one line naming an array and the config field;
  # nothing is moved aside.
  held = sorted(os.listdir(os.path.join(workdir, 'checkpoints')))
  other = _tiny_digits()
  other.model.init_channels = 8
  with pytest.raises(config_validation.ConfigError) as info:
    trainer.evaluate_checkpoint(other, workdir=workdir)
  message = str(info.value)
  assert 'checkpoint 30' in message and 'in the checkpoint' in message and '\n' not in message
  assert 'model.init_channels: 4 -> 8' in message
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == held
  assert not os.path.exists(os.path.join(str(tmp_path), 'checkpoints_unreadable'))
  assert not os.path.exists(os.path.join(workdir, 'checkpoints_unreadable'))
  # A different config is refused before anything is touched.
  config.train.learning_rate = 0.5
  with pytest.raises(config_validation.ConfigError, match=r'train\.learning_rate: 0\.1 -> 0\.5'):
    trainer.train(config, workdir)


def test_digits_launchers_train_and_evaluate(tmp_path):
  """launch/train.py with the embedded default, then launch/evaluate.py on its
  workdir, then the same weights through the PyTorch import path."""
  workdir = str(tmp_path / 'train')
  env = dict(os.environ, PYTHONPATH=REPO)
  run = subprocess.run(
      [sys.executable, '-m', 'launch.train', '--config=configs/digits_train.py',
       f'--workdir={workdir}', '--compilation_cache='],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  with open(os.path.join(workdir, 'summary.json')) as f:
    summary = json.load(f)
  assert summary['test']['accuracy'] >= DIGITS_ACCURACY_BAR, summary['test']
  assert summary['epochs'] == 10 and summary['parameters'] == 37_826
  with open(os.path.join(workdir, 'train_log.jsonl')) as f:
    log = [json.loads(line) for line in f]
  assert [r['epoch'] for r in log] == list(range(1, 11))  # As on the console.
  assert summary['best']['epoch'] in range(1, 11)
  assert log[-1]['drop_path_prob'] == pytest.approx(0.1 * 9 / 10)
  assert network.resolve_genotype(workdir) == genotypes.PCDARTS  # genotype.json written
  picture = 'png' if visualize.have_dot() else 'gv'  # .gv sources without graphviz's dot
  for kind in ('normal', 'reduce'):
    assert os.path.getsize(os.path.join(workdir, 'plots', f'cell_{kind}.{picture}')) > 0

  run = subprocess.run(
      [sys.executable, '-m', 'launch.evaluate', '--config=configs/digits_train.py',
       f'--workdir={workdir}'], cwd=REPO, env=env, capture_output=True, text=True,
      timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  result = json.loads(run.stdout.strip().splitlines()[-1])
  assert result['top1_error'] == pytest.approx(1 - summary['test']['accuracy'])
  assert result['top5_error'] == pytest.approx(1 - summary['test']['top5_accuracy'])
  assert result['images'] == 297

  # The trained weights, renamed and laid out as the reference PyTorch network
  # stores them, evaluate to the same errors through torch_import.
  import test_torch_import_network as naming  # pylint: disable=g-import-not-at-top
  config = digits_train.get_config()
  state, _ = _final_state(workdir, 300)
  variables = {'params': state['params'], 'batch_stats': state['batch_stats']}
  reference = naming.reference_state_dict(np.random.default_rng(0), 'cifar', 8, 3,
                                          genotypes.PCDARTS, auxiliary=False, in_channels=1)
  state_dict = {}
  for key, (value, where, layout) in reference.items():
    if where is None:
      state_dict[key] = value
      continue
    leaf = np.asarray(_lookup(variables, where))
    state_dict[key] = {'conv': lambda x: x.transpose(3, 2, 0, 1),
                       'linear': lambda x: x.T}.get(layout, lambda x: x)(leaf)
  np.savez(tmp_path / 'weights.npz', **state_dict)
  result = trainer.evaluate_checkpoint(
      config, torch_state_dict=torch_import.read_state_dict(str(tmp_path / 'weights.npz')))
  assert result['top1_error'] == pytest.approx(1 - summary['test']['accuracy'])


def _lookup(tree, where):
  for key in where:
    tree = tree[key]
  return tree
