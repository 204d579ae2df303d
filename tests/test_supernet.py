"""PC-DARTS supernet: partial-channel mixed op, shuffle, edge normalization, cells, network."""

import functools

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from pcdarts_jax.spaces.darts import genotypes
from pcdarts_jax.nn import initializers
from pcdarts_jax.nn import ops
from pcdarts_jax.spaces.darts import supernet
from pcdarts_jax.spaces.darts import cell_parts
from tests.compile_options import RUN_ONCE

PRIMS = genotypes.PRIMITIVES
# Hand-set, non-uniform op mixing weights (deliberately not a softmax).
MIX = np.array([0.9, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35], np.float32)


def _rand(shape, seed=0, scale=1.0):
  return np.asarray(scale * np.random.RandomState(seed).randn(*shape), np.float32)


# ------------------------------------------------------------------ channel shuffle


def test_channel_shuffle_arange():
  x = jnp.arange(8, dtype=jnp.float32).reshape(1, 1, 1, 8)
  out = np.asarray(cell_parts.channel_shuffle(x, 4)).ravel()
  np.testing.assert_array_equal(out, [0, 2, 4, 6, 1, 3, 5, 7])
  out2 = np.asarray(cell_parts.channel_shuffle(x, 2)).ravel()
  np.testing.assert_array_equal(out2, [0, 4, 1, 5, 2, 6, 3, 7])
  # Shuffling with groups K then C/K restores the order.
  back = cell_parts.channel_shuffle(cell_parts.channel_shuffle(x, 4), 2)
  np.testing.assert_array_equal(np.asarray(back).ravel(), np.arange(8))


# ---------------------------------------------------------------- PartialMixedOp


def _independent_mixed_op(x, weights, variables, channels, stride, k, ref):
  """Ops built alone for C/K channels, fed the mixed op's own variables by name."""
  width = channels // k
  x_ops = jnp.asarray(x[..., :width])
  params = flax.core.unfreeze(variables.get('params', {}))
  stats = flax.core.unfreeze(variables.get('batch_stats', {}))
  total = 0.0
  new_stats = {}
  for index, name in enumerate(PRIMS):
    op = ops.make_op(name, width, stride, affine=False, depthwise_impl='dense',
                     search=True)
    op_vars = {}
    if name in params:
      op_vars['params'] = params[name]
    if name in stats:
      op_vars['batch_stats'] = stats[name]
    y, upd = op.apply(op_vars, x_ops, train=True, mutable=['batch_stats'])
    if upd:
      new_stats[name] = upd['batch_stats']
    total = total + float(weights[index]) * np.asarray(y, np.float64)
  bypass = np.asarray(x[..., width:], np.float64)
  if stride == 2:
    bypass = ref.pool(bypass, 'max', 2, 2, 0)
  if k == 1:
    return total, bypass, total, new_stats
  return ref.channel_shuffle(np.concatenate([total, bypass], -1), k), bypass, total, new_stats


