"""Arch-gradient strategies: the unrolled (second-order) gradient, exact and by
finite differences, against an independent float64 computation on a tiny net."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import digits_search
from pcdarts_jax.search import architect
from pcdarts_jax.data import datasets as data
from pcdarts_jax.nn import initializers
from pcdarts_jax.search import search as loop
from pcdarts_jax.search import optim
from pcdarts_jax.spaces.darts import supernet

BATCH = 8
STEP = 1  # lr_fn(1) with 1 step per epoch: the second epoch's cosine lr, not the initial lr.


@flax.struct.dataclass
class _State:
  """The fields of the search state an architect reads."""
  step: jax.Array
  params: dict
  batch_stats: dict
  arch: dict
  weight_opt_state: tuple


def _config():
  config = digits_search.get_config()
  config.model.init_channels = 4
  config.model.layers = 1  # One reduction cell: 8x8 -> 4x4.
  config.model.partial_channels = 2
  config.search.epochs = 4
  config.search.learning_rate = 0.5  # A large xi: the Hessian term dominates.
  return config


def _flat(tree):
  return np.concatenate([np.ravel(np.asarray(tree[k], np.float64)) for k in sorted(tree)])


def _rel(a, b):
  return np.linalg.norm(a - b) / np.linalg.norm(b)


def _set_trace(opt_state, buffer):
  is_trace = lambda n: isinstance(n, optax.TraceState)
  return jax.tree.map(lambda n: n._replace(trace=buffer) if is_trace(n) else n, opt_state,
                      is_leaf=is_trace)


# ---------------------------------------------------------------- small pieces


def test_momentum_buffer_is_the_sgd_trace():
  """After two weight steps the buffer is mu * (clip(g1) + wd w0) + clip(g2) + wd w1."""
  config = _config()
  s = config.search
  tx = optim.weight_optimizer(config, steps_per_epoch=1)
  w0 = {'a': jnp.asarray([1.0, -2.0]), 'b': jnp.asarray([[0.5]])}
  state = tx.init(w0)
  zeros = optim.momentum_buffer(state, w0)
  for leaf in jax.tree.leaves(zeros):
    np.testing.assert_array_equal(leaf, 0.0)  # The reference's missing buffer.
  g1 = {'a': jnp.asarray([3.0, 4.0]), 'b': jnp.asarray([[0.0]])}  # norm 5: not clipped
  g2 = {'a': jnp.asarray([30.0, 0.0]), 'b': jnp.asarray([[40.0]])}  # norm 50: clipped to 5
  upd, state = tx.update(g1, state, w0)
  w1 = optax.apply_updates(w0, upd)
  upd, state = tx.update(g2, state, w1)
  buf = optim.momentum_buffer(state, w0)
  for k in w0:
    b1 = np.asarray(g1[k]) + s.weight_decay * np.asarray(w0[k])
    b2 = s.momentum * b1 + np.asarray(g2[k]) * 0.1 + s.weight_decay * np.asarray(w1[k])
    np.testing.assert_allclose(np.asarray(buf[k]), b2, rtol=1e-6)


def test_virtual_step_formula():
  w = {'x': jnp.asarray([1.0, 2.0])}
  g = {'x': jnp.asarray([0.5, -1.0])}
  m = {'x': jnp.asarray([2.0, 0.0])}
  out = architect.virtual_step(w, g, m, lr=0.1, momentum=0.9, weight_decay=0.01)
  # w - 0.1 * (0.9 m + g + 0.01 w), by hand.
  np.testing.assert_allclose(np.asarray(out['x']), [1.0 - 0.1 * (1.8 + 0.5 + 0.01),
                                                    2.0 - 0.1 * (0.0 - 1.0 + 0.02)], rtol=1e-6)


def test_unknown_architect_is_refused():
  with pytest.raises(ValueError, match='search.architect'):
    architect.make_architect('third_order', _config(), None, None)
  assert set(architect.ARCHITECTS) == {'first_order', 'second_order', 'second_order_exact'}


# ------------------------------------------------------- float64 tiny network


# The tests of the tiny64 fixture share its compiles: one xdist worker (--dist loadgroup).
TINY64 = pytest.mark.xdist_group('architect_tiny64')


@pytest.fixture(scope='module')
def tiny64():
  """A tiny supernet in float64 with a non-zero momentum buffer, and the
  gradients of the three strategies."""
  config = _config()
  train_set, arch_set = data.search_splits(config.data)
  norm = lambda images: data.normalize(images, config.data.mean, config.data.std)
  with jax.enable_x64(True):
    f64 = lambda tree: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)
    train_x, train_y = f64(norm(train_set.images[:BATCH])), jnp.asarray(train_set.labels[:BATCH])
    arch_x, arch_y = f64(norm(arch_set.images[:BATCH])), jnp.asarray(arch_set.labels[:BATCH])
    model = supernet.build_supernet(config)
    variables = f64(initializers.init_variables(model, jax.random.PRNGKey(0), train_x[:1]))
    # Non-uniform op and edge weights (the 1e-3 init is nearly uniform).
    variables['arch'] = jax.tree.map(lambda a: 300.0 * a, variables['arch'])
    rs = np.random.RandomState(0)
    buffer = jax.tree.map(lambda p: jnp.asarray(0.1 * rs.randn(*p.shape)), variables['params'])
    tx = optim.weight_optimizer(config, steps_per_epoch=1)
    state = _State(step=jnp.asarray(STEP, jnp.int32), params=variables['params'],
                   batch_stats=variables['batch_stats'], arch=variables['arch'],
                   weight_opt_state=_set_trace(tx.init(variables['params']), buffer))
    loss_fn = loop.make_loss_fn(model)
    lr_fn = optim.weight_learning_rate(config, steps_per_epoch=1)
    batches = (arch_x, arch_y, train_x, train_y)
    # Each strategy runs once here: compiled without LLVM's optimizations, in about
    # two thirds of the CPU time.
    once = {'xla_backend_optimization_level': 0}
    run = lambda fn: jax.jit(fn, compiler_options=once)(state, *batches, None)
    out = {name: run(architect.make_architect(name, config, loss_fn, lr_fn))
           for name in ('first_order', 'second_order_exact')}
    # r traced: one compile serves the reference's r = 0.01 and a small r.
    fd = jax.jit(lambda r, *args: architect.second_order(config, loss_fn, lr_fn, r=r)(*args),
                 compiler_options=once)
    for r in (0.01, 1e-4):
      out[f'second_order_r{r:g}'] = fd(jnp.asarray(r), state, *batches, None)
  return dict(config=config, model=model, variables=variables, buffer=buffer, state=state,
              batches=batches, lr=float(lr_fn(STEP)), out=out, loss_fn=loss_fn)


@TINY64
def test_second_order_exact_equals_central_differences(tiny64):
  """d/d alpha of L_val(w - xi (mu m + grad_w L_train(w, alpha) + lambda w), alpha),
  written out here independently and differentiated by float64 central
  differences in every arch coordinate."""
  t = tiny64
  s, model, v = t['config'].search, t['model'], t['variables']
  arch_x, arch_y, train_x, train_y = t['batches']
  # The second epoch of 4 runs at lr(2), the scheduler stepped before each epoch as in
  # DARTS; the virtual step takes the weight step's lr.
  xi = 0.5 * 0.5 * (1 + np.cos(np.pi * 2 / 4))
  assert t['lr'] == pytest.approx(xi, rel=1e-6)

  with jax.enable_x64(True):
    def loss(params, arch, x, y):
      logits, _ = model.apply({'params': params, 'arch': arch,
                               'batch_stats': v['batch_stats']}, x, train=True,
                              mutable=['batch_stats'])
      return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))

    leaves, treedef = jax.tree.flatten(v['arch'])
    sizes = [leaf.size for leaf in leaves]

    @jax.jit
    def objective(vector):
      pieces = jnp.split(vector, np.cumsum(sizes)[:-1])
      arch = jax.tree.unflatten(treedef, [p.reshape(l.shape) for p, l in zip(pieces, leaves)])
      g = jax.grad(loss)(v['params'], arch, train_x, train_y)
      w = jax.tree.map(lambda w, g, m: w - xi * (s.momentum * m + g + s.weight_decay * w),
                       v['params'], g, t['buffer'])
      return loss(w, arch, arch_x, arch_y)

    base = jnp.concatenate([leaf.ravel() for leaf in leaves])
    h = 1e-5
    central = np.array([
        (objective(base.at[i].add(h)) - objective(base.at[i].add(-h))) / (2 * h)
        for i in range(base.size)])
    at_base = float(objective(base))
  exact = np.concatenate([np.ravel(x) for x in jax.tree.leaves(t['out']['second_order_exact'][0])])
  assert exact.dtype == np.float64 and exact.size == 2 * 14 * 8 + 2 * 14
  assert np.abs(exact).max() > 1e-3
  np.testing.assert_allclose(exact, central, rtol=0, atol=1e-8)
  # The unrolled gradient is far from the first-order one: the Hessian term matters.
  first = np.concatenate([np.ravel(x) for x in jax.tree.leaves(t['out']['first_order'][0])])
  assert _rel(first, exact) > 0.5
  # The reported loss is the arch-batch loss at the virtual weights.
  np.testing.assert_allclose(float(t['out']['second_order_exact'][2]), at_base, rtol=1e-12)


@TINY64
def test_second_order_finite_difference_agrees_with_exact(tiny64):
  out = tiny64['out']
  exact = _flat(out['second_order_exact'][0])
  first = _flat(out['first_order'][0])
  # The finite difference converges to the exact term: with a small eps they
  # agree to rounding error (the formula is right, not merely close) ...
  assert _rel(_flat(out['second_order_r0.0001'][0]), exact) < 1e-6
  # ... and with the reference's eps = 0.01 / ||v|| to 25% (the step crosses
  # ReLU/max-pool kinks of this tiny net; measured 12%), much closer than the
  # first-order gradient is.
  fd = _flat(out['second_order_r0.01'][0])
  assert _rel(fd, exact) < 0.25
  assert _rel(fd, exact) < 0.3 * _rel(first, exact)
  # Same loss (the virtual weights do not depend on eps).
  assert float(out['second_order_r0.01'][2]) == pytest.approx(float(out['second_order_exact'][2]),
                                                        rel=1e-12)


@TINY64
def test_second_order_keeps_train_pass_batch_stats(tiny64):
  """Both second-order strategies keep the BatchNorm statistics of the train-batch
  pass at w (the virtual step's); first order those of the arch-batch pass."""
  t = tiny64
  arch_x, arch_y, train_x, train_y = t['batches']
  v = t['variables']
  with jax.enable_x64(True):
    stats = jax.jit(lambda x, y: t['loss_fn'](v['params'], v['arch'], v['batch_stats'], x, y)[1][0])
    train_stats, arch_stats = stats(train_x, train_y), stats(arch_x, arch_y)
  close = lambda a, b: jax.tree.map(
      lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-12), a, b)
  for name in ('second_order_r0.01', 'second_order_exact'):
    close(t['out'][name][1], train_stats)
  close(t['out']['first_order'][1], arch_stats)
  stem_mean = lambda st: np.asarray(st['stem_bn']['mean'])
  assert not np.allclose(stem_mean(train_stats), stem_mean(arch_stats))
