"""Many searches in one program (search/seeds.py): N seeds stepped by one vmapped
bilevel step inside the pmap, against N one-seed steps; the seeds.json report."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import digits_search
from configs import drnas_digits_search
from configs import nb201_digits_search
from configs import sgnas_digits_search
from pcdarts_jax import spaces
from pcdarts_jax.data import datasets as data
from pcdarts_jax.run import driver
from pcdarts_jax.run import monitor
from pcdarts_jax.run import parallel
from pcdarts_jax.search import optim
from pcdarts_jax.search import search as loop
from pcdarts_jax.search import seeds
from pcdarts_jax.search import validation as config_validation
from pcdarts_jax.sgnas import search as sgnas_search
from pcdarts_jax.spaces.darts import genotypes
from tests import compile_options

N = 2
STEPS = 3  # Step 0 in the arch warm-up, steps 1 and 2 with arch steps.


def tiny_config(space='darts', relaxation='softmax', architect='first_order',
                seed_data='shared'):
  config = (digits_search if space == 'darts' else nb201_digits_search).get_config()
  config.model.init_channels = 4
  config.model.partial_channels = 2
  if space == 'darts':
    config.model.layers = 1  # One reduction cell (the normal alphas are still searched).
    config.model.steps = 2
    config.model.multiplier = 2
  config.model.relaxation = relaxation
  if relaxation == 'dirichlet':
    config.search.arch_regularizer = 'kl'
  config.search.architect = architect
  if architect != 'first_order':
    config.model.depthwise_impl = 'conv'
  config.search.batch_size = 4
  config.search.epochs = 4  # One step per epoch: lr > 0 for steps 0..2.
  config.search.arch_start_epoch = 1
  config.search.num_seeds = N
  config.search.seed_data = seed_data
  config.seed = 5
  return config


# The steps run STEPS times on 4 images: compiled without LLVM's optimizations
# they compile in about half the CPU time (nb201-gdas-per_seed: 73 -> 38 s); the
# one-seed and N-seed programs are compiled alike. NB-201 first order only: the
# DARTS main run's seeds then differ from its one-seed runs by 8e-5 relative on
# 2 of 108 weights (measured), above its 2e-5 tolerance, so DARTS keeps the
# default, as do the second-order variants (not measured so).
RUN_FEW = compile_options.RUN_FEW


class _CompileOnce:
  """A pmapped step compiled with `options` at its first call."""

  def __init__(self, pmapped, options):
    self.pmapped, self.options, self.compiled = pmapped, options, None

  def __call__(self, *args):
    if self.compiled is None:
      self.compiled = self.pmapped.lower(*args).compile(compiler_options=self.options)
    return self.compiled(*args)


class Setup:
  """The compiled one-seed and N-seed pmapped steps of one config, their
  initial states and the step inputs."""

  def __init__(self, config):
    self.config = config
    self.space = spaces.of_config(config)
    self.train_set, self.arch_set = data.search_splits(config.data)
    steps_per_epoch = 1
    weight_tx = optim.weight_optimizer(config, steps_per_epoch)
    arch_tx = optim.arch_optimizer(config)
    sample = data.normalize(self.train_set.images[:1], config.data.mean, config.data.std)
    self.model = self.space.build_supernet(config)
    step_model = self.space.build_supernet(config, parallel.AXIS)
    bilevel = loop.guard_nonfinite(
        loop.make_bilevel_step(step_model, config, steps_per_epoch, weight_tx, arch_tx,
                               parallel.AXIS), skip=config.search.skip_nonfinite)
    first_order_nb201 = (config.model.space == 'nb201' and
                         config.search.architect == 'first_order')
    options = RUN_FEW if first_order_nb201 else None
    self.one_step = _CompileOnce(parallel.pmap_step(bilevel, in_axes=(0, 0, 0, None),
                                                    donate_state=False), options)
    self.seeds_step = _CompileOnce(
        parallel.pmap_step(seeds.vmap_step(bilevel, config.search.seed_data),
                           in_axes=(0, 0, 0, None), donate_state=False), options)
    self.create = lambda rng: loop.create_search_state(self.model, config, rng, sample,
                                                       weight_tx, arch_tx)
    self.init_rngs, self.step_keys, _ = seeds.seed_keys(config)
    self.states = seeds.create_states(self.create, self.init_rngs)

  def batches(self, step, index):
    """Seed `index`'s (train, arch) batches of `step`, split over one device."""
    b = self.config.search.batch_size
    start = (step + (index * STEPS if self.config.search.seed_data == 'per_seed' else 0)) * b
    cut = lambda ds: parallel.shard({'image': ds.images[start:start + b],
                                     'label': ds.labels[start:start + b]}, 1)
    return cut(self.train_set), cut(self.arch_set)

  def run_seeds(self):
    state, history = parallel.replicate(self.states, jax.local_devices()[:1]), []
    for t in range(STEPS):
      if self.config.search.seed_data == 'shared':
        train, arch = self.batches(t, 0)
      else:
        per_seed = [self.batches(t, i) for i in range(N)]
        train = seeds.stack_batches([p[0] for p in per_seed], axis=1)
        arch = seeds.stack_batches([p[1] for p in per_seed], axis=1)
      state, metrics = self.seeds_step(state, train, arch, seeds.fold_in(self.step_keys, t))
      history.append(seeds.host_sums(metrics))
    return parallel.unreplicate(state), history

  def run_one(self, index):
    """The one-seed search with seed config.seed + index, from its own keys."""
    init_rng, step_key, _ = seeds.run_keys(self.config.seed + index)
    state = parallel.replicate(self.create(init_rng), jax.local_devices()[:1])
    history = []
    for t in range(STEPS):
      train, arch = self.batches(t, index)
      state, metrics = self.one_step(state, train, arch, jax.random.fold_in(step_key, t))
      history.append({k: float(v[0]) for k, v in jax.device_get(metrics).items()})
    return parallel.unreplicate(state), history