@pytest.mark.parametrize('stride', [1, 2])
def test_partial_mixed_op_matches_independent_computation(stride, ref):
  c, k = 8, 4
  width = c // k
  x = _rand((3, 8, 8, c), seed=stride)
  weights = jnp.asarray(MIX)
  mixed = supernet.PartialMixedOp(channels=c, stride=stride, partial_channels=k,
                                  depthwise_impl='dense', train=True)
  variables = mixed.init(jax.random.PRNGKey(0), jnp.asarray(x), weights)
  expected_params = {'sep_conv_3x3', 'sep_conv_5x5', 'dil_conv_3x3', 'dil_conv_5x5'}
  if stride == 2:
    expected_params.add('skip_connect')  # FactorizedReduce.
  assert set(variables['params']) == expected_params
  assert {'max_pool_3x3', 'avg_pool_3x3'} <= set(variables['batch_stats'])
  # Ops are built for C/K channels.
  assert variables['params']['sep_conv_3x3']['dw1']['kernel'].shape == (3, 3, 1, width)
  assert variables['params']['sep_conv_3x3']['pw1']['kernel'].shape == (1, 1, width, width)

  out, updates = mixed.apply(variables, jnp.asarray(x), weights,
                             mutable=['batch_stats'])
  out = np.asarray(out)
  expected, bypass, opsum, new_stats = _independent_mixed_op(
      x, MIX, variables, c, stride, k, ref)
  h = 8 // stride
  assert out.shape == expected.shape == (3, h, h, c)
  np.testing.assert_allclose(out, expected, atol=1e-5)
  # The mixed op's BN statistics are exactly those of the ops run separately.
  got_stats = flax.core.unfreeze(updates['batch_stats'])
  assert set(got_stats) == set(new_stats)
  for name in new_stats:
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
                 got_stats[name], new_stats[name])

  # Layout after the shuffle: out[..., j*K + g] holds concat[..., g*(C/K) + j];
  # g = 0 is the weighted op sum, g >= 1 is the (pooled) bypass, untouched.
  for j in range(width):
    np.testing.assert_allclose(out[..., j * k], opsum[..., j], atol=1e-5)
    for g in range(1, k):
      np.testing.assert_allclose(out[..., j * k + g], bypass[..., (g - 1) * width + j],
                                 atol=1e-6)
  if stride == 1:  # Bypass channels are copied exactly.
    np.testing.assert_array_equal(out[..., 1], x[..., width])
    np.testing.assert_array_equal(out[..., k + 1], x[..., width + 1])
  else:  # 2x2 max pool of the bypass.
    np.testing.assert_allclose(out[0, 0, 0, 1], x[0, 0:2, 0:2, width].max(), rtol=1e-6)


def test_partial_mixed_op_only_none_zeroes_processed_channels():
  c, k = 8, 4
  x = jnp.asarray(_rand((2, 6, 6, c), seed=5))
  weights = jnp.asarray(np.eye(len(PRIMS), dtype=np.float32)[0])  # all on 'none'
  mixed = supernet.PartialMixedOp(c, 1, k, depthwise_impl='dense')
  variables = mixed.init(jax.random.PRNGKey(0), x, weights)
  out, _ = mixed.apply(variables, x, weights, mutable=['batch_stats'])
  out = np.asarray(out)
  np.testing.assert_array_equal(out[..., 0::k], 0.0)
  # The other channels are the bypass, non-zero.
  np.testing.assert_array_equal(out[..., 1::k], np.asarray(x)[..., 2:4])


def test_partial_channels_1_is_darts_mixed_op(ref):
  c = 2  # Same op shapes as the C=8, K=4 test above: reuses compiled kernels.
  x = _rand((3, 8, 8, c), seed=6)
  weights = jnp.asarray(MIX)
  mixed = supernet.PartialMixedOp(c, 2, partial_channels=1, depthwise_impl='dense')
  variables = mixed.init(jax.random.PRNGKey(1), jnp.asarray(x), weights)
  out, _ = mixed.apply(variables, jnp.asarray(x), weights, mutable=['batch_stats'])
  expected, _, opsum, _ = _independent_mixed_op(x, MIX, variables, c, 2, 1, ref)
  assert out.shape == (3, 4, 4, c)  # all channels processed, no bypass
  np.testing.assert_allclose(np.asarray(out), opsum, atol=1e-5)


# ------------------------------------------------------------ edge normalization


def test_edge_normalization_groups():
  betas = jnp.asarray(_rand((14,), seed=7, scale=2.0))
  w = np.asarray(supernet.edge_normalization(betas, 4))
  assert w.shape == (14,)
  groups = [(0, 2), (2, 5), (5, 9), (9, 14)]
  assert [e - s for s, e in groups] == [2, 3, 4, 5]
  assert tuple(groups) == genotypes.node_edge_ranges(4)
  b = np.asarray(betas, np.float64)
  for s, e in groups:
    np.testing.assert_allclose(w[s:e].sum(), 1.0, atol=1e-6)
    expected = np.exp(b[s:e]) / np.exp(b[s:e]).sum()
    np.testing.assert_allclose(w[s:e], expected, rtol=1e-5)
  # A softmax over all 14 would not sum to 1 per group.
  assert abs(w.sum() - 4.0) < 1e-5
  np.testing.assert_allclose(w, genotypes.edge_weights(np.asarray(betas)), rtol=1e-5)

  betas2 = betas.at[3].add(1.5)  # edge 3 belongs to node 1 (edges 2..4)
  w2 = np.asarray(supernet.edge_normalization(betas2, 4))
  np.testing.assert_array_equal(w2[:2], w[:2])
  np.testing.assert_array_equal(w2[5:], w[5:])
  assert w2[3] > w[3] and w2[2] < w[2] and w2[4] < w[4]
  np.testing.assert_allclose(w2[2:5].sum(), 1.0, atol=1e-6)


