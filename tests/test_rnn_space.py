"""The DARTS recurrent cell search space (pcdarts_jax/spaces/rnn): the cell's step
equations by hand, genotypes, the arch gradient against finite differences (float64),
the second-order architect against an exact Hessian-vector product, short offline
search and training runs on the pydoc corpus, the corpus reader and the configs."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import rnn_ptb_search
from configs import rnn_ptb_train
from configs import rnn_pydoc_search
from pcdarts_jax.spaces.rnn import cell
from pcdarts_jax.spaces.rnn import corpus as corpus_lib
from pcdarts_jax.spaces.rnn import genotypes
from pcdarts_jax.spaces.rnn import model as model_lib
from pcdarts_jax.spaces.rnn import steps
from tests import compile_options

OPS = genotypes.PRIMITIVES[1:]
# The tests' programs are tiny and run for milliseconds: XLA's backend optimisation is
# most of their cost on a shared CPU, so they compile without it (same arithmetic).
_jit = compile_options.jit_few


def _init(m, seed):
  """model_lib.init_variables, compiled as _jit."""
  tokens, hidden = jnp.zeros((2, 2), jnp.int32), model_lib.init_hidden(2, m.nhid)
  return dict(_jit(lambda k: m.init({'params': k}, tokens, hidden, train=False))(
      jax.random.PRNGKey(seed)))


# ------------------------------------------------------------- the cell


def _sigmoid(v):
  return 1.0 / (1.0 + math.exp(-v))


_SCALAR_OPS = {'tanh': math.tanh, 'relu': lambda v: max(v, 0.0), 'sigmoid': _sigmoid,
               'identity': lambda v: v}


def _scalar_case():
  """ninp = nhid = 1, batch 1: x = 1, h_prev = 0.5. W0 = [[0, 1], [0, 0]] gives
  [c0, h0] = [0, x] and W1 = [[0, 2]] gives [c, h] = [0, 2 s0]: both gates are
  sigmoid(0) = 1/2, so s0 = h_prev/2 + tanh(1)/2 and node 1 = s0/2 + op(2 s0)/2."""
  x = jnp.array([[1.0]])
  h_prev = jnp.array([[0.5]])
  w0 = jnp.array([[0.0, 1.0], [0.0, 0.0]])
  ws = jnp.array([[[0.0, 2.0]]])
  s0 = 0.5 * 0.5 + 0.5 * math.tanh(1.0)
  expected = {op: 0.5 * s0 + 0.5 * f(2 * s0) for op, f in _SCALAR_OPS.items()}
  return x, h_prev, w0, ws, s0, expected


def test_cell_step_equation_by_hand_each_op():
  x, h_prev, w0, ws, s0, expected = _scalar_case()
  assert float(cell.init_state(x, h_prev, w0)[0, 0]) == pytest.approx(s0, rel=1e-6)
  for op in OPS:
    g = genotypes.make([(op, 0)])
    out = cell.genotype_step(x, h_prev, w0, ws, g)
    assert float(out[0, 0]) == pytest.approx(expected[op], rel=1e-6), op


def test_search_cell_mixes_the_ops_by_softmax_and_none_adds_nothing():
  x, h_prev, w0, ws, _, expected = _scalar_case()
  logits = jnp.array([[0.3, -0.2, 0.5, 0.1, -0.4]])
  p = np.asarray(jax.nn.softmax(logits, axis=-1))[0]
  out, stats = cell.search_step(x, h_prev, w0, ws, jax.nn.softmax(logits, axis=-1))
  # Node 1 = sum_k p_k (s0 + c (op_k(h) - s0)) = sum_k p_k node_k; 'none' (p[0]) adds 0.
  want = sum(p[k] * expected[op] for k, op in enumerate(genotypes.PRIMITIVES) if op != 'none')
  assert stats is None
  assert float(out[0, 0]) == pytest.approx(want, rel=1e-6)


def test_cell_step_with_masks_matches_numpy():
  rng = np.random.default_rng(0)
  b, n = 3, 4
  x, h = rng.normal(size=(b, n)), rng.normal(size=(b, n))
  w0, w1 = rng.uniform(-1, 1, (2 * n, 2 * n)), rng.uniform(-1, 1, (n, 2 * n))
  xm, hm = rng.integers(0, 2, (b, n)) * 2.0, rng.integers(0, 2, (b, n)) * 2.0
  sig = lambda v: 1 / (1 + np.exp(-v))
  ch = np.concatenate([x * xm, h * hm], -1) @ w0
  s0 = h + sig(ch[:, :n]) * (np.tanh(ch[:, n:]) - h)
  ch = (s0 * hm) @ w1
  fns = {'tanh': np.tanh, 'relu': lambda v: np.maximum(v, 0), 'sigmoid': sig,
         'identity': lambda v: v}
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  for op in OPS:
    want = s0 + sig(ch[:, :n]) * (fns[op](ch[:, n:]) - s0)
    got = cell.genotype_step(f32(x), f32(h), f32(w0), f32(w1[None]), genotypes.make([(op, 0)]),
                             f32(xm), f32(hm))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=op)


def test_batch_norm_is_torch_batchnorm1d_without_affine():
  rng = np.random.default_rng(1)
  s = rng.normal(2.0, 3.0, (5, 4))
  stats = (np.full(4, 0.5), np.full(4, 2.0))
  out, (mean, var) = cell.batch_norm(jnp.asarray(s), tuple(map(jnp.asarray, stats)), True)
  np.testing.assert_allclose(out, (s - s.mean(0)) / np.sqrt(s.var(0) + 1e-5), rtol=1e-5)
  np.testing.assert_allclose(mean, 0.9 * 0.5 + 0.1 * s.mean(0), rtol=1e-6)
  np.testing.assert_allclose(var, 0.9 * 2.0 + 0.1 * s.var(0, ddof=1), rtol=1e-6)  # unbiased
  out, same = cell.batch_norm(jnp.asarray(s), tuple(map(jnp.asarray, stats)), False)
  np.testing.assert_allclose(out, (s - 0.5) / np.sqrt(2.0 + 1e-5), rtol=1e-6)
  assert same[0] is not None and float(same[1][0]) == 2.0


def test_model_dropout_is_locked_and_only_in_training():
  m = model_lib.RNNModel(ntoken=9, emsize=4, nhid=4, steps=2, genotype=genotypes.make(
      [('tanh', 0), ('relu', 1)]), dropout=0.5)
  v = _init(m, 0)
  tokens = jnp.arange(15).reshape(3, 5) % 9
  hidden = model_lib.init_hidden(3, 4)
  apply = _jit(m.apply, static_argnames='train')
  out = apply(v, tokens, hidden, train=True, rngs={'dropout': jax.random.PRNGKey(1)})
  ratio = np.asarray(out.dropped_output / out.raw_output)
  assert set(np.round(np.unique(ratio), 5)) <= {0.0, 2.0}
  np.testing.assert_array_equal(ratio, np.broadcast_to(ratio[:, :1], ratio.shape))  # one per row
  a = apply(v, tokens, hidden, train=False)
  np.testing.assert_array_equal(a.raw_output, a.dropped_output)
  np.testing.assert_allclose(jnp.exp(a.log_probs).sum(-1), 1.0, rtol=1e-5)
  assert v['params']['cell']['Ws'].shape == (2, 4, 8)
  assert float(jnp.abs(v['params']['embedding']).max()) <= model_lib.INIT_RANGE


def test_search_model_variables_and_tied_sizes():
  m = model_lib.RNNModel(ntoken=9, emsize=4, nhid=4)
  tokens, hidden = jnp.zeros((2, 3), jnp.int32), model_lib.init_hidden(2, 4)
  shapes = jax.eval_shape(lambda k: m.init(k, tokens, hidden, train=False), jax.random.PRNGKey(0))
  assert shapes['arch']['alphas'].shape == (36, 5)
  assert shapes['params']['cell']['Ws'].shape == (8, 4, 8)
  assert shapes['params']['cell']['W0'].shape == (8, 8)
  assert set(shapes['batch_stats']['cell']) == {'mean', 'var'}
  v = model_lib.init_variables(model_lib.RNNModel(ntoken=9, emsize=4, nhid=4, steps=2),
                               jax.random.PRNGKey(0))
  assert float(jnp.abs(v['arch']['alphas']).max()) < 1e-2  # 1e-3 N(0, 1)
  with pytest.raises(ValueError, match='model.emsize'):
    model_lib.init_variables(model_lib.RNNModel(ntoken=9, emsize=4, nhid=6), jax.random.PRNGKey(0))


# ------------------------------------------------------------ genotypes


def test_published_genotypes_are_the_reference_values_and_round_trip():
  assert genotypes.DARTS_V2.recurrent == (
      ('sigmoid', 0), ('relu', 1), ('relu', 1), ('identity', 1), ('tanh', 2), ('sigmoid', 5),
      ('tanh', 3), ('relu', 5))
  assert genotypes.DARTS_V1.recurrent == (
      ('relu', 0), ('relu', 1), ('tanh', 2), ('relu', 3), ('relu', 4), ('identity', 1),
      ('relu', 5), ('relu', 1))
  assert genotypes.by_name('DARTS') == genotypes.DARTS_V2
  for g in (genotypes.DARTS_V1, genotypes.DARTS_V2):
    assert g.concat == tuple(range(1, 9))
    assert genotypes.from_dict(json.loads(json.dumps(genotypes.to_dict(g)))) == g
    line = genotypes.genotype_str(g)
    assert '\n' not in line and line.endswith('concat=1..8')
  with pytest.raises(ValueError, match='genotype'):
    genotypes.by_name('ENAS')


def _arch_for(genotype, none_logit=5.0):
  """Logits whose DARTS derivation is `genotype`: 3 on each chosen (input, op), 0 on
  every other op, and a larger 'none' everywhere (which the rule ignores)."""
  rows, offset = np.zeros((genotypes.num_edges(len(genotype.recurrent)), 5)), 0
  rows[:, 0] = none_logit
  for i, (op, j) in enumerate(genotype.recurrent):
    rows[offset + j, genotypes.PRIMITIVES.index(op)] = 3.0
    offset += i + 1
  return rows


def test_derive_recovers_the_published_genotypes():
  for g in (genotypes.DARTS_V1, genotypes.DARTS_V2):
    assert genotypes.derive(_arch_for(g)) == g


def test_derive_compares_edges_by_softmax_weight_not_logit():
  # Node 2: edge (s0) tanh logit 2 among zeros -> p = e^2 / (e^2 + 4) = 0.65; edge (node 1)
  # has the larger logit 9 but shares it with three 8.9s -> p = 0.27. The reference's rule
  # (on softmax weights) picks s0.
  arch = np.zeros((3, 5))
  arch[0, 1] = 1.0
  arch[1, 1] = 2.0
  arch[2] = [0.0, 9.0, 8.9, 8.9, 8.9]
  assert genotypes.derive(arch) == genotypes.make([('tanh', 0), ('tanh', 0)])
  with pytest.raises(ValueError, match='rows'):
    genotypes.derive(np.zeros((4, 5)))
  with pytest.raises(ValueError, match='not one of'):
    genotypes.make([('none', 0)])
  with pytest.raises(ValueError, match='input 2'):
    genotypes.make([('tanh', 0), ('tanh', 2)])


# -------------------------------------------- gradients (float64, tiny model)


def _tiny(dropouts, genotype=None):
  return model_lib.RNNModel(ntoken=7, emsize=3, nhid=3, steps=2, genotype=genotype, **dropouts)


def _f64(tree):
  return jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), tree)


def _tiny_batch(seed, b=3, t=4):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, 7, (b, t + 1))
  return jnp.asarray(tokens[:, :-1]), jnp.asarray(tokens[:, 1:])


def test_arch_gradient_matches_central_differences_float64():
  with jax.enable_x64(True):
    m = _tiny(dict(dropout=0.3, dropouth=0.2, dropoutx=0.3, dropouti=0.2, dropoute=0.1))
    v = _f64(_init(m, 0))
    params = v['params']
    arch = {'alphas': jnp.asarray(np.random.default_rng(3).normal(0, 0.5, (3, 5)))}
    x, y = _tiny_batch(0)
    hidden = jnp.asarray(np.random.default_rng(4).normal(0, 0.3, (3, 3)))
    rng = jax.random.PRNGKey(7)  # one fixed draw of every dropout mask

    @_jit
    def loss_and_grad(a):
      return jax.value_and_grad(lambda a: steps.lm_loss(
          m, params, {'alphas': a}, v['batch_stats'], x, y, hidden, rng, True, 0.5, 0.5)[0])(a)

    loss = lambda a: float(loss_and_grad(a)[0])
    grad = np.asarray(loss_and_grad(arch['alphas'])[1])
    eps = 1e-6
    fd = np.zeros_like(grad)
    for idx in np.ndindex(*grad.shape):
      e = np.zeros(grad.shape)
      e[idx] = eps
      fd[idx] = (loss(arch['alphas'] + e) - loss(arch['alphas'] - e)) / (2 * eps)
    assert np.abs(grad).max() > 1e-4
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-9)


def test_second_order_arch_step_is_the_unrolled_gradient_float64():
  """make_arch_step('second_order') with a -1 x gradient 'optimizer' returns
  dL_val(w', a)/da - eta H v, whose Hessian term is a central difference; compared with
  the exact mixed derivative (jvp of the arch gradient) at w' along v. The reference's
  r = 0.01 moves this tiny model's weights (scale 0.04) far, so the tight comparison
  takes a small r; at r = 0.01 the term is still within a few percent."""
  eta, wd = 20.0, 1e-2
  with jax.enable_x64(True):
    m = model_lib.RNNModel(ntoken=7, emsize=3, nhid=3, steps=1)  # No dropout: one function.
    v = _f64(_init(m, 1))
    params, bs = v['params'], v['batch_stats']
    arch = {'alphas': jnp.asarray(np.random.default_rng(5).normal(0, 0.5, (1, 5)))}
    (xt, yt), (xv, yv) = _tiny_batch(1), _tiny_batch(2)
    ht = hv = jnp.zeros((3, 3))
    key = jax.random.PRNGKey(0)

    def loss(p, a, h, x, y):
      return steps.lm_loss(m, p, a, bs, x, y, h, key, True)[0]

    @_jit
    def both(r):
      step = steps.make_arch_step(m, architect='second_order', weight_decay=wd, clip=1e3,
                                  optimizer=optax.scale(-1.0), hvp_r=r)
      new_arch, _, bs_after, _, _ = step(arch, (), params, bs, (ht, xt, yt), (hv, xv, yv),
                                         key, eta)
      g = jax.grad(loss)(params, arch, ht, xt, yt)
      w1 = jax.tree_util.tree_map(lambda p, g: p - eta * (g + wd * p), params, g)
      dw, da = jax.grad(loss, argnums=(0, 1))(w1, arch, hv, xv, yv)
      vec = jax.tree_util.tree_map(lambda g, p: g + wd * p, dw, w1)
      arch_grad = lambda p: jax.grad(loss, argnums=1)(p, arch, ht, xt, yt)['alphas']
      hvp = jax.jvp(arch_grad, (w1,), (vec,))[1]
      return (arch['alphas'] - new_arch['alphas'], bs_after, da['alphas'],
              da['alphas'] - eta * hvp)

    got, bs_after, first, want = both(1e-5)
    got_reference_r = both(steps.HVP_R)[0]
    got, first, want, got_reference_r = map(np.asarray, (got, first, want, got_reference_r))
    assert np.abs(want - first).max() > 10 * np.abs(got - want).max()  # the term matters
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(got_reference_r, want, rtol=0.1, atol=0.05 * np.abs(want).max())
    jax.tree_util.tree_map(np.testing.assert_array_equal, bs_after, bs)  # a copy's statistics


def test_clip_and_optimisers_follow_torch():
  g = {'a': jnp.array([3.0, 0.0]), 'b': jnp.array([4.0])}
  clipped, norm = steps.clip_grads(g, 0.25)
  assert float(norm) == pytest.approx(5.0)
  np.testing.assert_allclose(clipped['a'], [3.0 * 0.25 / (5.0 + 1e-6), 0.0], rtol=1e-6)
  small, _ = steps.clip_grads(g, 10.0)
  np.testing.assert_array_equal(small['a'], g['a'])
  p = {'w': jnp.array([1.0, -2.0])}
  np.testing.assert_allclose(steps.sgd_update(p, {'w': jnp.array([0.5, 0.5])}, 2.0, 0.1)['w'],
                             [1.0 - 2.0 * 0.6, -2.0 - 2.0 * 0.3], rtol=1e-6)
  # torch.optim.ASGD(lr=20, t0=0, lambd=0, weight_decay=wd), the lr changed before each step.
  rng = np.random.default_rng(0)
  lrs, wd = [20.0, 10.0, 25.0, 20.0, 15.0], 1e-3
  grads = [rng.normal(size=2) for _ in lrs]
  w, step, eta, mu, ax = np.array([1.0, -2.0]), 0, 20.0, 1.0, np.zeros(2)
  state, jp = steps.asgd_init(p, 20.0), p
  for lr, gr in zip(lrs, grads):
    step += 1
    w = w - eta * (gr + wd * w)
    ax = ax + (w - ax) * mu if mu != 1 else w.copy()
    eta, mu = lr, 1 / max(1, step)
    jp, state = steps.asgd_update(jp, {'w': jnp.asarray(gr, jnp.float32)}, state, lr, wd)
    np.testing.assert_allclose(jp['w'], w, rtol=1e-5)
    np.testing.assert_allclose(state['ax']['w'], ax, rtol=1e-5)
  assert steps.eval_params({'params': p, 'opt': state}) is state['ax']


def test_should_switch_to_asgd_as_train_py():
  assert not steps.should_switch_to_asgd([5, 4, 3], 2)          # not more than nonmono before
  assert not steps.should_switch_to_asgd([5, 4, 3, 3.5], 2)     # 3.5 < min([5])
  assert steps.should_switch_to_asgd([5, 4, 3, 2.9, 5.1], 2)    # 5.1 > min([5, 4])
  assert not steps.should_switch_to_asgd([5, 4, 3, 2.9, 3.9], 2)


def test_sequence_lengths_as_the_reference():
  rng = np.random.default_rng(0)
  plain = [steps.sample_seq_len(rng, 35, 20, jitter=False) for _ in range(2000)]
  assert set(plain) == {35, 17} and 0.93 < plain.count(35) / len(plain) < 0.97
  jittered = [steps.sample_seq_len(rng, 35, 20) for _ in range(2000)]
  assert min(jittered) >= 5 and max(jittered) <= 55 and 33 < np.mean(jittered) < 35
  windows = list(steps.epoch_windows(100, 10, np.random.default_rng(1), 20, jitter=True))
  starts = [i for i, _ in windows]
  assert starts[0] == 0 and starts[-1] < 98
  assert all(b - a == s for (a, s), b in zip(windows, starts[1:]))
  assert steps.scaled_lr(20.0, 17, 35) == pytest.approx(20.0 * 17 / 35)


# ------------------------------------------------------------------ corpus


def test_corpus_reader_on_a_tiny_layout(tmp_path):
  (tmp_path / 'train.txt').write_text('a b c\n b c d \n')
  (tmp_path / 'valid.txt').write_text('a d\n')
  (tmp_path / 'test.txt').write_text('e a\n')
  c = corpus_lib.read_corpus(str(tmp_path))
  assert c.vocab == ('a', 'b', 'c', '<eos>', 'd', '<unk>')
  np.testing.assert_array_equal(c.train, [0, 1, 2, 3, 1, 2, 4, 3])
  np.testing.assert_array_equal(c.valid, [0, 4, 3])
  np.testing.assert_array_equal(c.test, [5, 0, 3])  # 'e' is not a train word
  src = corpus_lib.batchify(np.arange(11), 2)
  np.testing.assert_array_equal(src, [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]])
  x, y = corpus_lib.get_batch(src, 2, 35)  # capped at the stream's end
  np.testing.assert_array_equal(x, [[2, 3], [7, 8]])
  np.testing.assert_array_equal(y, [[3, 4], [8, 9]])
  (tmp_path / 'test.txt').unlink()
  with pytest.raises(FileNotFoundError, match='data.data_dir'):
    corpus_lib.read_corpus(str(tmp_path))


@pytest.fixture(scope='module')
def pydoc():
  return corpus_lib.load_corpus(rnn_pydoc_search.get_config().data)


def test_pydoc_corpus_is_offline_and_deterministic(pydoc):
  again = corpus_lib.pydoc_corpus(3, (0.8, 0.1))
  assert pydoc.vocab == again.vocab
  np.testing.assert_array_equal(pydoc.valid, again.valid)
  assert 500 < pydoc.ntokens < 5000 and '<eos>' in pydoc.vocab and '<unk>' in pydoc.vocab
  assert len(pydoc.train) > 40000 and len(pydoc.valid) > 4000 and len(pydoc.test) > 4000
  with pytest.raises(ValueError, match='data.name'):
    corpus_lib.load_corpus(_with_name('wiki103'))
  with pytest.raises(ValueError, match='data.data_dir'):
    corpus_lib.load_corpus(_with_name('ptb'))


def _with_name(name):
  config = rnn_pydoc_search.get_config()
  config.data.name = name
  return config.data


# ----------------------------------------------- short runs on the pydoc corpus


def _streams(corpus, batch, bptt, eval_windows=30):
  valid_eval = corpus_lib.batchify(corpus.valid, 10)[:, :eval_windows * bptt + 1]
  return (corpus_lib.batchify(corpus.train, batch), corpus_lib.batchify(corpus.valid, batch),
          valid_eval)


def test_short_offline_search_reduces_validation_perplexity(pydoc):
  config = rnn_pydoc_search.get_config()
  s = config.search
  config.model.emsize = config.model.nhid = 16
  config.model.steps = 2
  batch, bptt, n = 16, 10, 40
  train, search, valid = _streams(pydoc, batch, bptt)
  m = model_lib.build_model(pydoc.ntokens, config.model)
  opt = steps.arch_optimizer(s.arch_learning_rate, s.arch_weight_decay, s.arch_beta1,
                             s.arch_beta2)
  state = steps.init_search_state(m, jax.random.PRNGKey(config.seed), batch, opt)
  step = _jit(steps.make_search_step(m, architect=s.architect, alpha=s.alpha, beta=s.beta,
                                        clip=s.grad_clip, weight_decay=s.weight_decay,
                                        arch_opt=opt))
  eval_step = _jit(steps.make_eval_step(m))
  arch0 = np.asarray(state['arch']['alphas'])
  ppl = []
  for k in range(n):
    i = k * bptt
    state, metrics = step(state, corpus_lib.get_batch(train, i, bptt),
                          corpus_lib.get_batch(search, i % (search.shape[1] - 1), bptt),
                          jax.random.PRNGKey(k), steps.scaled_lr(s.learning_rate, bptt, bptt))
    if k in (0, n - 1):  # After one step the BatchNorm running statistics are warm.
      ppl.append(steps.perplexity(steps.evaluate(eval_step, state['params'], state['arch'],
                                                 state['batch_stats'], valid, bptt)))
  assert np.isfinite(float(metrics['loss'])) and np.isfinite(float(metrics['arch_loss']))
  assert ppl[1] < 0.6 * ppl[0], ppl
  assert np.abs(np.asarray(state['arch']['alphas']) - arch0).max() > 1e-3
  g = genotypes.derive(state['arch']['alphas'])
  assert len(g.recurrent) == 2 and all(op != 'none' for op, _ in g.recurrent)


def test_short_training_run_reduces_validation_perplexity(pydoc):
  config = rnn_ptb_train.get_config()
  t = config.train
  config.model.emsize = config.model.nhid = 16
  config.model.update(dropout=0.3, dropouth=0.1, dropoutx=0.3, dropouti=0.1)
  batch, bptt = 16, 10
  train, _, valid = _streams(pydoc, batch, bptt)
  m = model_lib.build_model(pydoc.ntokens, config.model, genotypes.by_name(config.genotype))
  state = steps.init_train_state(m, jax.random.PRNGKey(config.seed), batch)
  eval_step = _jit(steps.make_eval_step(m))
  ppl = lambda st: steps.perplexity(steps.evaluate(eval_step, steps.eval_params(st), None, {},
                                                   valid, bptt))
  ppl0 = ppl(state)
  kwargs = dict(alpha=t.alpha, beta=t.beta, clip=t.grad_clip, weight_decay=t.weight_decay)
  sgd = _jit(steps.make_train_step(m, optimizer='sgd', **kwargs))
  asgd = _jit(steps.make_train_step(m, optimizer='asgd', **kwargs))
  for k in range(40):
    if k == 30:
      state = steps.switch_to_asgd(state, t.learning_rate)
    lr = steps.scaled_lr(t.learning_rate, bptt, bptt)
    state, metrics = (sgd if k < 30 else asgd)(
        state, corpus_lib.get_batch(train, k * bptt, bptt), jax.random.PRNGKey(k), lr)
  assert np.isfinite(float(metrics['loss'])) and int(state['opt']['step']) == 10
  ppl1 = ppl(state)  # the averaged weights
  assert ppl1 < 0.6 * ppl0, (ppl0, ppl1)
  assert ppl0 == pytest.approx(pydoc.ntokens, rel=0.2)  # near uniform at initialisation


# ----------------------------------------------------------------- configs


def test_configs_carry_the_reference_hyperparameters():
  s = rnn_ptb_search.get_config()
  assert s.model.space == 'rnn' and s.data.name == 'ptb'
  assert (s.model.emsize, s.model.nhid, s.model.steps) == (300, 300, 8)
  assert (s.model.dropout, s.model.dropouth, s.model.dropoutx, s.model.dropouti,
          s.model.dropoute) == (0.75, 0.25, 0.75, 0.2, 0.0)
  assert (s.search.batch_size, s.search.bptt, s.search.epochs) == (256, 35, 50)
  assert (s.search.learning_rate, s.search.weight_decay, s.search.grad_clip) == (20, 5e-7, 0.25)
  assert (s.search.arch_learning_rate, s.search.arch_weight_decay) == (3e-3, 1e-3)
  assert (s.search.arch_beta1, s.search.arch_beta2) == (0.9, 0.999)
  assert s.search.architect == 'second_order' and (s.search.alpha, s.search.beta) == (0, 1e-3)
  t = rnn_ptb_train.get_config()
  assert t.model.space == 'rnn' and genotypes.by_name(t.genotype) == genotypes.DARTS_V2
  assert (t.model.emsize, t.model.nhid, t.model.dropoute) == (850, 850, 0.1)
  assert (t.train.batch_size, t.train.learning_rate, t.train.weight_decay) == (64, 20, 8e-7)
  assert (t.train.beta, t.train.nonmono, t.train.max_seq_len_delta) == (1e-3, 5, 20)
  assert t.train.seq_len_jitter and t.train.asgd
  q = rnn_pydoc_search.get_config()
  assert q.data.name == 'pydoc' and q.model.space == 'rnn'
  assert q.search.architect in steps.ARCHITECTS
