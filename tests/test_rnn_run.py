"""The DARTS recurrent cell method on the epoch driver (pcdarts_jax/rnn): padded
windows compute what exact ones do, the window schedule, the space adapter, config
errors, and short runs on the offline pydoc corpus: a search through
`search(config, workdir)` (outputs, validation perplexity), resume after SIGKILL bit
for bit, training with the ASGD switch and the best checkpoint, 1 vs 2 devices."""

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

from configs import rnn_ptb_search
from configs import rnn_ptb_train
from configs import rnn_pydoc_search
from pcdarts_jax import spaces
from pcdarts_jax.rnn import lm
from pcdarts_jax.rnn import search as rnn_search
from pcdarts_jax.rnn import train as rnn_train
from pcdarts_jax.run import checkpoint
from pcdarts_jax.run import config_fields
from pcdarts_jax.run import driver
from pcdarts_jax.spaces.rnn import corpus as corpus_lib
from pcdarts_jax.spaces.rnn import genotypes
from pcdarts_jax.spaces.rnn import model as model_lib
from pcdarts_jax.spaces.rnn import steps
from tests import compile_options

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------- padded windows


def _tiny_model(genotype=None, **dropouts):
  config = rnn_pydoc_search.get_config()
  config.model.emsize = config.model.nhid = 8
  config.model.steps = 2
  config.model.update(dropout=0.3, dropouth=0.2, dropoutx=0.3, dropouti=0.1, dropoute=0.1)
  config.model.update(**dropouts)
  return model_lib.build_model(50, config.model, genotype)


@pytest.mark.parametrize('genotype', [None, genotypes.make([('relu', 0), ('sigmoid', 1)])],
                         ids=['search', 'genotype'])
