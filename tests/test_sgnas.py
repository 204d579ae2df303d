"""SGNAS: FLOPs table and loss, sampling, the unified supernet, the generator."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pcdarts_jax.sgnas import flops as flops_lib
from pcdarts_jax.sgnas import generator as generator_lib
from pcdarts_jax.sgnas import layout as layout_lib
from pcdarts_jax.sgnas import sampling
from pcdarts_jax.sgnas import search
from pcdarts_jax.sgnas import supernet as supernet_lib
from tests import compile_options

SKIP = layout_lib.SKIP
# Two tiny layers: one residual (8 -> 8, stride 1), one reducing (8 -> 12, stride 2).
TINY = layout_lib.Layout(
    name='tiny', image_size=8, image_channels=1, num_classes=3, stem_channels=4,
    stem_stride=1, first_channels=8, head_channels=16,
    layers=(layout_lib.Layer(8, 8, 1, 8, 8), layout_lib.Layer(8, 12, 2, 8, 4)))


@pytest.fixture(scope='module')
def tiny():
  model = supernet_lib.Supernet(TINY, depthwise_impl='conv')
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 1))
  variables = jax.jit(lambda k: model.init(k, x, supernet_lib.init_arch(TINY)))(
      jax.random.PRNGKey(1))
  # Non-trivial running statistics, so eval mode is not the identity BN.
  variables = {'params': variables['params'], 'batch_stats': jax.tree.map(
      lambda v: v + 0.3 * jax.random.uniform(jax.random.PRNGKey(2), v.shape),
      variables['batch_stats'])}
  return model, variables, x


# ------------------------------------------------------------------ layouts


def test_imagenet_layout_is_the_19_layer_spec():
  lay = layout_lib.make_layout('imagenet', 224, 3, 1000)
  assert lay.num_layers == 19
  assert [l.c_out for l in lay.layers][:3] == [32, 32, 40]
  assert lay.stem_size == 112 and lay.layers[-1].size_out == 7
  assert sum(l.residual for l in lay.layers) == 13  # stride 1 and equal widths
  cifar = layout_lib.make_layout('cifar', 32, 3, 100)
  assert cifar.stem_size == 32 and cifar.layers[0].stride == 1
  assert cifar.layers[-1].size_out == 4


def test_unknown_layout_names_the_field():
  with pytest.raises(ValueError, match=r"model.layout='huge' is not one of"):
    layout_lib.make_layout('huge', 32, 3, 10)


def test_architecture_string_round_trip_and_checks():
  choices = np.array([[0, 1, 2, SKIP, 0, SKIP], [2, SKIP, SKIP, SKIP, SKIP, SKIP]])
  text = layout_lib.to_string(choices)
  assert text == '357x3x|7xxxxx'
  np.testing.assert_array_equal(layout_lib.from_string(text), choices)
  np.testing.assert_array_equal(layout_lib.expansions(choices), [4, 1])
  assert layout_lib.group_of_choices(choices[0]) == (3, 5, 7, 3)
  with pytest.raises(ValueError, match='group 0 of layer 1 skips'):
    layout_lib.check_choices([[0] * 6, [SKIP] * 6], TINY)
  with pytest.raises(ValueError, match=r'shape \(2, 6\)'):
    layout_lib.check_choices([[0] * 6], TINY)


# -------------------------------------------------------------------- FLOPs


def test_table_by_hand():
  table = flops_lib.lookup_table(TINY)
  # Layer 0 (8 -> 8, 8x8 in and out): expand 64*8*8 + dw 64*k*k*8 + project 64*8*8.
  assert table.per_group[0].tolist() == [64 * 8 * 8 * 2 + 64 * k * k * 8 for k in (3, 5, 7)] + [0]
  # Layer 1 (8 -> 12, stride 2): expand at 8x8, depthwise and project at 4x4.
  assert table.per_group[1, 0] == 64 * 8 * 8 + 16 * 9 * 8 + 16 * 8 * 12
  stem, first = 64 * 9 * 1 * 4, 64 * 9 * 4 + 64 * 4 * 8
  head, classifier = 16 * 12 * 16, 16 * 3
  assert table.base == stem + first + head + classifier


def test_expected_flops_equals_exact_at_one_hot():
  lay = layout_lib.make_layout('cifar', 32, 3, 100)
  table = flops_lib.lookup_table(lay)
  archs = flops_lib.random_architectures(lay, 5, np.random.default_rng(0))
  for choices in archs:
    expected = float(flops_lib.expected_mflops(jnp.asarray(layout_lib.one_hot(choices)), table))
    assert expected == pytest.approx(flops_lib.architecture_macs(choices, table) / 1e6, rel=1e-6)
  low, high = flops_lib.macs_range(table)
  exact = [flops_lib.architecture_macs(c, table) for c in archs]
  assert low <= min(exact) and max(exact) <= high


def test_expected_flops_is_differentiable_and_linear():
  table = flops_lib.lookup_table(TINY)
  probs = jnp.full((2, 6, 4), 0.25)
  grad = jax.grad(lambda p: flops_lib.expected_mflops(p, table))(probs)
  np.testing.assert_allclose(grad[:, 0], table.per_group / 1e6, rtol=1e-6)


@pytest.mark.parametrize('flops, expected', [
    (110.0, 3e-4 * 1.2 * 10.0 ** 2),   # above T + margin: alpha * lambda * diff^2
    (90.0, 3e-4 * 10.0 ** 2),          # below T - margin: alpha * diff^2
    (100.05, 0.0),                     # inside the dead zone
    (99.95, 0.0),
    (100.2, 3e-4 * 1.2 * 0.2 ** 2),    # just outside, above
])
def test_flops_loss_hand_cases(flops, expected):
  loss = flops_lib.flops_loss(jnp.float32(flops), jnp.float32(100.0), 3e-4, 1.2, 0.1)
  assert float(loss) == pytest.approx(expected, rel=1e-4, abs=1e-12)


def test_pool_keys_are_the_references():
  # pool_size 1 (the reference default): one prior, at the middle of the range.
  np.testing.assert_allclose(flops_lib.pool_keys(270, 450, 1), [360])
  np.testing.assert_allclose(flops_lib.pool_keys(80, 120, 1), [100])
  # range(low + d, high - 1, d) with d = (high - low) // (pool_size + 1):
  np.testing.assert_allclose(flops_lib.pool_keys(270, 450, 2), [330, 390])
  np.testing.assert_allclose(flops_lib.pool_keys(80, 120, 3), [90, 100, 110])


def test_pool_sampling_bounds():
  lay = layout_lib.make_layout('cifar', 32, 3, 100)
  table = flops_lib.lookup_table(lay)
  keys = flops_lib.pool_keys(80, 120, 3)
  choices, mflops = flops_lib.sample_prior_pool(lay, table, keys, 1.0, seed=0)
  assert choices.shape == (3, 19, 6)
  assert np.all(np.abs(mflops - keys) <= 1.0)
  np.testing.assert_allclose([flops_lib.architecture_macs(c, table) / 1e6 for c in choices],
                             mflops)
  # Every layer: expansion e in 2..6 on groups 0..e-1 (each a kernel), the rest skipped.
  draws = np.concatenate([choices, flops_lib.contiguous_architectures(
      lay, 500, np.random.default_rng(0))])
  e = layout_lib.expansions(draws)
  assert set(np.unique(e)) == {2, 3, 4, 5, 6}
  active = np.arange(6) < e[..., None]
  assert np.all(draws[active] != SKIP) and np.all(draws[~active] == SKIP)
  assert set(np.unique(draws[active])) == {0, 1, 2}
  # Same seed, same pool.
  again, _ = flops_lib.sample_prior_pool(lay, table, keys, 1.0, seed=0)
  np.testing.assert_array_equal(choices, again)
  with pytest.raises(ValueError, match=r'generator.pool_bias=1.0: none of 8192 random priors'):
    flops_lib.sample_prior_pool(lay, table, [20.0], 1.0, seed=0, max_draws=8192)


def test_prior_of_is_the_nearest_key():
  grid = search.Targets(grid=np.arange(270, 450, 5.0), low=270.0, high=450.0,
                        prior=np.stack([np.zeros((2, 6, 4)), np.ones((2, 6, 4))]),
                        keys=np.array([330.0, 390.0]))
  assert float(grid.prior_of(359.0).sum()) == 0 and float(grid.prior_of(361.0).sum()) == 48
  assert float(grid.prior_of(270.0).sum()) == 0 and float(grid.prior_of(449.0).sum()) == 48


def test_reference_prior_pool_file(tmp_path):
  lay = layout_lib.make_layout('digits', 8, 1, 10)
  choices = np.array([[0, 1, 2, SKIP, SKIP, SKIP]] * 3 + [[2, 2, SKIP, SKIP, SKIP, SKIP]] * 3)
  path = tmp_path / 'prior_pool.json'
  # The reference's format: "<MFLOPs>": L rows of 24 one-hot floats.
  path.write_text(json.dumps({'0.3': layout_lib.one_hot(choices).reshape(6, 24).tolist()}))
  keys, read = search.read_prior_pool(str(path), lay)
  np.testing.assert_array_equal(keys, [0.3])
  np.testing.assert_array_equal(read[0], choices)
  path.write_text(json.dumps({'360': np.zeros((19, 24)).tolist()}))
  with pytest.raises(search.ConfigError, match=r"prior_pool_file=.*prior '360' has shape "
                                               r"\(19, 24\); expected 6 rows of 24 one-hot"):
    search.read_prior_pool(str(path), lay)


# ------------------------------------------------------------------ sampling


def test_paths_are_fair_deterministic_and_valid():
  # 15 steps x 4 paths = 60 draws: 12 full cycles of the 5 expansions, 20 of the 3 kernels.
  paths = np.concatenate([sampling.sample_paths(7, step, 4, 19) for step in range(15)])
  assert paths.shape == (60, 19, 6)
  assert not np.any(paths[..., 0] == SKIP)  # group 0 never skips
  for layer in range(19):
    counts = np.bincount(layout_lib.expansions(paths[:, layer]), minlength=7)
    assert counts.tolist() == [0, 0, 12, 12, 12, 12, 12]
    assert np.bincount(paths[:, layer, 0], minlength=3).tolist() == [20, 20, 20]
  np.testing.assert_array_equal(sampling.sample_paths(7, 3, 4, 19),
                                sampling.sample_paths(7, 3, 4, 19))
  assert not np.array_equal(sampling.sample_paths(7, 3, 4, 19), sampling.sample_paths(8, 3, 4, 19))


# ------------------------------------------------------------------ supernet


@pytest.mark.parametrize('train', [True, False])
def test_single_path_equals_soft_at_one_hot(tiny, train):
  model, variables, x = tiny
  hard_fn = jax.jit(lambda a: model.apply(variables, x, a, train=train, hard=True,
                                          mutable=['batch_stats']))
  soft_fn = jax.jit(lambda p: model.apply(variables, x, p, train=train, hard=False,
                                          mutable=['batch_stats']))
  for seed in range(3):
    choices = flops_lib.random_architectures(TINY, 1, np.random.default_rng(seed))[0]
    hard, hard_stats = hard_fn(jnp.asarray(choices))
    soft, soft_stats = soft_fn(jnp.asarray(layout_lib.one_hot(choices)))
    np.testing.assert_allclose(hard, soft, atol=2e-5)
    for a, b in zip(jax.tree.leaves(hard_stats), jax.tree.leaves(soft_stats)):
      np.testing.assert_allclose(a, b, atol=2e-6)


@pytest.mark.parametrize('skipped', [0, 2, 5])
def test_switchable_bn_follows_skipped_groups(tiny, skipped):
  model, variables, x = tiny
  choices = np.zeros((2, 6), np.int32)
  choices[:, 6 - skipped:] = SKIP
  _, new = jax.jit(lambda a: model.apply(variables, x, a, train=True, hard=True,
                                         mutable=['batch_stats']))(jnp.asarray(choices))
  for layer in ('layer0', 'layer1'):
    before = variables['batch_stats'][layer]['project_bn']['mean']
    after = new['batch_stats'][layer]['project_bn']['mean']
    moved = np.any(np.abs(np.asarray(after - before)) > 0, axis=1)
    assert moved.tolist() == [row == skipped for row in range(6)]
  # The soft mixture is the same BN at a one-hot architecture.
  dist = supernet_lib.switchable_bn_weights(jnp.asarray(layout_lib.one_hot(choices[0])), False)
  np.testing.assert_allclose(dist, np.eye(6)[skipped], atol=1e-7)


def _skip_probs(*p_skip):
  """A (6, 4) soft layer row whose groups skip with p_skip (the rest on 3x3)."""
  p = jnp.asarray(p_skip, jnp.float32)
  return jnp.stack([1.0 - p, 0 * p, 0 * p, p], -1)


@pytest.mark.parametrize('p_skip,index', [
    ((0, 0.2, 0.2, 0.0, 0.0, 0.0), 0),   # 0.4 -> 0
    ((0, 0.5, 0.5, 0.3, 0.0, 0.0), 1),   # 1.3 -> 1
    ((0, 0.5, 0.5, 0.5, 0.0, 0.0), 2),   # 1.5 -> 2 (half to even, as Python's round)
    ((0, 0.5, 0.5, 0.5, 1.0, 0.0), 2),   # 2.5 -> 2
    ((0, 0.6, 0.6, 0.6, 0.6, 0.2), 3),   # 2.6 -> 3
    ((0, 1.0, 1.0, 1.0, 1.0, 1.0), 5)])
def test_soft_switchable_bn_is_the_rounded_skip_count(p_skip, index):
  row = _skip_probs(*p_skip)
  weights = supernet_lib.switchable_bn_weights(row, hard=False)
  np.testing.assert_array_equal(weights, np.eye(6)[index])
  # No gradient flows through the choice of the BN.
  grad = jax.grad(lambda r: jnp.sum(supernet_lib.switchable_bn_weights(r, False) *
                                    jnp.arange(1.0, 7.0)))(row)
  assert not np.any(np.asarray(grad))
  # The mixture option keeps the Poisson-binomial weights (and their gradient).
  mixture = supernet_lib.switchable_bn_weights(row, False, 'mixture')
  np.testing.assert_allclose(mixture, supernet_lib.skip_count_distribution(row[:, SKIP]))


def test_soft_forward_uses_one_bn(tiny):
  """At p_skip 0.5 on groups 1..3 (rounds to 2) the soft forward equals the
  mixture forward whose switchable BN is forced to BN 2."""
  model, variables, x = tiny
  row = _skip_probs(0, 0.5, 0.5, 0.5, 0, 0)
  arch = jnp.stack([row, row])
  rounded = model.apply(variables, x, arch, train=False, hard=False)
  two = jax.tree.map(lambda v: v, variables)
  for layer in ('layer0', 'layer1'):  # Every BN row the same as row 2: any mixture is BN 2.
    for group, values in (('params', ('scale', 'bias')), ('batch_stats', ('mean', 'var'))):
      for name in values:
        v = two[group][layer]['project_bn'][name]
        two[group][layer]['project_bn'][name] = jnp.broadcast_to(v[2], v.shape)
  mixture_model = supernet_lib.Supernet(TINY, depthwise_impl='conv', soft_bn='mixture')
  forced = mixture_model.apply(two, x, arch, train=False, hard=False)
  np.testing.assert_allclose(rounded, forced, rtol=1e-5, atol=1e-5)
  assert not np.allclose(rounded, mixture_model.apply(variables, x, arch, train=False,
                                                      hard=False), atol=1e-3)


def test_skip_count_distribution():
  p = jnp.array([0.0, 0.5, 0.5, 0.0, 0.0, 0.0])
  np.testing.assert_allclose(supernet_lib.skip_count_distribution(p),
                             [0.25, 0.5, 0.25, 0, 0, 0], atol=1e-7)
  dist = supernet_lib.skip_count_distribution(jax.random.uniform(jax.random.PRNGKey(0), (6,)))
  assert float(dist.sum()) == pytest.approx(1.0, abs=1e-6)


def test_single_path_runs_only_the_chosen_kernel(tiny):
  """Each group is a 4-way conditional (3 kernels, skip): a single path runs one
  branch per group instead of every kernel densely."""
  model, variables, x = tiny
  jaxpr = jax.make_jaxpr(lambda a: model.apply(variables, x, a, train=False, hard=True))(
      jnp.zeros((2, 6), jnp.int32))
  conds = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == 'cond']
  assert len(conds) == 2 * 6 and all(len(e.params['branches']) == 4 for e in conds)
  # Outside the conditionals no 5x5/7x7 depthwise conv is traced.
  outside = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == 'conv_general_dilated']
  assert all(e.invars[1].aval.shape[0] not in (5, 7) for e in outside)
  soft = jax.make_jaxpr(lambda a: model.apply(variables, x, a, train=False, hard=False))(
      jnp.full((2, 6, 4), 0.25))
  dense = [e for e in soft.jaxpr.eqns if e.primitive.name == 'conv_general_dilated'
           and e.invars[1].aval.shape[0] == 7]
  assert len(dense) == 2  # The soft forward runs every kernel on every layer.


def test_unchosen_kernels_get_no_gradient(tiny):
  model, variables, x = tiny
  choices = jnp.asarray([[0, 0, SKIP, SKIP, SKIP, SKIP], [1, 1, 1, 1, 1, 1]], jnp.int32)
  grads = jax.jit(jax.grad(lambda p: jnp.sum(model.apply(
      {'params': p, 'batch_stats': variables['batch_stats']}, x, choices, train=True,
      hard=True, mutable=['batch_stats'])[0] ** 2)))(variables['params'])
  g0 = grads['layer0']
  assert np.any(np.asarray(g0['dw3x3'][..., :16]) != 0)
  assert not np.any(np.asarray(g0['dw3x3'][..., 16:]))   # groups 2..5 skipped
  assert not np.any(np.asarray(g0['dw5x5'])) and not np.any(np.asarray(g0['dw7x7']))
  assert not np.any(np.asarray(grads['layer1']['dw3x3']))


# ----------------------------------------------------------------- generator


def test_generator_never_skips_group_zero():
  gen = generator_lib.Generator(hidden=8, body_layers=1)
  prior = jnp.asarray(layout_lib.one_hot(np.full((1, 3, 6), SKIP)))
  params = jax.jit(gen.init)(jax.random.PRNGKey(0), prior, jnp.zeros((1,)))
  logits = jax.jit(gen.apply)(params, prior, jnp.ones((1,)))
  assert logits.shape == (1, 3, 6, 4)
  # Whatever the net favours (here: skip everywhere by +100), group 0 picks a kernel.
  choices = np.asarray(generator_lib.argmax_choices(logits.at[..., SKIP].add(100.0)))
  assert np.all(choices[..., 0] != SKIP) and np.all(choices[..., 1:] == SKIP)
  probs = generator_lib.gumbel_softmax(jax.random.PRNGKey(1), logits, 5.0)
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)
  assert float(jnp.max(probs[:, :, 0, SKIP])) < 1e-20


def test_temperature_schedule():
  from configs import sgnas_digits_search  # pylint: disable=g-import-not-at-top
  config = sgnas_digits_search.get_config()
  assert generator_lib.temperature(config, 0) == 5.0
  assert generator_lib.temperature(config, 2) == pytest.approx(5.0 * 0.95 ** 2)


def test_kendall_tau():
  assert search.kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
  assert search.kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
  assert search.kendall_tau([1, 2, 3], [1, 1, 1]) == 0.0
  # Tau-b with a tie: (concordant - discordant) / sqrt(n0 (n0 - ties)).
  assert search.kendall_tau([1, 2, 3], [1, 2, 2]) == pytest.approx(2 / np.sqrt(3 * 2))


def _fold_epochs(table, rule='best_avg', bound=0.4):
  """Folds a made-up epoch table through update_kept; returns (kept epochs,
  the epochs at which generator.msgpack was rewritten)."""
  kept, rewritten = {}, []
  for epoch, (loss, accuracy, score) in enumerate(table):
    evaluation = {'total_flops_loss': loss, 'middle_accuracy': accuracy, 'score': score}
    if 'selected' in search.update_kept(kept, epoch, evaluation, rule, bound):
      rewritten.append(epoch)
  return {name: (kept[name]['epoch'] if kept.get(name) else None)
          for name in search.KEPT_GENERATORS}, rewritten


# (total FLOPs loss over the selection grid, middle-target top-1, tau - error)
EPOCH_TABLE = [(2.0, 0.30, 0.50),   # 0: loss too high for best_avg
               (0.9, 0.45, 0.90),   # 1: best tau - error; still too lossy
               (0.35, 0.40, 0.60),  # 2: first under 0.4 -> best_avg
               (0.39, 0.50, 0.70),  # 3: under 0.4 and more accurate -> best_avg
               (0.10, 0.48, 0.80),  # 4: lowest loss -> best_loss, less accurate than 3
               (0.39, 0.50, 0.10),  # 5: ties 3's accuracy: not strictly better, 3 stays
               (0.41, 0.90, 0.20)]  # 6: most accurate but loss 0.41 >= 0.4


def test_kept_generators_on_a_made_up_epoch_table():
  kept, rewritten = _fold_epochs(EPOCH_TABLE)
  assert kept == {'best_avg': 3, 'best_loss': 4, 'tau_minus_error': 1}
  # best_loss fills in until an epoch qualifies for best_avg (epochs 0, 1), then best_avg.
  assert rewritten == [0, 1, 2, 3]
  assert _fold_epochs(EPOCH_TABLE, 'best_loss')[1] == [0, 1, 2, 4]
  assert _fold_epochs(EPOCH_TABLE, 'tau_minus_error')[1] == [0, 1]
  # With no epoch under the bound there is no best_avg; best_loss is selected.
  kept, rewritten = _fold_epochs(EPOCH_TABLE, bound=0.05)
  assert kept['best_avg'] is None and kept['best_loss'] == 4 and rewritten == [0, 1, 2, 4]
  assert search.selected_source({'best_avg': None, 'best_loss': {}}, 'best_avg') == 'best_loss'


def test_selection_grids_are_the_references():
  from configs import sgnas_cifar100_search  # pylint: disable=g-import-not-at-top
  from configs import sgnas_imagenet_search  # pylint: disable=g-import-not-at-top
  cifar, imagenet = sgnas_cifar100_search.get_config(), sgnas_imagenet_search.get_config()
  assert cifar.generator.selection == 'best_avg'
  # The reference's evaluate_generator: range(low, high, 10); generator_validate at (low + high) / 2.
  np.testing.assert_array_equal(search.selection_targets(cifar), [80, 90, 100, 110])
  np.testing.assert_array_equal(search.selection_targets(imagenet), np.arange(270, 450, 10))
  assert search.middle_target(cifar) == 100 and search.middle_target(imagenet) == 360


def test_search_schedules_are_the_references():
  """cifar_config.yml: 200 epochs of batch 512; imagenet_config.yml: 50 of 128; one
  batch size for both phases; the generator's CE smooths labels by 0.1."""
  from configs import sgnas_cifar10_search  # pylint: disable=g-import-not-at-top
  from configs import sgnas_cifar100_search  # pylint: disable=g-import-not-at-top
  from configs import sgnas_imagenet_search  # pylint: disable=g-import-not-at-top
  for module, epochs, batch in ((sgnas_cifar100_search, 200, 512),
                                (sgnas_cifar10_search, 200, 512),
                                (sgnas_imagenet_search, 50, 128)):
    config = module.get_config()
    assert (config.search.epochs, config.search.batch_size) == (epochs, batch)
    assert config.generator.epochs == 50 and config.generator.label_smoothing == 0.1