_SETUPS = {}


def setup_of(**kwargs):
  """One Setup per config for the whole module (the steps compile once)."""
  key = tuple(sorted(kwargs.items()))
  if key not in _SETUPS:
    _SETUPS[key] = Setup(tiny_config(**kwargs))
  return _SETUPS[key]


@pytest.fixture(scope='module')
def main_run():
  """DARTS space, softmax, first order, shared data: the N-seed run and the
  one-seed runs of each seed."""
  setup = setup_of()
  return setup, setup.run_seeds(), [setup.run_one(i) for i in range(N)]


def _assert_close(seeds_state, one_state, what, rtol):
  a = jax.tree.leaves(jax.device_get(seeds_state))
  b = jax.tree.leaves(jax.device_get(one_state))
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64),
                               rtol=rtol, atol=rtol / 10, err_msg=what)


def _check_equal(setup, seeds_run, one_runs):
  state, history = seeds_run
  assert int(state.step) == STEPS and np.ndim(state.step) == 0
  # Float tolerance: vmap may reorder sums. DARTS' finite-difference second order
  # divides a difference of two gradients by 2 eps (eps = 0.01 / |v|), which
  # scales those rounding differences up: about 1e-4 relative seen on its weights.
  rtol = 1e-3 if setup.config.search.architect == 'second_order' else 2e-5
  for i, (one_state, one_history) in enumerate(one_runs):
    _assert_close(seeds.seed_state(state, i), one_state, f'seed {i}', rtol)
    for t in range(STEPS):
      for k, v in one_history[t].items():
        np.testing.assert_allclose(history[t][i][k], v, rtol=2e-5, atol=1e-5,
                                   err_msg=f'seed {i} step {t} {k}')


def test_each_seed_equals_its_one_seed_search(main_run):
  setup, seeds_run, one_runs = main_run
  _check_equal(setup, seeds_run, one_runs)
  # The arch moved (steps 1 and 2), so the comparison covers the arch steps.
  for i in range(N):
    start = seeds.seed_state(setup.states, i).arch
    end = seeds.seed_state(seeds_run[0], i).arch
    assert all(not np.allclose(start[k], end[k]) for k in start), i
    assert seeds_run[1][1][i]['arch_count'] == setup.config.search.batch_size