# ------------------------------------------------------------------ search cells


def _np_cell_skip_only(s0, s1, pp, op_w, edge_w, k, reduction, reduction_prev,
                       edge_params, ref):
  """A search cell whose op set is ('none', 'skip_connect'), in NumPy."""
  if reduction_prev:
    p0 = ref.factorized_reduce(s0, pp['preprocess0']['conv_1']['kernel'],
                               pp['preprocess0']['conv_2']['kernel'])
  else:
    p0 = ref.bn(ref.pointwise(ref.relu(s0), pp['preprocess0']['conv']['kernel']))
  p1 = ref.bn(ref.pointwise(ref.relu(s1), pp['preprocess1']['conv']['kernel']))
  states = [p0, p1]
  c = p1.shape[-1]
  width = c // k
  for node, (start, end) in enumerate(genotypes.node_edge_ranges(4)):
    acc = 0.0
    for j in range(end - start):
      e = start + j
      x = states[j]
      stride = 2 if reduction and j < 2 else 1
      if stride == 1:
        y = op_w[e, 1] * x[..., :width]
      else:
        k1, k2 = edge_params(e)
        y = op_w[e, 1] * ref.factorized_reduce(x[..., :width], k1, k2)
      if k > 1:
        bypass = x[..., width:]
        if stride == 2:
          bypass = ref.pool(bypass, 'max', 2, 2, 0)
        y = ref.channel_shuffle(np.concatenate([y, bypass], -1), k)
      acc = acc + edge_w[e] * y
    states.append(acc)
  return np.concatenate(states[2:], -1)