def test_a_padded_window_computes_what_the_exact_window_does(genotype):
  """Loss (NLL + AR + TAR), its gradients, the next hidden state and the BatchNorm
  statistics of a window of 5 steps padded to 8 equal those of the 5 steps alone."""
  m = _tiny_model(genotype)
  variables = model_lib.init_variables(m, jax.random.PRNGKey(0))
  params, arch = variables['params'], variables.get('arch')
  stats = variables.get('batch_stats', {})
  rng = np.random.default_rng(0)
  x, y = rng.integers(0, 50, (2, 3, 8))
  hidden = jnp.asarray(rng.normal(size=(3, 8)), jnp.float32)
  key = jax.random.PRNGKey(1)

  def loss(p, a, tokens, targets, length):
    return steps.lm_loss(m, p, a, stats, tokens, targets, hidden, key, True, 0.5, 0.5, length)

  grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True),
                 compiler_options=compile_options.RUN_FEW)
  (exact, (nll, h, bs)), g = grad(params, arch, x[:, :5], y[:, :5], None)
  (padded, (nll_p, h_p, bs_p)), g_p = grad(params, arch, x, y, jnp.int32(5))
  np.testing.assert_allclose(padded, exact, rtol=1e-6)
  np.testing.assert_allclose(nll_p, nll, rtol=1e-6)
  for a, b in zip(jax.tree.leaves((h_p, bs_p, g_p)), jax.tree.leaves((h, bs, g))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  # Evaluation: the padded steps add nothing to the summed NLL.
  evaluate = jax.jit(steps.make_eval_step(m), compiler_options=compile_options.RUN_FEW)
  if genotype is None:  # Warm statistics: the search model's BN right after a step.
    stats = bs
  s, h = evaluate(params, arch, stats, hidden, x[:, :5], y[:, :5], None)
  s_p, h_p = evaluate(params, arch, stats, hidden, x, y, jnp.int32(5))
  np.testing.assert_allclose(s_p, s, rtol=1e-6)
  np.testing.assert_allclose(h_p, h, rtol=1e-6)


def test_windows_follow_from_seed_and_epoch_and_pad_to_buckets():
  a = lm.epoch_windows(3, 0, 400, 10, 5, True)
  assert a == lm.epoch_windows(3, 0, 400, 10, 5, True)
  assert a != lm.epoch_windows(3, 1, 400, 10, 5, True)
  assert a != lm.epoch_windows(4, 0, 400, 10, 5, True)
  starts = [i for i, _ in a]
  assert starts[0] == 0 and all(b - s == n for (s, n), b in zip(a, starts[1:]))
  assert starts[-1] < 398 <= starts[-1] + a[-1][1]   # The reference's `while i < N - 2`.
  assert all(5 <= n <= 15 for _, n in a)
  no_jitter = {n for _, n in lm.epoch_windows(3, 0, 4000, 10, 5, False)}
  assert no_jitter == {10, 5}
  assert [lm.padded_length(n, 8, 15) for n in (1, 8, 9, 15)] == [8, 8, 15, 15]
  assert [lm.padded_length(n, 0, 15) for n in (3, 15)] == [3, 15]
  assert lm.padded_length(17, 35, 35) == 35
  stream = np.arange(40).reshape(2, 20)
  x, y, length = lm.window(stream, 15, 10, 8, 15)  # Capped at the end: 4 real steps.
  assert length == 4 and x.shape == (2, 8) and y.shape == (2, 8)
  np.testing.assert_array_equal(x[:, :4], stream[:, 15:19])
  np.testing.assert_array_equal(y[:, :4], stream[:, 16:20])


def test_driver_epochs_of_differing_lengths():
  phase = driver.Phase('x', 'log', None, 3, 0, 1, 0, None, None,
                       epoch_steps=lambda e: (4, 2, 5)[e])
  assert [phase.first_step(e) for e in range(4)] == [0, 4, 6, 11]
  assert [phase.epoch_of(s) for s in range(12)] == [0] * 4 + [1] * 2 + [2] * 5 + [3]
  fixed = driver.Phase('x', 'log', None, 3, 4, 1, 0, None, None)
  assert [fixed.steps_in(e) for e in range(3)] == [4, 4, 4]
  assert [fixed.epoch_of(s) for s in (0, 3, 4, 12)] == [0, 0, 1, 3]


# ----------------------------------------------------------- the space


def test_space_adapter():
  space = spaces.get('rnn')
  config = rnn_pydoc_search.get_config()
  model = space.build_supernet(config, ntokens=30)
  assert model.genotype is None and model.ntoken == 30
  arch = {'alphas': np.random.default_rng(0).normal(size=(36, 5))}
  genotype = space.derive(arch, model)
  assert genotype == genotypes.derive(arch['alphas'])
  assert space.genotype_from_dict(space.genotype_to_dict(genotype)) == genotype
  assert space.genotype_str(genotype) == genotypes.genotype_str(genotype)
  scalars = space.arch_scalars(arch, model)
  assert len(scalars) == 1 + 36 * 5 and 'alpha_recurrent/edge_0->1/relu' in scalars
  weights = [scalars[f'alpha_recurrent/edge_2->3/{op}'] for op in genotypes.PRIMITIVES]
  assert sum(weights) == pytest.approx(1.0)
  assert space.genotype_edges(genotypes.DARTS_V2)['recurrent'][:2] == [(1, 0, 'sigmoid'),
                                                                      (2, 1, 'relu')]
  network = space.build_network(genotypes.DARTS_V1, config, ntokens=30)
  assert network.genotype == genotypes.DARTS_V1
  with pytest.raises(ValueError, match='partial channels'):
    space.build_supernet(config, partial_channels=4, ntokens=30)


def test_space_pictures(tmp_path):
  space = spaces.get('rnn')
  arch = {'alphas': np.random.default_rng(0).normal(size=(36, 5))}
  path = space.heatmap(arch, None, str(tmp_path / 'arch.png'), title='epoch 1')
  with open(path, 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  drawn = space.draw(genotypes.DARTS_V2, str(tmp_path / 'cell'))
  assert drawn[0].endswith('cell_recurrent.gv')
  with open(drawn[0]) as f:
    source = f.read()
  assert 'sigmoid' in source and 'h_{t}' in source


# ------------------------------------------------------- config errors


@pytest.mark.parametrize('field, value, message', [
    ('data.name', 'wiki103', "data.name='wiki103' is not one of ('pydoc', 'ptb', 'wikitext2')"),
    ('model.nhid', 20, 'model.emsize=32 must equal model.nhid=20'),
    ('model.dropoutx', 1.0, 'model.dropoutx=1.0 must be a number in [0, 1)'),
    ('search.architect', 'exact', "search.architect='exact' is not one of ('first_order', "),
    ('search.bptt', 1, 'search.bptt=1 must be an integer >= 2'),
    ('search.seq_len_bucket', -1, 'search.seq_len_bucket=-1 must be an integer >= 0'),
    ('search.arch_beta2', 1.0, 'search.arch_beta2=1.0 must be a number in [0, 1)'),
    ('monitor.progress', 'dots', "monitor.progress='dots' is not one of"),
])
def test_search_config_errors_name_the_field(field, value, message):
  config = rnn_pydoc_search.get_config()
  section, name = field.split('.')
  config[section][name] = value
  with pytest.raises(config_fields.ConfigError) as error:
    rnn_search.validate_search_config(config)
  assert message in str(error.value) and '\n' not in str(error.value)


def test_config_errors_of_data_devices_and_training(tmp_path):
  config = rnn_ptb_search.get_config()
  with pytest.raises(config_fields.ConfigError, match=r"data.data_dir=None: data.name='ptb'"):
    rnn_search.validate_search_config(config)
  (tmp_path / 'train.txt').write_text('a b\n')
  config.data.data_dir = str(tmp_path)
  with pytest.raises(config_fields.ConfigError, match='lacks valid.txt, test.txt'):
    rnn_search.validate_search_config(config)
  config = rnn_pydoc_search.get_config()
  with pytest.raises(config_fields.ConfigError, match='search.batch_size=32 is not divisible '
                                                      'by the 3 devices'):
    rnn_search.validate_search_config(config, num_devices=3)
  t = rnn_ptb_train.get_config()
  t.data.name = 'pydoc'
  rnn_train.validate_train_config(t)
  t.genotype = 'DARTS_V3'
  with pytest.raises(config_fields.ConfigError, match=r"genotype='DARTS_V3' is neither one of"):
    rnn_train.validate_train_config(t)
  t.genotype = 'DARTS_V1'
  t.train.nonmono = 0
  with pytest.raises(config_fields.ConfigError, match='train.nonmono=0 must be an integer >= 1'):
    rnn_train.validate_train_config(t)
  t.train.nonmono = 5
  t.model.space = 'darts'
  with pytest.raises(config_fields.ConfigError, match="model.space='darts'"):
    rnn_train.validate_train_config(t)


def test_training_genotype_from_a_search_workdir(tmp_path):
  (tmp_path / 'genotype.json').write_text(json.dumps(genotypes.to_dict(genotypes.DARTS_V1)))
  assert rnn_train.resolve_genotype(str(tmp_path)) == genotypes.DARTS_V1
  assert rnn_train.resolve_genotype(str(tmp_path / 'genotype.json')) == genotypes.DARTS_V1
  assert rnn_train.resolve_genotype('DARTS') == genotypes.DARTS_V2


# ------------------------------------------- short runs on pydoc


def search_config(epochs: int = 2):
  """The quick pydoc search at size 16, 2 nodes, batch 64, bptt 10: ~95 windows an
  epoch, one compiled step (bucket 35 >= bptt)."""
  config = rnn_pydoc_search.get_config()
  config.model.emsize = config.model.nhid = 16
  config.model.steps = 2
  config.search.update(batch_size=64, bptt=10, epochs=epochs, learning_rate=10.0)
  config.checkpoint.every_steps = 20
  config.monitor.progress = 'lines'
  return config


# A child process running the search of search_config() in WORKDIR (argv[1]).
CHILD = ('import sys; from tests import test_rnn_run as t; '
         'from pcdarts_jax.rnn import search; search.search(t.search_config(), sys.argv[1])')


@pytest.fixture(scope='module')
def env():
  return dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS='cpu')


def _start(env, workdir):
  return subprocess.Popen([sys.executable, '-c', CHILD, workdir], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope='module')
def reference(env, tmp_path_factory):
  """An uninterrupted search (2 epochs) in a child process."""
  workdir = str(tmp_path_factory.mktemp('rnn_reference') / 'run')
  process = _start(env, workdir)
  out, err = process.communicate(timeout=900)
  assert process.returncode == 0, err[-3000:]
  return workdir, out


def _records(workdir, name='genotypes.jsonl'):
  with open(os.path.join(workdir, name)) as f:
    return [json.loads(line) for line in f]


def test_search_writes_its_outputs_and_lowers_validation_perplexity(reference):
  workdir, out = reference
  records = _records(workdir)
  assert [r['epoch'] for r in records] == [1, 2]
  ntokens = corpus_lib.load_corpus(search_config().data).ntokens
  valid = [r['valid']['perplexity'] for r in records]
  assert valid[1] < valid[0] < ntokens / 4, valid  # Uniform guessing: ntokens.
  assert records[1]['train']['perplexity'] < records[0]['train']['perplexity']
  for name in ('genotype.json', 'arch.npz', 'summary.json', 'config.json'):
    assert os.path.exists(os.path.join(workdir, name)), name
  with open(os.path.join(workdir, 'genotype.json')) as f:
    genotype = genotypes.from_dict(json.load(f))
  with np.load(os.path.join(workdir, 'arch.npz')) as f:
    assert f['alphas'].shape == (3, 5)
    assert genotypes.derive(f['alphas']) == genotype
  assert genotypes.from_dict(records[-1]['genotype']) == genotype
  with open(os.path.join(workdir, 'summary.json')) as f:
    summary = json.load(f)
  assert summary['best']['epoch'] == 2 and summary['compiled_window_shapes'] == 1
  assert summary['steps'] == records[-1]['step'] == sum(r['windows'] for r in records)
  assert os.listdir(os.path.join(workdir, 'tensorboard'))
  assert os.path.exists(os.path.join(workdir, 'plots', 'epoch_002_arch.png'))
  assert 'valid_ppl' in out and 'genotype = recurrent=[' in out


def _checkpoint_state(workdir):
  checkpoints = checkpoint.Checkpoints(os.path.join(workdir, 'checkpoints'), 3, read_only=True)
  step = checkpoints.latest_step()
  state, _ = checkpoints.restore(step, None)
  checkpoints.close()
  return step, state


def test_search_resume_after_sigkill_is_bitwise_identical(env, reference, tmp_path):
  ref_dir, _ = reference
  workdir = str(tmp_path / 'run')
  first_epoch = _records(ref_dir)[0]['step']
  kill_after = (first_epoch // 20 + 1) * 20  # The first checkpoint inside epoch 2.
  process = _start(env, workdir)
  directory = os.path.join(workdir, 'checkpoints', str(kill_after))
  deadline = time.time() + 900
  while not os.path.isdir(directory):
    assert process.poll() is None, process.communicate()[1][-3000:]
    assert time.time() < deadline
    time.sleep(0.02)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert not os.path.exists(os.path.join(workdir, 'genotype.json'))
  process = _start(env, workdir)
  out, err = process.communicate(timeout=900)
  assert process.returncode == 0, err[-3000:]
  assert 'resuming from checkpoint' in out
  with np.load(os.path.join(workdir, 'arch.npz')) as a, np.load(
      os.path.join(ref_dir, 'arch.npz')) as b:
    np.testing.assert_array_equal(a['alphas'], b['alphas'])
  step, state = _checkpoint_state(workdir)
  ref_step, ref_state = _checkpoint_state(ref_dir)
  assert step == ref_step
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(ref_state)):
    np.testing.assert_array_equal(a, b)  # Weights, arch, Adam, statistics, hidden states.
  timing = ('seconds', 'tokens_per_second')
  strip = lambda records: [{k: v for k, v in r.items() if k not in timing} for r in records]
  assert strip(_records(workdir)) == strip(_records(ref_dir))


def test_training_switches_to_asgd_keeps_the_best_and_lowers_perplexity(tmp_path,
                                                                        monkeypatch):
  """3 epochs of DARTS_V2 at size 16; the switch forced after epoch 1 (the rule itself:
  test_rnn_space.py): epochs 2-3 average, the best validation weights are kept and
  give the summary's test perplexity, as launch.evaluate reads them."""
  config = rnn_ptb_train.get_config()
  config.data.name = 'pydoc'
  config.model.emsize = config.model.nhid = 16
  config.model.update(dropout=0.3, dropouth=0.1, dropoutx=0.3, dropouti=0.1)
  config.train.update(batch_size=128, bptt=10, max_seq_len_delta=5, seq_len_bucket=15,
                      epochs=3)
  config.monitor.progress = 'lines'
  monkeypatch.setattr(steps, 'should_switch_to_asgd', lambda losses, nonmono: True)
  workdir = str(tmp_path / 'train')
  summary = rnn_train.train(config, workdir)
  records = _records(workdir, 'train_log.jsonl')
  assert [r['optimizer'] for r in records] == ['sgd', 'asgd', 'asgd']
  assert records[0]['switch_to_asgd'] and summary['asgd_from_epoch'] == 2
  valid = [r['valid']['perplexity'] for r in records]
  assert valid[-1] < valid[0], valid
  best = min(range(3), key=lambda e: valid[e]) + 1
  assert summary['best_epoch'] == best
  assert summary['valid']['perplexity'] == pytest.approx(valid[best - 1], rel=1e-6)
  ntokens = corpus_lib.load_corpus(config.data).ntokens
  assert summary['test']['perplexity'] < ntokens / 4
  assert summary['compiled_window_shapes'] == 2  # one shape, SGD and ASGD
  evaluated = rnn_train.evaluate_checkpoint(config, workdir)
  assert evaluated['test_perplexity'] == pytest.approx(summary['test']['perplexity'],
                                                       rel=1e-6)
  assert evaluated['source'].startswith(f'best validation epoch {best}')
  with open(os.path.join(workdir, 'genotype.json')) as f:
    assert genotypes.from_dict(json.load(f)) == genotypes.DARTS_V2


def test_one_device_equals_two(env):
  """Search (first order) and SGD/ASGD steps on 2 CPU devices equal 1 device's."""
  result = subprocess.run(
      [sys.executable, os.path.join('tests', 'multidevice', 'rnn_one_vs_many.py'),
       'first_order', '3'], cwd=REPO, capture_output=True, text=True, timeout=900,
      env=compile_options.devices_env(2, base=env))
  assert result.returncode == 0, result.stderr[-3000:]
  diffs = json.loads(result.stdout.strip().splitlines()[-1])
  assert diffs['devices'] == 2 and diffs['search_arch_moved'] > 1e-3
  for key, value in diffs.items():
    if key.startswith(('search_', 'train_')) and key != 'search_arch_moved':
      assert value < (1e-4 if key.endswith('sums') else 1e-5), (key, value)


def test_benchmark_measures_the_rnn_search_step(env):
  base = [sys.executable, '-m', 'launch.benchmark', '--config=configs/rnn_pydoc_search.py',
          '--config.model.steps=2', '--config.model.emsize=8', '--config.model.nhid=8']
  result = subprocess.run(base + ['--steps=2', '--warmup=0', '--batch_size=8'], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  (r,) = [json.loads(line) for line in result.stdout.splitlines() if line.startswith('{')]
  assert r['measurement'] == 'bilevel_step' and r['architect'] == 'first_order'
  assert r['data'] == 'pydoc' and r['bptt'] == 20 and r['batch_size'] == 8
  assert r['tokens_per_second'] == pytest.approx(8 * 20 / (r['ms_per_step_median'] / 1e3))
  assert r['projected_search_minutes'] > 0 and 'tokens/s' in result.stderr
  refused = subprocess.run(base + ['--measure=weight_step'], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=600)
  assert refused.returncode == 2
  assert "is not one of ('bilevel_step',) (a search config of model.space='rnn')" in (
      refused.stderr)


def _launch(env, *args):
  return subprocess.run([sys.executable, '-m', *args], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=900)


def test_launchers_run_the_rnn_configs(env, tmp_path):
  """launch.search, launch.train (the search's workdir as the genotype) and
  launch.evaluate pick the RNN path from model.space='rnn'."""
  small = ['--config.model.emsize=16', '--config.model.nhid=16', '--config.monitor.progress=lines']
  search_dir, train_dir = str(tmp_path / 'search'), str(tmp_path / 'train')
  # search_config()'s shapes: the compilation cache has its step.
  search = ['launch.search', '--config=configs/rnn_pydoc_search.py', f'--workdir={search_dir}',
            '--config.search.epochs=1', '--config.model.steps=2', '--config.search.batch_size=64',
            '--config.search.bptt=10', '--config.search.learning_rate=10', *small]
  result = _launch(env, *search)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'epoch 1/1' in result.stdout and 'valid_ppl' in result.stdout
  again = _launch(env, *search)
  assert again.returncode == 0 and 'already complete' in again.stdout
  trained = ['--config=configs/rnn_ptb_train.py', f'--workdir={train_dir}',
             '--config.data.name=pydoc', '--config.train.bptt=10', *small]
  result = _launch(env, 'launch.train', *trained, f'--config.genotype={search_dir}',
                   '--config.train.epochs=1', '--config.train.batch_size=128',
                   '--config.train.max_seq_len_delta=5', '--config.train.seq_len_bucket=15')
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'training done: test perplexity' in result.stdout
  with open(os.path.join(train_dir, 'genotype.json')) as a, open(
      os.path.join(search_dir, 'genotype.json')) as b:
    assert json.load(a) == json.load(b)
  with open(os.path.join(train_dir, 'summary.json')) as f:
    summary = json.load(f)
  result = _launch(env, 'launch.evaluate', *trained)
  assert result.returncode == 0, result.stderr[-3000:]
  evaluated = json.loads(result.stdout.strip().splitlines()[-1])
  assert evaluated['test_perplexity'] == pytest.approx(summary['test']['perplexity'], rel=1e-6)
  refused = _launch(env, 'launch.search', '--config=configs/rnn_pydoc_search.py',
                    f'--workdir={tmp_path / "bad"}', '--config.search.architect=exact')
  assert refused.returncode == 2
  assert refused.stderr.strip().splitlines()[-1].startswith(
      "error: search.architect='exact' is not one of ('first_order', 'second_order')")
  assert not os.path.exists(tmp_path / 'bad' / 'config.json')