def test_two_seeds_differ(main_run):
  setup, (state, history), _ = main_run
  first, second = seeds.seed_state(state, 0), seeds.seed_state(state, 1)
  for name in ('params', 'batch_stats', 'arch', 'weight_opt_state', 'arch_opt_state'):
    a, b = jax.tree.leaves(getattr(first, name)), jax.tree.leaves(getattr(second, name))
    assert any(not np.array_equal(x, y) for x, y in zip(a, b)), name
  # Same batches, different weights: different losses.
  assert history[-1][0]['train_loss_sum'] != history[-1][1]['train_loss_sum']


def _conds(jaxpr):
  """Every cond equation of `jaxpr`, nested programs included."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'cond':
      found.append(eqn)
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        inner = getattr(sub, 'jaxpr', sub)
        if hasattr(inner, 'eqns'):
          found.extend(_conds(inner))
  return found


def _size(jaxpr):
  return sum(1 + sum(_size(getattr(s, 'jaxpr', s)) for v in e.params.values()
                     for s in (v if isinstance(v, (tuple, list)) else (v,))
                     if hasattr(getattr(s, 'jaxpr', s), 'eqns'))
             for e in jaxpr.eqns)


def test_the_warmup_gate_stays_a_conditional(main_run):
  """The step is one scalar inside the vmap, so the warm-up switch stays a
  lax.cond whose arch branch is skipped (a batched predicate would turn it into
  a select that runs the arch pass on every step)."""
  setup, (state, history), _ = main_run
  assert history[0][0]['arch_count'] == history[0][1]['arch_count'] == 0.0
  for i in range(N):
    np.testing.assert_array_equal(
        seeds.seed_state(setup.states, i).arch['alphas_normal'],
        setup.states.arch['alphas_normal'][i])
  config = setup.config
  train, arch = setup.batches(0, 0)
  step_model = setup.space.build_supernet(config, parallel.AXIS)
  raw = loop.make_bilevel_step(step_model, config, 1, optim.weight_optimizer(config, 1),
                               optim.arch_optimizer(config), parallel.AXIS)
  vmapped = jax.pmap(seeds.vmap_step(loop.guard_nonfinite(raw, skip=False)),
                     axis_name=parallel.AXIS, in_axes=(0, 0, 0, None),
                     devices=jax.local_devices()[:1])
  jaxpr = jax.make_jaxpr(vmapped)(parallel.replicate(setup.states, jax.local_devices()[:1]),
                                  train, arch, seeds.fold_in(setup.step_keys, 0)).jaxpr
  # The arch branch runs a forward/backward pass: far more than a select.
  gated = [c for c in _conds(jaxpr) if max(_size(b.jaxpr) for b in c.params['branches']) > 200]
  assert gated, 'no conditional holds the arch pass'


@pytest.mark.parametrize('kwargs', [
    pytest.param(dict(relaxation='dirichlet', architect='second_order', seed_data='per_seed'),
                 marks=pytest.mark.slow, id='darts-dirichlet-second_order-per_seed'),
    pytest.param(dict(space='nb201', relaxation='gumbel', architect='second_order_exact'),
                 marks=pytest.mark.slow, id='nb201-gumbel-exact'),
    pytest.param(dict(space='nb201', relaxation='gdas', seed_data='per_seed'),
                 id='nb201-gdas-per_seed'),
])
def test_architects_relaxations_and_data(kwargs):
  """The other architects (second order: minutes to compile here, -m slow),
  relaxations, the NB-201 space and per-seed data."""
  setup = setup_of(**kwargs)
  seeds_run = setup.run_seeds()
  _check_equal(setup, seeds_run, [setup.run_one(i) for i in range(N)])


def _toy_step(state, train_batch, arch_batch, rng):
  """Scales the weights; a seed whose weight is negative gets a NaN loss."""
  del arch_batch, rng
  loss = jnp.where(state.params['w'][0] < 0, jnp.nan, 1.0)
  sums = {'train_loss_sum': loss, 'train_count': jnp.float32(1), 'arch_loss_sum': 0.0 * loss,
          'arch_count': jnp.float32(0)}
  return state.replace(step=state.step + 1, params={'w': state.params['w'] * train_batch}), sums


@pytest.mark.parametrize('skip', [True, False])
def test_a_nonfinite_seed_is_guarded_alone(skip):
  """The guard works per seed: a seed's non-finite step is dropped (and recorded)
  while the others step; the shared step advances with the seeds that stepped."""
  one = lambda w: loop.SearchState(
      step=jnp.zeros((), jnp.int32), params={'w': jnp.asarray(w, jnp.float32)}, batch_stats={},
      arch={}, weight_opt_state=(), arch_opt_state=(), nonfinite_steps=jnp.zeros((), jnp.int32),
      first_nonfinite_step=jnp.full((), -1, jnp.int32),
      first_nonfinite_losses=jnp.zeros((2,), jnp.float32))
  state = seeds.stack_states([one([1.0, 1.0]), one([-1.0, 1.0]), one([2.0, 1.0])])
  step = jax.jit(seeds.vmap_step(loop.guard_nonfinite(_toy_step, skip=skip), flatten=True))
  for _ in range(2):
    state, sums = step(state, jnp.float32(3), None, seeds.fold_in(jnp.zeros((3, 2), jnp.uint32), 0))
  assert int(state.step) == 2 and np.ndim(state.step) == 0
  np.testing.assert_array_equal(state.params['w'][:, 0], [9.0, -1.0, 18.0])
  np.testing.assert_array_equal(state.nonfinite_steps, [0, 1 if not skip else 2, 0])
  np.testing.assert_array_equal(state.first_nonfinite_step, [-1, 0, -1])
  assert seeds.first_nonfinite(jax.device_get(state)) == 1
  assert float(sums['nonfinite']) == (1.0 if skip else 0.0)  # Frozen: counted once.
  assert float(sums['seed_1/nonfinite']) == float(sums['nonfinite'])


# --------------------------------------------------------------------------
# Config.


def _error(config):
  with pytest.raises(config_validation.ConfigError) as info:
    config_validation.validate_search_config(config)
  message = str(info.value)
  assert '\n' not in message
  return message


def test_num_seeds_defaults_to_one_and_validates():
  config = digits_search.get_config()
  assert config.search.num_seeds == 1 and config.search.seed_data == 'shared'
  config.search.num_seeds = 4
  config.search.seed_data = 'per_seed'
  config_validation.validate_search_config(config)
  config.search.num_seeds = 0
  assert 'search.num_seeds=0' in _error(config)
  config.search.num_seeds = 2
  config.search.seed_data = 'each'
  assert 'search.seed_data' in _error(config) and 'per_seed' in _error(config)


def test_progressive_stages_and_sgnas_refuse_many_seeds():
  config = drnas_digits_search.get_config()
  config.search.num_seeds = 2
  message = _error(config)
  assert 'search.num_seeds=2' in message and 'progressive' in message
  config.search.num_seeds = 1
  config_validation.validate_search_config(config)
  sgnas = sgnas_digits_search.get_config()
  assert sgnas.search.num_seeds == 1
  sgnas_search.validate_config(sgnas)
  sgnas.search.num_seeds = 2
  with pytest.raises(config_validation.ConfigError) as info:
    sgnas_search.validate_config(sgnas)
  assert 'search.num_seeds=2' in str(info.value) and 'SGNAS' in str(info.value)
  assert '\n' not in str(info.value)


def test_seed_config_is_the_one_seed_run():
  config = tiny_config()
  one = seeds.seed_config(config, 1)
  assert one.seed == config.seed + 1 and one.search.num_seeds == 1
  assert config.search.num_seeds == N  # The run's config is untouched.
  keys = [np.asarray(k) for k in seeds.seed_keys(config)]
  for i in range(N):
    for stacked, single in zip(keys, seeds.run_keys(config.seed + i)):
      np.testing.assert_array_equal(stacked[i], single)


# --------------------------------------------------------------------------
# Outputs.


def _darts(*nodes):
  """A DARTS genotype whose normal cell has `nodes` (pairs of (op, input)) and
  whose reduce cell is all max pools on inputs 0, 1."""
  normal = [gene for node in nodes for gene in node]
  reduce = [('max_pool_3x3', 0), ('max_pool_3x3', 1)] * len(nodes)
  concat = list(range(2, 2 + len(nodes)))
  return genotypes.Genotype(normal=normal, normal_concat=concat, reduce=reduce,
                            reduce_concat=list(concat))


def test_agreement_counts_on_a_hand_made_case():
  space = spaces.get('darts')
  runs = [
      _darts([('sep_conv_3x3', 0), ('skip_connect', 1)], [('sep_conv_3x3', 2), ('dil_conv_3x3', 0)]),
      _darts([('sep_conv_3x3', 0), ('sep_conv_5x5', 1)], [('dil_conv_3x3', 0), ('sep_conv_3x3', 2)]),
      _darts([('skip_connect', 1), ('sep_conv_3x3', 0)], [('sep_conv_3x3', 1), ('sep_conv_3x3', 2)]),
  ]
  report = seeds.agreement([space.genotype_edges(g) for g in runs])
  edges = {row['edge']: row for row in report['normal']['edges']}
  assert sorted(edges) == ['0->2', '0->3', '1->2', '1->3', '2->3']
  assert edges['0->2'] == {'edge': '0->2', 'node': 2, 'input': 0, 'chosen': 3,
                           'op': 'sep_conv_3x3', 'op_agree': 3, 'ops': {'sep_conv_3x3': 3}}
  assert (edges['1->2']['chosen'], edges['1->2']['op'], edges['1->2']['op_agree']) == (
      3, 'skip_connect', 2)
  assert edges['1->2']['ops'] == {'sep_conv_5x5': 1, 'skip_connect': 2}
  assert (edges['0->3']['chosen'], edges['0->3']['op'], edges['0->3']['op_agree']) == (
      2, 'dil_conv_3x3', 2)
  assert (edges['2->3']['chosen'], edges['2->3']['op_agree']) == (3, 3)
  assert (edges['1->3']['chosen'], edges['1->3']['op']) == (1, 'sep_conv_3x3')
  nodes = report['normal']['nodes']
  assert nodes == [{'node': 2, 'inputs': [0, 1], 'inputs_agree': 3},
                   {'node': 3, 'inputs': [0, 2], 'inputs_agree': 2}]
  reduce = report['reduce']
  assert all(row['chosen'] == 3 and row['op_agree'] == 3 for row in reduce['edges'])


def test_nb201_agreement_covers_every_edge():
  space = spaces.get('nb201')
  a = space.parse('|skip_connect~0|+|nor_conv_3x3~0|none~1|+|avg_pool_3x3~0|none~1|none~2|')
  b = space.parse('|skip_connect~0|+|nor_conv_1x1~0|none~1|+|avg_pool_3x3~0|none~1|none~2|')
  report = seeds.agreement([space.genotype_edges(g) for g in (a, b, b)])['cell']
  edges = {row['edge']: row for row in report['edges']}
  assert len(edges) == 6 and all(row['chosen'] == 3 for row in edges.values())
  assert (edges['0->2']['op'], edges['0->2']['op_agree']) == ('nor_conv_1x1', 2)
  assert edges['0->1']['op_agree'] == 3
  assert [n['inputs_agree'] for n in report['nodes']] == [3, 3, 3]


def test_seeds_json_fields_choice_and_picture(tmp_path):
  config = tiny_config()
  config.search.num_seeds = 3
  space = spaces.get('darts')
  runs = [_darts([('sep_conv_3x3', 0), ('skip_connect', 1)]),
          _darts([('sep_conv_3x3', 0), ('skip_connect', 1)]),
          _darts([('dil_conv_5x5', 0), ('skip_connect', 1)])]
  finals = [{'epoch': 4, 'valid': {'loss': 0.5, 'accuracy': 0.81}, 'train': {}, 'arch': {}},
            {'epoch': 4, 'valid': {'loss': 0.4, 'accuracy': 0.86}, 'train': {}, 'arch': {}},
            {'epoch': 4, 'valid': {'loss': 0.3, 'accuracy': 0.86}, 'train': {}, 'arch': {}}]
  summary = seeds.report(config, finals, [space.genotype_to_dict(g) for g in runs],
                         [space.genotype_str(g) for g in runs],
                         [space.genotype_edges(g) for g in runs])
  assert summary['chosen'] == 1 and summary['chosen_seed'] == config.seed + 1  # Tie: lower.
  assert summary['seeds'] == [5, 6, 7] and summary['num_seeds'] == 3
  assert summary['distinct_genotypes'] == 2 and summary['seed_data'] == 'shared'
  assert summary['valid_accuracy']['max'] == 0.86 and summary['valid_accuracy']['min'] == 0.81
  assert [s['dir'] for s in summary['per_seed']] == ['seed_0', 'seed_1', 'seed_2']
  assert summary['per_seed'][2]['genotype'] == space.genotype_to_dict(runs[2])
  assert summary['per_seed'][0]['final']['valid']['accuracy'] == 0.81
  edge = summary['agreement']['normal']['edges'][0]
  assert (edge['edge'], edge['op'], edge['op_agree'], edge['chosen']) == (
      '0->2', 'sep_conv_3x3', 2, 3)
  path = seeds.write_report(str(tmp_path), summary)
  assert json.load(open(path)) == json.loads(json.dumps(summary))
  picture = seeds.agreement_picture(summary, str(tmp_path / 'plots' / seeds.AGREEMENT_PICTURE))
  with open(picture, 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'


def test_flattened_sums_carry_every_seed():
  sums = {'train_loss_sum': np.array([1.0, 2.0, 4.0]), 'nonfinite': np.array([0.0, 1.0, 0.0])}
  flat = {k: float(v) for k, v in jax.jit(seeds.flatten_sums)(sums).items()}
  assert flat['train_loss_sum'] == 7.0 and flat['nonfinite'] == 1.0
  assert flat['seed_2/train_loss_sum'] == 4.0
  assert seeds.unflatten_sums(flat, 3) == [
      {'train_loss_sum': 1.0, 'nonfinite': 0.0}, {'train_loss_sum': 2.0, 'nonfinite': 1.0},
      {'train_loss_sum': 4.0, 'nonfinite': 0.0}]


class _Counter:
  """A host batch iterator of `start`, `start` + 1, ... (batch 4, two fields)."""

  steps_per_epoch = 7

  def __init__(self, start):
    self.position = start

  def state(self):
    return self.position

  def restore(self, position):
    self.position = position

  def __next__(self):
    self.position += 1
    base = np.arange(4) + 100 * self.position
    return {'image': base[:, None] * np.ones((4, 3)), 'label': base}


def test_seed_streams_land_as_devices_by_seeds():
  streams = seeds.SeedStreams([_Counter(0), _Counter(10)], devices=2)
  batch = next(streams)
  assert streams.state() == [1, 11] and streams.steps_per_epoch == 7
  on_devices = parallel.shard(batch, 2)  # What DevicePrefetch does with it.
  assert on_devices['label'].shape == (2, 2, 2) and on_devices['image'].shape == (2, 2, 2, 3)
  # Device d, seed i: the d-th half of seed i's batch.
  np.testing.assert_array_equal(on_devices['label'][1, 0], [102, 103])
  np.testing.assert_array_equal(on_devices['label'][0, 1], [1100, 1101])
  streams.restore([5, 6])
  assert [int(x) for x in next(streams)['label'][:2, 0]] == [600, 700]  # Device 0: seeds 0, 1.


def test_choice_ranks_missing_and_nonfinite_last():
  assert seeds.choose([None, float('nan'), 0.1]) == 2
  assert seeds.choose([0.5, 0.7, 0.7]) == 1
  assert seeds.choose([None, None]) == 0


def test_per_seed_writers_use_the_one_seed_formats(tmp_path):
  space = spaces.get('darts')
  genotype = _darts([('sep_conv_3x3', 0), ('skip_connect', 1)])
  paths = seeds.seed_workdir(str(tmp_path), 1, loop.LOG_NAME)
  assert paths.root == os.path.join(str(tmp_path), 'seed_1')
  arch = {'alphas_normal': np.ones((2, 8), np.float32)}
  seeds.write_final(paths, space.genotype_to_dict(genotype), arch)
  for epoch in (1, 2, 3):
    seeds.append_record(paths, {'epoch': epoch, 'genotype': space.genotype_to_dict(genotype)})
  driver.keep_epochs(paths.jsonl, 2)
  with open(paths.jsonl) as f:
    assert [json.loads(line)['epoch'] for line in f] == [1, 2]
  assert genotypes.load_genotype(paths.genotype) == genotype
  np.testing.assert_array_equal(np.load(paths.arch)['alphas_normal'], arch['alphas_normal'])
  assert seeds.scalars_of(3, {'valid/accuracy': 0.5}) == {'seed_3/valid/accuracy': 0.5}


# --------------------------------------------------------------------------
# Benchmark.


def _benchmark(*args):
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=repo, JAX_PLATFORMS='cpu')
  return subprocess.run(
      [sys.executable, '-m', 'launch.benchmark', '--config=configs/digits_search.py',
       '--config.model.init_channels=4', '--config.model.layers=1', *args],
      cwd=repo, env=env, capture_output=True, text=True, timeout=900)


def test_benchmark_measures_the_vmapped_step_per_search():
  result = _benchmark('--num_seeds=2', '--batch_size=4', '--steps=2', '--warmup=1',
                      '--measure=bilevel_step,program')
  assert result.returncode == 0, result.stderr[-3000:]
  lines = [json.loads(l) for l in result.stdout.splitlines() if l.startswith('{')]
  assert [r['measurement'] for r in lines] == ['bilevel_step', 'program']
  bilevel, lowered = lines
  assert bilevel['num_seeds'] == lowered['num_seeds'] == 2
  assert bilevel['ms_per_search_step'] == pytest.approx(bilevel['ms_per_step_median'] / 2)
  assert bilevel['search_images_per_second'] == pytest.approx(
      2 * 4 / (bilevel['ms_per_step_median'] / 1e3))
  assert '2 searches in' in result.stderr
  refused = _benchmark('--num_seeds=2', '--measure=weight_step')
  assert refused.returncode == 2
  assert '--measure=weight_step' in refused.stderr and 'num_seeds=2' in refused.stderr


# --------------------------------------------------------------------------
# The launcher: a 2-seed search, killed and resumed (as tests/test_resume.py).

RUN_EPOCHS, RUN_STEPS_PER_EPOCH = 2, 11  # 750 weight images / batch 64.
# One cell (a reduction cell; the normal alphas are still searched): CI time.
RUN = ['--config=configs/digits_search.py', '--config.model.init_channels=4',
       '--config.model.layers=1', f'--config.search.epochs={RUN_EPOCHS}',
       '--config.search.arch_start_epoch=1', '--config.checkpoint.every_steps=3',
       '--config.monitor.progress=lines', f'--config.search.num_seeds={N}']


@pytest.fixture(scope='module')
def run_env(tmp_path_factory):
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  cache = tmp_path_factory.mktemp('xla_cache')
  return repo, dict(os.environ, PYTHONPATH=repo, JAX_PLATFORMS='cpu',
                    JAX_COMPILATION_CACHE_DIR=os.environ.get('JAX_COMPILATION_CACHE_DIR', str(cache)),
                    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')


def _search(run_env, workdir, wait=True):
  repo, env = run_env
  command = [sys.executable, '-m', 'launch.search', f'--workdir={workdir}', *RUN]
  if wait:
    return subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True,
                          timeout=900)
  return subprocess.Popen(command, cwd=repo, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _npz(path):
  with np.load(path) as f:
    return {k: f[k] for k in f.files}


@pytest.fixture(scope='module')
def seeds_reference(run_env, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('seeds_reference') / 'run')
  result = _search(run_env, workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir, result.stdout


def test_a_two_seed_search_writes_every_seed_and_the_chosen_one(seeds_reference):
  workdir, stdout = seeds_reference
  with open(os.path.join(workdir, seeds.SEEDS_FILE)) as f:
    summary = json.load(f)
  assert summary['num_seeds'] == N and summary['seeds'] == [2, 3]  # digits: seed 2.
  finals = [s['final']['valid']['accuracy'] for s in summary['per_seed']]
  assert summary['chosen'] == seeds.choose(finals)
  chosen = os.path.join(workdir, f'seed_{summary["chosen"]}')
  for i in range(N):
    seed_dir = os.path.join(workdir, f'seed_{i}')
    with open(os.path.join(seed_dir, loop.LOG_NAME)) as f:
      records = [json.loads(line) for line in f]
    assert [r['epoch'] for r in records] == list(range(1, RUN_EPOCHS + 1))
    assert records[-1]['valid']['accuracy'] == finals[i]
    assert genotypes.load_genotype(os.path.join(seed_dir, 'genotype.json')) == \
        genotypes.from_dict(summary['per_seed'][i]['genotype'])
    assert sorted(_npz(os.path.join(seed_dir, 'arch.npz'))) == sorted(genotypes.ARCH_NAMES)
  # The run's genotype and arch values are the chosen seed's.
  assert genotypes.load_genotype(os.path.join(workdir, 'genotype.json')) == \
      genotypes.load_genotype(os.path.join(chosen, 'genotype.json'))
  root, best = _npz(os.path.join(workdir, 'arch.npz')), _npz(os.path.join(chosen, 'arch.npz'))
  for name in best:
    np.testing.assert_array_equal(root[name], best[name])
  assert sum(row['chosen'] for row in summary['agreement']['normal']['edges']) == \
      N * 2 * digits_search.get_config().model.steps  # Two kept edges per node and seed.
  assert os.path.exists(os.path.join(workdir, 'plots', seeds.AGREEMENT_PICTURE))
  tags = monitor.read_scalars(os.path.join(workdir, 'tensorboard'))
  for i in range(N):
    assert sorted(tags[f'seed_{i}/valid/accuracy']) == list(range(1, RUN_EPOCHS + 1))
  assert 'seed' in stdout


# CI time (~50 s, another two launches): test_resume resumes a one-seed search
# bitwise and the checkpoint holds the seeds' stacked state alike; -m slow runs it.
@pytest.mark.slow
def test_sigkill_then_resume_is_bitwise_identical_with_two_seeds(run_env, seeds_reference,
                                                                  tmp_path):
  reference, _ = seeds_reference
  workdir = str(tmp_path / 'run')
  process = _search(run_env, workdir, wait=False)
  # Checkpoint 15 is mid-epoch 2, with arch steps on: kill right after it.
  directory = os.path.join(workdir, 'checkpoints', '15')
  deadline = time.time() + 900
  while not os.path.isdir(directory):
    assert process.poll() is None, process.communicate()[1][-3000:]
    assert time.time() < deadline, 'no checkpoint 15'
    time.sleep(0.02)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert not os.path.exists(os.path.join(workdir, seeds.SEEDS_FILE))
  latest = max(int(n) for n in os.listdir(os.path.join(workdir, 'checkpoints')) if n.isdigit())
  assert latest < RUN_EPOCHS * RUN_STEPS_PER_EPOCH

  result = _search(run_env, workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'resuming from checkpoint {latest}' in result.stdout
  for sub in ['.'] + [f'seed_{i}' for i in range(N)]:
    got, want = _npz(os.path.join(workdir, sub, 'arch.npz')), \
        _npz(os.path.join(reference, sub, 'arch.npz'))
    for name in want:  # Bitwise: same data order, augmentations and arithmetic.
      np.testing.assert_array_equal(got[name], want[name], err_msg=f'{sub} {name}')
    with open(os.path.join(workdir, sub, 'genotype.json')) as f, \
        open(os.path.join(reference, sub, 'genotype.json')) as g:
      assert f.read() == g.read()
  for i in range(N):
    with open(os.path.join(workdir, f'seed_{i}', loop.LOG_NAME)) as f:
      assert [json.loads(line)['epoch'] for line in f] == list(range(1, RUN_EPOCHS + 1))
  with open(os.path.join(workdir, seeds.SEEDS_FILE)) as f, \
      open(os.path.join(reference, seeds.SEEDS_FILE)) as g:
    assert json.load(f) == json.load(g)