@pytest.mark.parametrize('reduction', [False, True])
def test_search_cell_matches_numpy(reduction, ref):
  c, k = 4, 2
  prims = ('none', 'skip_connect')
  rng = np.random.RandomState(8)
  s1 = rng.randn(2, 8, 8, 5).astype(np.float32)
  s0 = rng.randn(2, 16 if reduction else 8, 16 if reduction else 8, 6).astype(np.float32)
  op_w = rng.rand(14, 2).astype(np.float32)
  edge_w = rng.rand(14).astype(np.float32)
  cell = supernet.SearchCell(c, reduction=reduction, reduction_prev=reduction,
                             partial_channels=k, primitives=prims,
                             depthwise_impl='dense')
  args = (jnp.asarray(s0), jnp.asarray(s1), jnp.asarray(op_w), jnp.asarray(edge_w))
  variables = cell.init(jax.random.PRNGKey(0), *args)
  out, _ = cell.apply(variables, *args, mutable=['batch_stats'])
  params = flax.core.unfreeze(variables['params'])

  def edge_params(e):  # Stacked per-edge FactorizedReduce kernels, per edge_slot.
    group, pos = cell_parts.edge_slot(e)
    assert group == 'input_edges'
    fr = params[group]['skip_connect']
    return fr['conv_1']['kernel'][pos], fr['conv_2']['kernel'][pos]

  if reduction:
    kernels = params['input_edges']['skip_connect']['conv_1']['kernel']
    assert kernels.shape == (8, 1, 1, c // k, c // (2 * k))  # 8 input edges
    assert not np.allclose(kernels[0], kernels[1])  # each edge its own weights
  expected = _np_cell_skip_only(s0, s1, params, op_w, edge_w, k, reduction,
                                reduction, edge_params, ref)
  h = 4 if reduction else 8
  assert out.shape == expected.shape == (2, h, h, 4 * c)
  np.testing.assert_allclose(np.asarray(out), expected, atol=1e-4)


def test_edge_groups_and_slots():
  groups = dict(cell_parts.edge_groups(4))
  assert [e for e, _, _ in groups['input_edges']] == [0, 1, 2, 3, 5, 6, 9, 10]
  assert [e for e, _, _ in groups['node_edges']] == [4, 7, 8, 11, 12, 13]
  assert cell_parts.edge_slot(0) == ('input_edges', 0)
  assert cell_parts.edge_slot(9) == ('input_edges', 6)
  assert cell_parts.edge_slot(7) == ('node_edges', 1)
  assert cell_parts.edge_slot(13) == ('node_edges', 5)
  with pytest.raises(ValueError):
    cell_parts.edge_slot(14)


# ------------------------------------------------------------------- the network


def _tiny_config(**extra):
  return ml_collections.ConfigDict({'model': dict(
      init_channels=4, layers=3, num_classes=10, partial_channels=2,
      depthwise_impl='dense', **extra)})


@pytest.fixture(scope='module')
def tiny():
  model = supernet.build_supernet(_tiny_config())
  x = jnp.asarray(_rand((2, 8, 8, 3), seed=9))
  variables = initializers.init_variables(model, jax.random.PRNGKey(0), x[:1])
  apply = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']))
  logits, updates = apply(variables, x)
  return dict(model=model, x=x, variables=variables, logits=logits, updates=updates)


def test_supernet_collections_and_arch(tiny):
  v = tiny['variables']
  assert set(v) == {'params', 'batch_stats', 'arch'}
  arch = v['arch']
  assert set(arch) == {'alphas_normal', 'alphas_reduce', 'betas_normal', 'betas_reduce'}
  assert arch['alphas_normal'].shape == arch['alphas_reduce'].shape == (14, 8)
  assert arch['betas_normal'].shape == arch['betas_reduce'].shape == (14,)
  for a in arch.values():  # 1e-3 * N(0, 1)
    a = np.asarray(a)
    assert 0 < np.abs(a).max() < 1e-2 and np.std(a) > 1e-4
  assert not np.allclose(arch['alphas_normal'], arch['alphas_reduce'])
  assert set(v['params']) == {'stem_conv', 'stem_bn', 'cell_0', 'cell_1', 'cell_2',
                              'classifier'}
  # Layers 3: reductions at 1 and 2; cell 2 follows a reduction.
  assert 'conv_1' in v['params']['cell_2']['preprocess0']
  assert 'conv' in v['params']['cell_1']['preprocess0']
  assert v['params']['cell_0']['preprocess1']['conv']['kernel'].shape == (1, 1, 12, 4)
  assert v['params']['cell_1']['preprocess1']['conv']['kernel'].shape == (1, 1, 16, 8)
  assert v['params']['cell_2']['preprocess0']['conv_1']['kernel'].shape == (1, 1, 16, 8)
  assert v['params']['classifier']['kernel'].shape == (64, 10)
  # Edge parameters are stacked along a leading axis (8 input edges, 6 node edges);
  # the ops act on C/K channels.
  dw = v['params']['cell_0']['input_edges']['sep_conv_3x3']['dw1']['kernel']
  assert dw.shape == (8, 3, 3, 1, 2)
  dw = v['params']['cell_1']['node_edges']['dil_conv_5x5']['dw']['kernel']
  assert dw.shape == (6, 5, 5, 1, 4)


def test_init_variables_values(tiny):
  v = tiny['variables']
  p = v['params']
  np.testing.assert_array_equal(p['stem_bn']['scale'], 1.0)  # the only affine BN
  np.testing.assert_array_equal(p['stem_bn']['bias'], 0.0)
  bound = 1 / np.sqrt(27)
  k = np.asarray(p['stem_conv']['kernel'])
  assert np.abs(k).max() <= bound and np.abs(k).max() > 0.5 * bound
  cb = np.asarray(p['classifier']['bias'])
  assert np.abs(cb).max() <= 1 / np.sqrt(64) and np.abs(cb).max() > 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(v['batch_stats'])[0]:
    np.testing.assert_array_equal(leaf, 1.0 if path[-1].key == 'var' else 0.0)
  scales = [p for p, _ in jax.tree_util.tree_flatten_with_path(p)[0]
            if p[-1].key in ('scale', 'bias') and p[0].key.startswith('cell')]
  assert not scales  # affine=False BNs in the cells


def test_init_variables_matches_model_init_structure(tiny):
  model, x, v = tiny['model'], tiny['x'], tiny['variables']
  # unsafe_rbg keys: model.init's per-parameter key derivation compiles much faster.
  key = jax.random.key(0, impl='unsafe_rbg')
  ref_vars = jax.jit(lambda r, x: model.init(r, x, train=False))(key, x[:1])
  ref_vars = flax.core.unfreeze(ref_vars)
  assert jax.tree.structure(ref_vars) == jax.tree.structure(v)
  shapes = lambda t: jax.tree.map(lambda a: (a.shape, a.dtype), t)
  assert shapes(ref_vars) == shapes(v)


def test_supernet_apply(tiny, ref):
  v, x, logits, updates = tiny['variables'], tiny['x'], tiny['logits'], tiny['updates']
  assert logits.shape == (2, 10)
  assert np.all(np.isfinite(np.asarray(logits)))
  assert np.asarray(logits).std() > 0
  assert set(updates) == {'batch_stats'}
  new = updates['batch_stats']
  assert jax.tree.structure(new) == jax.tree.structure(v['batch_stats'])
  # Stem BN running mean after one step: 0.1 * batch mean of the stem conv output.
  stem = ref.conv(x, v['params']['stem_conv']['kernel'], 1, 1)
  np.testing.assert_allclose(np.asarray(new['stem_bn']['mean']),
                             0.1 * stem.mean(axis=(0, 1, 2)), atol=1e-5)
  changed = [not np.allclose(a, b) for a, b in
             zip(jax.tree.leaves(new), jax.tree.leaves(v['batch_stats']))]
  assert sum(changed) > 0.9 * len(changed)


def test_supernet_unrolled_edges_match_scan(tiny):
  model = tiny['model'].clone(edge_impl='scan', unroll_edges=True)
  assert model.unroll_edges and not tiny['model'].unroll_edges
  logits, updates = jax.jit(
      lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']))(
          tiny['variables'], tiny['x'])
  np.testing.assert_allclose(np.asarray(logits), np.asarray(tiny['logits']), atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
               updates['batch_stats'], tiny['updates']['batch_stats'])


def assert_scanned_cells_match_unrolled(models, variables, x, labels, evaluate=True):
  """models: {scan_cells: supernet}. The scanned model traces to a smaller jaxpr
  and gives the unrolled one's loss, logits, weight and arch gradients and
  BatchNorm statistics (and, with `evaluate`, eval logits), same trees."""

  def loss(model, params, arch, stats):
    logits, updates = model.apply({'params': params, 'arch': arch, 'batch_stats': stats}, x,
                                  train=True, mutable=['batch_stats'])
    nll = -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(len(labels)), labels])
    return nll, (logits, updates['batch_stats'])

  out, equations = {}, {}
  for scan, model in models.items():
    fn = functools.partial(loss, model)
    args = (variables['params'], variables['arch'], variables['batch_stats'])
    equations[scan] = len(jax.make_jaxpr(fn)(*args).jaxpr.eqns)
    out[scan] = [jax.jit(jax.value_and_grad(fn, argnums=(0, 1), has_aux=True),
                         compiler_options=RUN_ONCE)(*args)]
    if evaluate:
      out[scan].append(jax.jit(lambda v, model=model: model.apply(v, x, train=False),
                               compiler_options=RUN_ONCE)(variables))
  # The run's cell is traced once: the scanned program is smaller.
  assert equations[True] < equations[False]
  assert jax.tree.structure(out[True]) == jax.tree.structure(out[False])
  for a, b in zip(jax.tree.leaves(out[False]), jax.tree.leaves(out[True])):
    np.testing.assert_allclose(b, a, rtol=2e-5, atol=2e-6 * max(1.0, float(np.abs(a).max())))