def test_config_errors_name_the_field():
  from configs import sgnas_digits_search  # pylint: disable=g-import-not-at-top
  config = sgnas_digits_search.get_config()
  config.generator.flops_high = 5.0
  with pytest.raises(search.ConfigError, match=r'generator.flops_low/flops_high=.*0.6'):
    search.validate_config(config)
  config = sgnas_digits_search.get_config()
  config.model.layout = 'mobile'
  with pytest.raises(search.ConfigError, match="model.layout='mobile' is not one of"):
    search.validate_config(config)
  config = sgnas_digits_search.get_config()
  config.search.num_paths = 0
  with pytest.raises(search.ConfigError, match='search.num_paths=0'):
    search.validate_config(config)
  config = sgnas_digits_search.get_config()
  config.generator.prior_pool_file = '/nonexistent/prior_pool.json'
  with pytest.raises(search.ConfigError, match=r"generator.prior_pool_file='/nonexistent/"
                                               r"prior_pool.json' is not a file"):
    search.validate_config(config)
  config = sgnas_digits_search.get_config()
  config.generator.pool_size = 0
  with pytest.raises(search.ConfigError, match='generator.pool_size=0 must be an integer >= 1'):
    search.validate_config(config)
  config = sgnas_digits_search.get_config()
  config.generator.selection = 'best_tau'
  with pytest.raises(search.ConfigError, match=r"generator.selection='best_tau' is not one of "
                     r"\('best_avg', 'best_loss', 'tau_minus_error'\)"):
    search.validate_config(config)


def test_one_device_and_eight_devices_agree():
  """Supernet steps (4 paths, gradients summed, BN statistics over the global
  batch) and generator steps give the same result on 1 and on 8 devices."""
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(compile_options.devices_env(8), PYTHONPATH=repo)
  result = subprocess.run([sys.executable, 'tests/multidevice/sgnas_one_vs_many.py'],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  figures = json.loads(result.stdout.strip().splitlines()[-1])
  assert figures['devices'] == 8
  assert figures['params'] < 1e-5 and figures['batch_stats'] < 1e-5, figures
  # The generator's gradient agrees to rounding (measured: 2e-6 of its scale).
  assert figures['generator_gradient'] < 1e-4 * figures['generator_gradient_scale'], figures
  # Adam moves each weight by ~lr·sign(g), so a rounding-level gradient may flip
  # its sign: after 2 Adam steps (lr 1e-3) weights differ by at most ~2 lr.
  assert figures['generator'] < 2.5e-3 and figures['generator_moved'] > 1e-2, figures
  assert figures['sums'] < 1e-3 and figures['steps'] == 1.0
