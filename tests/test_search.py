"""The bilevel step and the search loop, on a tiny supernet over the digits data."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import cifar10_search
from configs import darts_search
from configs import digits_search
from configs import drnas_cifar10_search
from configs import drnas_digits_search
from configs import drnas_imagenet_search
from configs import drnas_nb201_nonprogressive_search
from configs import drnas_nb201_search
from configs import imagenet_search
from configs import nb201_cifar10_search
from pcdarts_jax.data import datasets as data
from pcdarts_jax.spaces.darts import genotypes
from pcdarts_jax.search import search as loop
from pcdarts_jax.search import optim
from pcdarts_jax.spaces.darts import supernet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config():
  config = digits_search.get_config()
  config.model.init_channels = 4
  config.model.layers = 2  # Two reduction cells: 8x8 -> 4x4 -> 2x2.
  config.model.partial_channels = 2
  config.search.batch_size = 32
  config.search.epochs = 2
  config.search.arch_start_epoch = 1
  return config


@pytest.fixture(scope='module')
def step_setup():
  config = tiny_config()
  # Steps 0 and 1 both below the last epoch, which runs at lr_min = 0 (the
  # schedule stepped before each epoch, as PC-DARTS does): both steps move weights.
  config.search.epochs = 3
  train_set, arch_set = data.search_splits(config.data)
  steps_per_epoch = 1  # Arch steps start at step 1.
  model = supernet.build_supernet(config)
  weight_tx = optim.weight_optimizer(config, steps_per_epoch)
  arch_tx = optim.arch_optimizer(config)
  sample = data.normalize(train_set.images[:1], config.data.mean, config.data.std)
  state = loop.create_search_state(model, config, jax.random.PRNGKey(0), sample,
                                   weight_tx, arch_tx)
  step = jax.jit(loop.make_bilevel_step(model, config, steps_per_epoch, weight_tx, arch_tx))
  return config, train_set, arch_set, state, step


def _batch(dataset, start, size):
  return {'image': dataset.images[start:start + size], 'label': dataset.labels[start:start + size]}


def _changed(a, b):
  return any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_arch_frozen_before_arch_start_then_both_move(step_setup):
  config, train_set, arch_set, state0, step = step_setup
  b = config.search.batch_size
  state1, m1 = step(state0, _batch(train_set, 0, b), _batch(arch_set, 0, b), jax.random.PRNGKey(1))
  # Step 0 < arch_start_epoch * steps_per_epoch: only the weights move.
  for name in genotypes.ARCH_NAMES:
    np.testing.assert_array_equal(state1.arch[name], state0.arch[name])
  assert _changed(state0.params, state1.params)
  assert float(m1['arch_count']) == 0.0 and float(m1['train_count']) == b
  assert int(state1.step) == 1

  state2, m2 = step(state1, _batch(train_set, b, b), _batch(arch_set, b, b), jax.random.PRNGKey(2))
  for name in genotypes.ARCH_NAMES:
    assert not np.array_equal(state2.arch[name], state1.arch[name]), name
  assert _changed(state1.params, state2.params)
  assert float(m2['arch_count']) == b
  # The warm-up switch is traced: one compile serves both phases.
  assert step._cache_size() == 1


def test_arch_step_is_adam_with_l2_on_the_arch_batch(step_setup):
  """The first arch update equals Adam's first step on grad + wd * alpha."""
  config, train_set, arch_set, state0, step = step_setup
  b = config.search.batch_size
  state1, _ = step(state0, _batch(train_set, 0, b), _batch(arch_set, 0, b), jax.random.PRNGKey(1))
  state2, _ = step(state1, _batch(train_set, b, b), _batch(arch_set, b, b), jax.random.PRNGKey(2))
  delta = state2.arch['alphas_normal'] - state1.arch['alphas_normal']
  # Adam's first step moves every coordinate by lr * g / (|g| + eps): about +-lr.
  lr = config.search.arch_learning_rate
  moved = np.abs(np.asarray(delta))
  assert np.all(moved <= lr * 1.0001)
  assert np.median(moved) > 0.9 * lr


def test_few_hundred_steps_reduce_training_loss(step_setup):
  config, train_set, arch_set, state, step = step_setup
  b = config.search.batch_size
  train_iter = data.EpochIterator(train_set, b, seed=0)
  arch_iter = data.EpochIterator(arch_set, b, seed=1)
  losses = []
  rng = jax.random.PRNGKey(3)
  for i in range(240):
    state, m = step(state, next(train_iter), next(arch_iter), jax.random.fold_in(rng, i))
    losses.append(m['train_loss_sum'] / m['train_count'])
  losses = np.asarray(jax.device_get(losses))
  assert np.all(np.isfinite(losses))
  first, last = losses[:20].mean(), losses[-20:].mean()
  assert last < 0.7 * first, (first, last)


# lr(t) = 0.01 + 0.045 (1 + cos(pi t / 4)) for t = 0..4, by hand
# (cos(pi / 4) = 0.70711): 0.1, 0.086820, 0.055, 0.023180, 0.01.
EPOCH_LRS = {0: (0.1, 0.086820, 0.055, 0.023180),    # DrNAS: epoch e at lr(e)
             1: (0.086820, 0.055, 0.023180, 0.01)}   # DARTS, PC-DARTS: at lr(e + 1)