# CI time: the grouped cells of a pruned stage (DrNAS' on a GPU, with their own
# preprocess) run by default; the scan around the cells is the same code for the
# scan layout's full and per-edge cells, slow cases (-m slow).
@pytest.mark.parametrize('masked,edge_impl', [
    pytest.param(False, 'scan', marks=pytest.mark.slow),
    pytest.param(True, 'scan', marks=pytest.mark.slow), (True, 'grouped')])
def test_cell_runs_scanned_match_unrolled(masked, edge_impl, monkeypatch):
  """A run of consecutive normal cells runs as one pipelined lax.scan over their
  stacked variables (traced once), with the loop's per-cell variables and its
  numbers: logits, loss, every weight and arch gradient, BatchNorm statistics,
  eval logits; also in a DrNAS pruned stage (per-edge op masks)."""
  # 9 cells, reductions at 3 and 6: runs 1-2 (cell 0 reads the stem's 3 x C
  # channels, not the cells' 2 x C, so cell 1's preprocess0 does too), 4-5 and
  # 7-8 (after a reduction: FactorizedReduce first), scanned from 2 cells here.
  monkeypatch.setattr(supernet, 'MIN_SCANNED_RUN', 2)
  # Three ops (one conv chain): the cells' structure is what is tested.
  primitives = ('max_pool_3x3', 'skip_connect', 'sep_conv_3x3')
  config = _tiny_config(steps=2, multiplier=2, stem_multiplier=3, edge_normalization=True,
                        primitives=primitives)
  config.model.layers = 9
  config.model.edge_impl = edge_impl
  rng = np.random.RandomState(3)
  masks = ({kind: (rng.rand(5, len(primitives)).argsort(-1) < 2).astype(np.int32)
            for kind in ('normal', 'reduce')} if masked else None)
  # 16 x 16 images: at 8 x 8 the last stage's BatchNorms see 2 x 2 pixels of 2
  # images, and float rounding alone moves some gradients by 1e-3.
  x = jnp.asarray(_rand((2, 16, 16, 3), seed=4))
  labels = jnp.array([1, 7])
  models = {scan: supernet.build_supernet(config, op_masks=masks).clone(scan_cells=scan)
            for scan in (False, True)}
  variables = initializers.init_variables(models[True], jax.random.PRNGKey(0), x[:1])
  # Init builds each cell (the loop's tree): the same variables either way.
  assert jax.tree.structure(variables) == jax.tree.structure(
      initializers.init_variables(models[False], jax.random.PRNGKey(0), x[:1]))
  assert {f'cell_{i}' for i in range(9)} <= set(variables['params'])
  assert_scanned_cells_match_unrolled(models, variables, x, labels)


def test_scan_cells_scans_runs_of_three_or_more():
  """A run of 2 normal cells stays unrolled (a scanned run computes one
  preprocess it drops: MIN_SCANNED_RUN); runs of 3 or more are scanned."""
  assert supernet.MIN_SCANNED_RUN == 3
  primitives = ('max_pool_3x3', 'skip_connect', 'sep_conv_3x3')
  x = jnp.zeros((2, 16, 16, 3))
  for layers, scanned in ((9, False), (12, True)):  # runs 1-2, 4-5, 7-8; 1-3, 5-7, 9-11
    config = _tiny_config(steps=2, multiplier=2, edge_normalization=True,
                          primitives=primitives)
    config.model.layers = layers
    model = supernet.build_supernet(config)
    variables = initializers.init_variables(model, jax.random.PRNGKey(0), x[:1])
    equations = {}
    for scan in (False, True):
      jaxpr = jax.make_jaxpr(lambda v, m=model.clone(scan_cells=scan): m.apply(
          v, x, train=True, mutable=['batch_stats']))(variables)
      equations[scan] = len(jaxpr.jaxpr.eqns)
    if scanned:
      assert equations[True] < 0.7 * equations[False], equations  # 6 cells traced, not 12
    else:
      assert equations[True] == equations[False], equations