@pytest.mark.parametrize('offset', [0, 1])
def test_learning_rate_is_cosine_stepped_per_epoch(offset):
  """Constant within each epoch; with offset 1 (the scheduler stepped before each
  epoch, as DARTS and PC-DARTS do) the first epoch already runs below lr and the
  last at lr_min; with 0 (DrNAS) the first at lr, the last above lr_min."""
  config = tiny_config()
  config.search.epochs = 4
  config.search.learning_rate = 0.1
  config.search.learning_rate_min = 0.01
  config.search.lr_schedule_offset = offset
  lr = optim.weight_learning_rate(config, steps_per_epoch=10)
  for e in range(4):
    for s in (0, 9):
      assert float(lr(e * 10 + s)) == pytest.approx(EPOCH_LRS[offset][e], abs=1e-6)


@pytest.mark.parametrize('nesterov,expected', [(False, [1.0, 1.9]), (True, [1.9, 2.71])])
def test_nesterov_momentum_is_pytorchs(nesterov, expected):
  """Gradient 1 twice, momentum 0.9, no decay: PyTorch's buffer is 1 then 1.9;
  plain SGD steps by the buffer, Nesterov's by g + 0.9 buffer: 1.9, then 2.71."""
  config = tiny_config()
  config.search.update(learning_rate=0.1, learning_rate_min=0.1, weight_decay=0.0,
                       grad_clip=100.0, nesterov=nesterov)
  tx = optim.weight_optimizer(config, steps_per_epoch=10)
  params = {'w': jnp.zeros(())}
  state = tx.init(params)
  steps = []
  for _ in range(2):
    updates, state = tx.update({'w': jnp.ones(())}, state, params)
    steps.append(-float(updates['w']) / 0.1)
  np.testing.assert_allclose(steps, expected, rtol=1e-6)


def test_lr_schedule_offset_of_each_reference():
  stepped_first = (cifar10_search, darts_search, imagenet_search, digits_search)
  stepped_last = (drnas_cifar10_search, drnas_imagenet_search, drnas_digits_search,
                  drnas_nb201_search, drnas_nb201_nonprogressive_search, nb201_cifar10_search)
  assert all(c.get_config().search.lr_schedule_offset == 1 for c in stepped_first)
  assert all(c.get_config().search.lr_schedule_offset == 0 for c in stepped_last)


# The in-process search (`search.search`: its return value, genotypes.jsonl,
# genotype.json, arch.npz) runs in test_resume's test_skip_nonfinite_counts_and_goes_on,
# through the launcher in its reference run.


@pytest.mark.slow
def test_quickstart_command(tmp_path):
  """The README's main command, exactly as written there."""
  workdir = tmp_path / 'run'
  result = subprocess.run(
      [sys.executable, '-m', 'launch.search', '--config=configs/digits_search.py',
       f'--workdir={workdir}'], cwd=REPO, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'epoch 12/12' in result.stdout
  genotypes.from_json((workdir / 'genotype.json').read_text())
  assert len((workdir / 'genotypes.jsonl').read_text().splitlines()) == 12


def test_warmup_scales_the_first_epochs_and_arch_clip_bounds_the_update():
  import optax  # pylint: disable=g-import-not-at-top
  config = imagenet_search.get_config()
  lr = optim.weight_learning_rate(config, steps_per_epoch=10)
  cosine = lambda e: 0.25 * (1 + np.cos(np.pi * e / 50))
  # PC-DARTS overwrites the scheduled lr in warm-up epochs with 0.5 (e + 1) / 5,
  # then runs at lr(e + 1); DrNAS the same, then at lr(e).
  pcdarts = [0.1, 0.2, 0.3, 0.4, 0.5, cosine(6), cosine(7)]
  drnas = [0.1, 0.2, 0.3, 0.4, 0.5, cosine(5), cosine(6)]
  drnas_lr = optim.weight_learning_rate(drnas_imagenet_search.get_config(), steps_per_epoch=10)
  for epoch in range(7):
    assert float(lr(epoch * 10 + 3)) == pytest.approx(pcdarts[epoch], rel=1e-6)
    assert float(drnas_lr(epoch * 10 + 3)) == pytest.approx(drnas[epoch], rel=1e-6)
  config.search.warmup_lr = 'cosine'  # The cosine's own value, scaled.
  lr = optim.weight_learning_rate(config, steps_per_epoch=10)
  for epoch in range(7):
    factor = min(1.0, (epoch + 1) / 5)
    assert float(lr(epoch * 10 + 3)) == pytest.approx(cosine(epoch + 1) * factor, rel=1e-6)
  # Clipped to norm 5 before the L2 term and Adam: a huge gradient followed by a
  # small one moves the arch exactly like the same gradient scaled to norm 5
  # (Adam's second moment remembers the first gradient's size).
  arch = {'a': jnp.ones(4)}
  huge, clipped = {'a': jnp.array([300.0, 400.0, 0.0, 0.0])}, {'a': jnp.array([3., 4., 0, 0])}
  small = {'a': jnp.array([0.03, -0.04, 0.05, 0.0])}

  def two_steps(tx, first):
    state = tx.init(arch)
    updates, state = tx.update(first, state, arch)
    params = optax.apply_updates(arch, updates)
    updates, state = tx.update(small, state, params)
    return optax.apply_updates(params, updates)['a']

  tx = optim.arch_optimizer(config)
  np.testing.assert_allclose(two_steps(tx, huge), two_steps(tx, clipped), rtol=0, atol=1e-6)
  config.search.arch_grad_clip = 0.0
  tx = optim.arch_optimizer(config)
  unclipped_gap = np.max(np.abs(two_steps(tx, huge) - two_steps(tx, clipped)))
  assert unclipped_gap > 3e-5  # vs. < 1e-6 above: the clip is what made them equal.