def test_supernet_without_edge_normalization(tiny):
  model = supernet.build_supernet(_tiny_config(edge_normalization=False))
  assert not model.edge_normalization
  v = initializers.init_variables(model, jax.random.PRNGKey(0), tiny['x'][:1])
  assert set(v['arch']) == {'alphas_normal', 'alphas_reduce'}
  shapes = lambda t: jax.tree.map(lambda a: a.shape, t)
  # Edge normalization adds only arch parameters, no weights.
  assert shapes(v['params']) == shapes(tiny['variables']['params'])
  assert shapes(v['batch_stats']) == shapes(tiny['variables']['batch_stats'])


def test_supernet_random_channel_sampling(tiny):
  """Same parameters as `first`; a fresh channel subset per rng, per edge; the
  scanned and unrolled edges draw the same subsets; no rng in eval mode."""
  model = tiny['model'].clone(channel_sampling='random')
  v, x = tiny['variables'], tiny['x']
  shapes = lambda t: jax.tree.map(lambda a: (a.shape, a.dtype), t)
  assert shapes(initializers.init_variables(model, jax.random.PRNGKey(0), x[:1])) == shapes(v)
  # Each program runs once or twice: compiled without LLVM's optimizations.
  run = lambda m: jax.jit(lambda key: m.apply(v, x, train=True, mutable=['batch_stats'],
                                                rngs={'channels': key})[0],
                          compiler_options=RUN_ONCE)
  apply = run(model)
  a, b = apply(jax.random.PRNGKey(1)), apply(jax.random.PRNGKey(2))
  assert a.shape == (2, 10) and np.all(np.isfinite(np.asarray(a)))
  np.testing.assert_array_equal(np.asarray(apply(jax.random.PRNGKey(1))), np.asarray(a))
  assert not np.allclose(a, b, atol=1e-3)
  assert not np.allclose(a, tiny['logits'], atol=1e-3)  # not the first C/K channels
  unrolled = run(model.clone(unroll_edges=True))(jax.random.PRNGKey(1))
  np.testing.assert_allclose(np.asarray(unrolled), np.asarray(a), atol=1e-5)
  # Evaluation without a 'channels' rng uses the first C/K channels.
  evaluate = lambda m: jax.jit(lambda: m.apply(v, x, train=False), compiler_options=RUN_ONCE)()
  np.testing.assert_array_equal(np.asarray(evaluate(model)), np.asarray(evaluate(tiny['model'])))


def test_supernet_channel_shift_same_parameters(tiny):
  model = tiny['model'].clone(channel_mixing='shift')
  v, x = tiny['variables'], tiny['x']
  logits, _ = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']))(v, x)
  assert logits.shape == (2, 10) and np.all(np.isfinite(np.asarray(logits)))
  assert not np.allclose(logits, tiny['logits'], atol=1e-3)


# ------------------------------------------------------------ batched edges


# CI time (about a minute each): `batched` is a layout one chooses by name, not the
# default anywhere; its shared pieces (batched_ops) run in the grouped layout's
# tests, and test_program lowers it.
@pytest.mark.slow
@pytest.mark.parametrize('k', [2, 1])
def test_batched_edges_match_scan(k):
  """edge_impl='batched' (edges side by side on channels) computes the scanned
  cell's function on the same variables: logits, BN statistics, gradients of
  weights and architecture, in train and eval mode, normal and reduction cells.
  float64, so that the comparison is not lost in BatchNorm's rounding. Three
  nodes (CI time: 63 s instead of 93 s alone) still give node groups of one and
  of two edges, the latter a proper subset of the stacked edges; 'conv' is what
  depthwise_impl='auto' picks on accelerators, where batched cells are meant to
  run."""
  config = _tiny_config()
  config.model.update(init_channels=8, partial_channels=k, depthwise_impl='conv', steps=3,
                      multiplier=3)
  models = {impl: supernet.build_supernet(config).clone(edge_impl=impl)
            for impl in ('scan', 'batched')}
  labels = jnp.array([1, 4, 7])
  with jax.enable_x64(True):
    f64 = lambda tree: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)
    x = jnp.asarray(_rand((3, 8, 8, 3), seed=11), jnp.float64)
    v = f64(initializers.init_variables(models['scan'], jax.random.PRNGKey(3), x[:1]))
    shapes = lambda t: jax.tree.map(lambda a: a.shape, t)
    assert shapes(initializers.init_variables(models['batched'], jax.random.PRNGKey(3),
                                              x[:1])) == shapes(v)

    def loss(model, params, arch):
      logits, updates = model.apply({**v, 'params': params, 'arch': arch}, x, train=True,
                                    mutable=['batch_stats'])
      nll = -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(3), labels])
      return nll, (logits, updates['batch_stats'])

    results = {}
    for impl, model in models.items():
      grads, (logits, stats) = jax.jit(jax.grad(
          functools.partial(loss, model), argnums=(0, 1), has_aux=True))(v['params'], v['arch'])
      evaluated = jax.jit(lambda v_, m=model: m.apply(v_, x, train=False))(v)
      results[impl] = (grads, logits, stats, evaluated)
  (g_scan, logits, stats, eval_scan), (g_b, logits_b, stats_b, eval_b) = (
      results['scan'], results['batched'])
  np.testing.assert_allclose(logits_b, logits, rtol=1e-9, atol=1e-10)
  np.testing.assert_allclose(eval_b, eval_scan, rtol=1e-9, atol=1e-10)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-10),
               stats_b, stats)
  moved = [not np.allclose(a, b) for a, b in
           zip(jax.tree.leaves(stats_b), jax.tree.leaves(v['batch_stats']))]
  assert sum(moved) > 0.9 * len(moved)  # every edge's statistics are updated
  assert jax.tree.structure(g_b) == jax.tree.structure(g_scan)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-10),
               g_b, g_scan)
  assert float(np.abs(np.asarray(g_scan[1]['alphas_normal'])).max()) > 0


def test_edge_impl_resolution_and_errors():
  assert supernet.resolve_edge_impl('auto') == 'scan'  # every backend (see its docstring)
  assert supernet.resolve_edge_impl('batched') == 'batched'
  assert supernet.resolve_edge_impl('auto', 'random') == 'scan'  # per-edge channel subsets
  assert supernet.resolve_edge_impl('auto', 'first', PRIMS + ('conv_7x1_1x7',)) == 'scan'
  assert supernet.resolve_edge_impl('scan', 'random') == 'scan'
  with pytest.raises(ValueError, match="channel_sampling='first'"):
    supernet.resolve_edge_impl('batched', 'random')
  with pytest.raises(ValueError, match='conv_7x1_1x7'):
    supernet.resolve_edge_impl('batched', 'first', PRIMS + ('conv_7x1_1x7',))
  with pytest.raises(ValueError, match=r"model.edge_impl='vmap' is not one of"):
    supernet.resolve_edge_impl('vmap')


def test_stacked_edge_kernels_get_per_edge_fan_in(tiny):
  """The edge axis of a stacked kernel is not part of its fan-in: a 3x3
  depthwise kernel is U(+-1/3) as in PyTorch, not U(+-1/sqrt(8*9))."""
  params = tiny['variables']['params']['cell_0']
  for group, edges in (('input_edges', 8), ('node_edges', 6)):
    dw = np.asarray(params[group]['sep_conv_3x3']['dw1']['kernel'])
    assert dw.shape[0] == edges
    assert 0.8 / 3 < np.abs(dw).max() <= 1 / 3
    pw = np.asarray(params[group]['sep_conv_3x3']['pw1']['kernel'])  # (E, 1, 1, 2, 2)
    assert 0.5 / np.sqrt(2) < np.abs(pw).max() <= 1 / np.sqrt(2)


def test_max_pool_2x2_matches_flax():
  for shape in ((2, 6, 8, 3), (1, 7, 5, 2)):
    x = jnp.asarray(_rand(shape, seed=12))
    np.testing.assert_array_equal(cell_parts.max_pool_2x2(x), nn.max_pool(x, (2, 2), (2, 2)))
