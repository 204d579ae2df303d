"""The grouped cell layout (model.edge_impl='grouped', grouped_cell.py) against the scan.

Each case compiles one scan/grouped pair of tiny supernets (C 8, 3 cells: a
normal cell, a reduction cell, and a reduction cell after a reduction, whose
s0 goes through FactorizedReduce) and compares, on the same variables, the
train-mode logits, loss, every weight and arch gradient and the new BatchNorm
statistics, and the eval-mode logits. float32: the layouts differ only in the
rounding of their batched matmuls and reductions (about an ulp per cell),
which the BatchNorms of later cells amplify, so tolerances are relative to
each array's scale. The running statistics and the arch values are random, so
that an edge reading another edge's statistics or weights shows.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from pcdarts_jax.run import checkpoint
from pcdarts_jax.search import validation as config_validation
from pcdarts_jax.spaces.darts import genotypes
from pcdarts_jax.spaces.darts import grouped_cell
from pcdarts_jax.nn import initializers
from pcdarts_jax.spaces.darts import supernet
from pcdarts_jax.spaces.darts import cell_parts
from tests import compile_options

BATCH = 3
LABELS = jnp.array([1, 4, 7])
# Each compiled program here runs once or twice: LLVM's optimizations would cost
# more CPU time than they save (about a third of each compile). Both layouts are
# compiled alike, so the comparisons are unchanged.
RUN_ONCE = compile_options.RUN_ONCE
# The K=4 pair's tests share its compile: one xdist worker (--dist loadgroup).
K4_PAIR = pytest.mark.xdist_group('grouped_cell_k4_pair')


def _jit_init(module, *args, **kwargs):
  """module.init, compiled: unsafe_rbg keys and no LLVM optimization compile in
  a tenth of the time of an eager init (the values only need to be random)."""
  return jax.jit(lambda key, *a: module.init(key, *a, **kwargs), compiler_options=RUN_ONCE)(
      jax.random.key(0, impl='unsafe_rbg'), *args)


def _config(**model):
  base = dict(init_channels=8, layers=3, num_classes=10, partial_channels=4,
              depthwise_impl='shifted', steps=4, multiplier=4)
  base.update(model)
  return ml_collections.ConfigDict({'model': base})


def _randomized(variables, seed):
  """Running statistics away from (0, 1) and arch values away from uniform."""
  rng = np.random.RandomState(seed)
  stats = jax.tree_util.tree_map_with_path(
      lambda path, a: jnp.asarray(
          rng.uniform(0.5, 1.5, a.shape) if path[-1].key == 'var'
          else 0.1 * rng.randn(*a.shape), jnp.float32), variables['batch_stats'])
  arch = jax.tree.map(lambda a: jnp.asarray(0.5 * rng.randn(*a.shape), jnp.float32),
                      variables['arch'])
  return {**variables, 'batch_stats': stats, 'arch': arch}


# The layouts compared: `merged` is the grouped layout with merge_separable.
LAYOUTS = {'scan': dict(edge_impl='scan'), 'grouped': dict(edge_impl='grouped'),
           'merged': dict(edge_impl='grouped', merge_separable=True)}


def _pair(config, seed=0, op_masks=None):
  """The scan, grouped and merged models of `config`, shared variables, and per
  layout a jitted gradient (loss, logits, new statistics, (weight, arch)
  gradients) and eval forward (each compiled when first run)."""
  models = {name: supernet.build_supernet(config, op_masks=op_masks).clone(**fields)
            for name, fields in LAYOUTS.items()}
  x = jnp.asarray(np.random.RandomState(seed + 1).randn(BATCH, 8, 8, 3), jnp.float32)
  variables = _randomized(
      initializers.init_variables(models['scan'], jax.random.PRNGKey(seed), x[:1]), seed)

  def loss(model, params, arch, batch_stats):
    logits, updates = model.apply(
        {'params': params, 'arch': arch, 'batch_stats': batch_stats}, x, train=True,
        mutable=['batch_stats'])
    nll = -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(BATCH), LABELS])
    return nll, (logits, updates['batch_stats'])

  gradient, evaluate = {}, {}
  for impl, model in models.items():
    gradient[impl] = jax.jit(jax.value_and_grad(
        functools.partial(loss, model), argnums=(0, 1), has_aux=True),
                             compiler_options=RUN_ONCE)
    evaluate[impl] = jax.jit(lambda v, m=model: m.apply(v, x, train=False),
                             compiler_options=RUN_ONCE)
  return dict(models=models, x=x, variables=variables, gradient=gradient, evaluate=evaluate)


def _run(pair, impl, variables=None):
  v = pair['variables'] if variables is None else variables
  (nll, (logits, stats)), grads = pair['gradient'][impl](v['params'], v['arch'],
                                                         v['batch_stats'])
  return dict(loss=nll, logits=logits, batch_stats=stats, grads=grads,
              eval=pair['evaluate'][impl](v))


def _close(got, want, rtol):
  """|got - want| <= rtol * max|want| per array (plus a floor for all-zero ones)."""
  def check(path, a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, jax.tree_util.keystr(path)
    bound = rtol * max(float(np.abs(b).max()), 1e-6)
    err = float(np.abs(a - b).max())
    assert err <= bound, f'{jax.tree_util.keystr(path)}: {err:.3g} > {bound:.3g}'
  jax.tree_util.tree_map_with_path(check, got, want)


def _assert_same_step(pair, layout='grouped'):
  scan, grouped = _run(pair, 'scan'), _run(pair, layout)
  assert jax.tree.structure(grouped['grads']) == jax.tree.structure(scan['grads'])
  assert jax.tree.structure(grouped['batch_stats']) == jax.tree.structure(scan['batch_stats'])
  _close(grouped['logits'], scan['logits'], 1e-5)
  _close(grouped['loss'], scan['loss'], 1e-6)
  _close(grouped['eval'], scan['eval'], 1e-5)
  _close(grouped['batch_stats'], scan['batch_stats'], 1e-5)
  _close(grouped['grads'], scan['grads'], 1e-4)
  # The comparison means something: every statistic moved, gradients are not zero.
  moved = [not np.allclose(a, b) for a, b in zip(
      jax.tree.leaves(scan['batch_stats']), jax.tree.leaves(pair['variables']['batch_stats']))]
  assert all(moved)
  for leaf in jax.tree.leaves(scan['grads'][1]):
    assert float(np.abs(np.asarray(leaf)).max()) > 1e-6
  return scan, grouped


# ------------------------------------------------------------------ equality with scan

# Partial channels K, edge normalization, nodes per cell, depthwise form: `shifted`
# is what a GPU runs in float32, `conv` (grouped convs) in bfloat16.
CASES = {
    'k4_edge_norm': dict(partial_channels=4, edge_normalization=True, steps=4, multiplier=4),
    'k1_plain': dict(partial_channels=1, edge_normalization=False, steps=2, multiplier=2,
                     depthwise_impl='conv'),
    # The rest of the grid (CI time: each case compiles two supernet gradients).
    'k4_plain': dict(partial_channels=4, edge_normalization=False, steps=3, multiplier=3,
                     depthwise_impl='conv'),
    'k1_edge_norm': dict(partial_channels=1, edge_normalization=True, steps=3, multiplier=3),
}
SLOW_CASES = ('k4_plain', 'k1_edge_norm')


@pytest.fixture(scope='module')
def k4_pair():
  """Shared by the K=4 equality case and the checkpoint test (one compile)."""
  return _pair(_config(**CASES['k4_edge_norm']))


@pytest.mark.parametrize('case', [
    pytest.param(c, marks=pytest.mark.slow) if c in SLOW_CASES
    else pytest.param(c, marks=K4_PAIR) if c == 'k4_edge_norm' else c for c in CASES])
def test_grouped_matches_scan(case, request):
  """Full cells (4 nodes: stages of 8, 3, 2 and 1 edges, the node stages at
  scattered stacked positions) for the default K=4 with edge normalization;
  2-node cells (stages of 4 and 1 edges) for K=1, 3-node cells for the others."""
  pair = (request.getfixturevalue('k4_pair') if case == 'k4_edge_norm'  # (built only here)
          else _pair(_config(**CASES[case]), seed=3))
  assert jax.tree.map(np.shape, pair['variables']) == jax.tree.map(
      np.shape, initializers.init_variables(pair['models']['grouped'], jax.random.PRNGKey(0),
                                            pair['x'][:1]))
  _assert_same_step(pair)


@K4_PAIR
def test_merged_separable_matches_scan(k4_pair):
  """model.merge_separable: each depthwise conv and its 1x1 conv as one dense
  conv, the first layer per source (both cell inputs' 4 edges as one conv of
  two groups), on the scanned cell's variables. Same step as the scan within
  float32 rounding (the merged conv sums k*k*C products in another order)."""
  _assert_same_step(k4_pair, 'merged')


PRUNED_STEPS = 3
STEM_MULTIPLIER = 3  # SearchNetwork's: the stem's output has 3 C channels


def _pruned_masks(steps=PRUNED_STEPS):
  """Three ops kept per edge, a different three on neighbouring edges: some
  edges keep `none`, a pool or the skip, some only conv chains."""
  edges = sum(i + 2 for i in range(steps))
  masks = {}
  for offset, kind in enumerate(('normal', 'reduce')):
    mask = np.zeros((edges, len(genotypes.PRIMITIVES)), np.int32)
    for e in range(edges):
      for j in (0, 3, 5):
        mask[e, (e + offset + j) % len(genotypes.PRIMITIVES)] = 1
    masks[kind] = mask
  return masks


def _pruned_config():
  return _config(partial_channels=2, steps=PRUNED_STEPS, multiplier=PRUNED_STEPS,
                 depthwise_impl='conv')


def test_grouped_matches_scan_in_pruned_stages():
  """DrNAS progressive learning's pruned stages: every edge keeps its own ops,
  the variables are the masked cell's per-edge ones. K = 2. Merged separable
  convs too: there the two inputs of a stage have different numbers of
  readers of an op, so its first layer is one conv per input."""
  masks = _pruned_masks()
  pair = _pair(_pruned_config(), seed=5, op_masks=masks)
  params = pair['variables']['params']['cell_0']
  assert 'edge_0' in params and 'input_edges' not in params  # the masked layout's tree
  assert jax.tree.map(np.shape, pair['variables']) == jax.tree.map(
      np.shape, initializers.init_variables(pair['models']['grouped'], jax.random.PRNGKey(0),
                                            pair['x'][:1]))
  _assert_same_step(pair)
  _assert_same_step(pair, 'merged')


def _equations(jaxpr):
  """The equations of `jaxpr` and of the jaxprs inside it (custom VJPs, nested jits)."""
  for eqn in jaxpr.eqns:
    yield eqn
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          sub = sub.jaxpr
        if isinstance(sub, jax.extend.core.Jaxpr):
          yield from _equations(sub)


def _count_primitives(jaxpr, names):
  """How many equations of `jaxpr` and of the jaxprs inside it apply one of the
  primitives `names`."""
  return sum(eqn.primitive.name in names for eqn in _equations(jaxpr))


@pytest.mark.parametrize('pruned,merged', [(False, False), (True, False), (False, True),
                                           (True, True)])
def test_each_op_runs_once_per_stage(pruned, merged):
  """The grouped forward (traced, not compiled) has one depthwise conv per
  SepConv/DilConv layer per stage that keeps the op, whatever the number of its
  edges; one 1x1 matmul per chain layer per stage for all those ops; one for
  the stride-2 skips of the sources with as many edges keeping it; one for the
  two preprocess 1x1 convs where s0 and s1 have one shape; and one 3x3 max
  pool per source that an edge keeping it reads (8 + 3 + 2 + 1 edges, 5
  sources per cell; 14 max pools in the scan's edges). With merge_separable
  no depthwise conv and no chain matmul is left: a chain's first layer is one
  conv per number of readers that the stage's sources have of the op (one
  group per source), its second one conv (a group per edge). No gather or
  scatter in any case."""
  masks = _pruned_masks() if pruned else None
  config = _pruned_config() if pruned else _config(depthwise_impl='conv')
  steps = config.model.steps
  model = supernet.build_supernet(config, op_masks=masks).clone(
      edge_impl='grouped', merge_separable=merged)
  x = jnp.zeros((BATCH, 8, 8, 3), jnp.float32)
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x[:1], train=False))
  jaxpr = jax.make_jaxpr(lambda v: model.apply(v, x, train=True, mutable=['batch_stats']))(
      variables).jaxpr
  depthwise_layers = {'sep_conv_3x3': 2, 'sep_conv_5x5': 2, 'dil_conv_3x3': 1,
                      'dil_conv_5x5': 1}
  convs, pools = 1, 0  # the stem's conv
  dots = 1  # the classifier
  per_edge_convs = 1  # what running each edge's ops on their own would take
  for layer in range(config.model.layers):
    reductions = supernet.reduction_layers(config.model.layers)
    kind = 'reduce' if layer in reductions else 'normal'
    # Preprocessing: s0's FactorizedReduce (its halves as one matmul) and s1's
    # 1x1 conv, or both 1x1 convs as one where s0 and s1 have one shape.
    same_shape = layer == 0 or layer > 1 or STEM_MULTIPLIER == config.model.multiplier
    dots += 2 if layer - 1 in reductions or not same_shape else 1
    # stage s reads input s (s < 2: stage 0) or node s - 1; sources per stage
    stage_ops, stage_sources, readers = {}, {}, {}
    for node, (start, end) in enumerate(genotypes.node_edge_ranges(steps)):
      for j in range(end - start):
        kept = [p for i, p in enumerate(genotypes.PRIMITIVES)
                if masks is None or masks[kind][start + j][i]]
        stage = max(j - 1, 0)
        per_edge_convs += sum(depthwise_layers.get(p, 0) for p in kept)
        for p in kept:
          stage_ops.setdefault(stage, set()).add(p)
          stage_sources.setdefault((stage, p), set()).add(j)
          counts = readers.setdefault((stage, p), {})
          counts[j] = counts.get(j, 0) + 1
    for stage, kept in stage_ops.items():
      if merged:
        convs += sum(len(set(readers[(stage, p)].values())) + depthwise_layers[p] - 1
                     for p in kept if p in depthwise_layers)
      else:
        convs += sum(depthwise_layers.get(p, 0) for p in kept)
        dots += max([depthwise_layers.get(p, 0) for p in kept], default=0)
      if kind == 'reduce' and stage == 0 and 'skip_connect' in kept:
        # FactorizedReduce: one matmul for the sources with as many edges keeping it
        dots += len(set(readers[(stage, 'skip_connect')].values()))
      pools += len(stage_sources[(stage, 'max_pool_3x3')]) if 'max_pool_3x3' in kept else 0
  assert _count_primitives(jaxpr, {'conv_general_dilated'}) == convs
  assert _count_primitives(jaxpr, {'reduce_window_max'}) == pools
  assert _count_primitives(jaxpr, {'dot_general'}) == dots
  assert convs < per_edge_convs  # some op is shared by several edges of a stage
  # Edge rows are picked and running statistics written with static slices: on a
  # GPU each gather or scatter would be a kernel of its own, and so would the
  # scatter-add of each gather's gradient.
  assert _count_primitives(jaxpr, {'gather', 'scatter', 'scatter-add'}) == 0
  # Input channels per group of each conv's kernel (HWIO): 1 is a depthwise conv.
  widths = [eqn.invars[1].aval.shape[2] for eqn in _equations(jaxpr)
            if eqn.primitive.name == 'conv_general_dilated']
  assert (1 in widths) != merged
  if not pruned:
    assert convs == 1 + 3 * steps * 6 and pools == 3 * 5
    assert dots == 1 + 1 + 2 + 2 + 3 * steps * (0 if merged else 2) + 2 * 1


def test_dense_depthwise_stays_per_edge():
  """depthwise_impl='dense' (the digits configs' CPU form): the same cell as
  the scan's, with each edge's dense diagonal kernel its own conv group (a
  kernel across all the edges' channels would cost E times the FLOPs)."""
  cells = {impl: supernet.SearchCell(8, True, False, steps=3, multiplier=3, partial_channels=2,
                                     depthwise_impl='dense', edge_impl=impl)
           for impl in ('scan', 'grouped')}
  rng = np.random.RandomState(4)
  s0, s1 = (jnp.asarray(rng.randn(2, 8, 8, 12), jnp.float32) for _ in range(2))
  weights = jax.nn.softmax(jnp.asarray(rng.randn(9, 8), jnp.float32))
  betas = jnp.asarray(rng.rand(9), jnp.float32)
  variables = _jit_init(cells['scan'], s0, s1, weights, betas, train=False)
  apply = {impl: (lambda v, c=cell: c.apply(v, s0, s1, weights, betas, train=True,
                                            mutable=['batch_stats']))
           for impl, cell in cells.items()}
  out = {impl: jax.jit(f, compiler_options=RUN_ONCE)(variables) for impl, f in apply.items()}
  _close(out['grouped'], out['scan'], 1e-5)
  jaxpr = jax.make_jaxpr(apply['grouped'])(variables).jaxpr
  # HWIO: input channels per group
  widths = {eqn.invars[1].aval.shape[2] for eqn in _equations(jaxpr)
            if eqn.primitive.name == 'conv_general_dilated'}
  assert widths == {8 // 2}  # one edge's C/K channels


# Cells whose preprocessing and stride-2 skips take the batched matmuls'
# other branches: s0 after a reduction (FactorizedReduce) with skips kept by 2
# edges of s0 and 1 of s1 (one matmul each), one stem output read by both
# preprocess convs, s0 and s1 of one shape, and of different widths.
# (reduction, reduction_prev, s0 shape, s1 shape (None: s1 is s0), skip mask)
PREPROCESS_CASES = {
    'after_reduction_uneven_skips': (True, True, (16, 16, 12), (8, 8, 16), True),
    'one_stem_output': (False, False, (8, 8, 12), None, False),
    'same_shape': (False, False, (8, 8, 12), (8, 8, 12), False),
    'different_widths': (True, False, (8, 8, 12), (8, 8, 16), False),
}


@pytest.mark.parametrize('case', PREPROCESS_CASES)
def test_preprocess_and_skip_matmuls_match_scan(case):
  """A cell's outputs, input and weight gradients, new statistics and eval
  outputs under the grouped layout against the scan (or the masked per-edge
  cell) for every branch of grouped_cell.preprocess and of the stride-2 skips."""
  reduction, reduction_prev, shape0, shape1, masked = PREPROCESS_CASES[case]
  mask = None
  if masked:  # 2 nodes: edges 0-3 read s0, s1, s0, s1; edge 4 node 0
    kept = [('skip_connect', 'sep_conv_3x3', 'avg_pool_3x3'),
            ('skip_connect', 'dil_conv_3x3', 'max_pool_3x3'),
            ('skip_connect', 'sep_conv_5x5'), ('dil_conv_5x5', 'none', 'avg_pool_3x3'),
            ('skip_connect', 'sep_conv_3x3')]
    mask = tuple(tuple(int(p in row) for p in genotypes.PRIMITIVES) for row in kept)
  cells = {impl: supernet.SearchCell(8, reduction, reduction_prev, steps=2, multiplier=2,
                                     partial_channels=2, depthwise_impl='conv', op_mask=mask,
                                     edge_impl=impl)
           for impl in ('scan', 'grouped')}
  rng = np.random.RandomState(6)
  s0 = jnp.asarray(rng.randn(2, *shape0), jnp.float32)
  s1 = s0 if shape1 is None else jnp.asarray(rng.randn(2, *shape1), jnp.float32)
  weights = jax.nn.softmax(jnp.asarray(rng.randn(5, 8), jnp.float32))
  betas = jnp.asarray(rng.rand(5), jnp.float32)
  variables = _jit_init(cells['scan'], s0, s1, weights, betas, train=False)
  stats = jax.tree_util.tree_map_with_path(
      lambda path, a: jnp.asarray(rng.uniform(0.5, 1.5, a.shape) if path[-1].key == 'var'
                                  else 0.1 * rng.randn(*a.shape), jnp.float32),
      variables['batch_stats'])
  variables = {**variables, 'batch_stats': stats}
  probe = None

  def run(cell, params, a, b):
    b = a if shape1 is None else b  # one traced array for both: the stem case
    out, new = cell.apply({'params': params, 'batch_stats': stats}, a, b, weights, betas,
                          train=True, mutable=['batch_stats'])
    return jnp.sum(out * probe), (out, new['batch_stats'])

  results = {}
  for impl, cell in cells.items():
    if probe is None:
      shape = jax.eval_shape(lambda c=cell: c.apply(variables, s0, s1, weights, betas,
                                                    train=False)).shape
      probe = jnp.asarray(rng.randn(*shape), jnp.float32)
    (_, (out, new)), grads = jax.jit(jax.value_and_grad(
        functools.partial(run, cell), argnums=(0, 1, 2), has_aux=True),
        compiler_options=RUN_ONCE)(variables['params'], s0, s1)
    evaluated = jax.jit(lambda v, a, b, c=cell: c.apply(
        v, a, a if shape1 is None else b, weights, betas, train=False),
        compiler_options=RUN_ONCE)(variables, s0, s1)
    results[impl] = dict(out=out, stats=new, grads=grads, eval=evaluated)
  assert jax.tree.structure(results['grouped']) == jax.tree.structure(results['scan'])
  _close(results['grouped']['out'], results['scan']['out'], 1e-5)
  _close(results['grouped']['eval'], results['scan']['eval'], 1e-5)
  _close(results['grouped']['stats'], results['scan']['stats'], 1e-5)
  _close(results['grouped']['grads'], results['scan']['grads'], 1e-4)
  preprocess = results['scan']['grads'][0]['preprocess0']
  assert all(float(np.abs(np.asarray(g)).max()) > 0 for g in jax.tree.leaves(preprocess))


@K4_PAIR
def test_checkpoint_moves_between_layouts(k4_pair, tmp_path):
  """A state written under one layout restores (checkpoint.Checkpoints, shapes
  from the other layout's model) and continues under the other as under its own."""
  pair = k4_pair
  other = {'scan': 'grouped', 'grouped': 'scan'}

  def step(state, impl):
    out = _run(pair, impl, state)
    weight_grads, arch_grads = out['grads']
    update = lambda p, g: p - 0.1 * g
    return {'params': jax.tree.map(update, state['params'], weight_grads),
            'arch': jax.tree.map(update, state['arch'], arch_grads),
            'batch_stats': out['batch_stats']}, out['loss']

  for writer in ('scan', 'grouped'):
    reader = other[writer]
    state, _ = step(pair['variables'], writer)
    store = checkpoint.Checkpoints(str(tmp_path / writer), keep=1)
    store.save(1, state, {'edge_impl': writer})
    like = initializers.init_variables(pair['models'][reader], jax.random.PRNGKey(1),
                                       pair['x'][:1])
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), like)
    restored, meta = store.restore(1, abstract)
    store.close()
    assert meta == {'edge_impl': writer}
    # Uncommitted arrays, as the state had: the compiled gradients are reused.
    restored = jax.tree.map(lambda a: jnp.asarray(np.asarray(a)), restored)
    jax.tree.map(np.testing.assert_array_equal, restored, state)
    continued, loss = step(restored, reader)
    reference, reference_loss = step(state, writer)
    _close(loss, reference_loss, 1e-6)
    _close(continued, reference, 1e-4)


def test_bfloat16_cell_accumulates_in_float32():
  """A bfloat16 grouped cell stays within bfloat16 rounding of the float32 one,
  and its mixing sums are float32: the node accumulators are (adds of) float32
  values converted to bfloat16 once per node."""
  cell = supernet.SearchCell(8, False, False, steps=2, multiplier=2, partial_channels=2,
                             depthwise_impl='shifted', edge_impl='grouped')
  rng = np.random.RandomState(7)
  s0, s1 = (jnp.asarray(rng.randn(2, 8, 8, 12), jnp.float32) for _ in range(2))
  weights = jax.nn.softmax(jnp.asarray(rng.randn(5, 8), jnp.float32))
  betas = jnp.asarray(rng.rand(5), jnp.float32)
  variables = _jit_init(cell, s0, s1, weights, betas, train=False)
  run = jax.jit(lambda a, b: cell.apply(variables, a, b, weights, betas, train=True,
                                        mutable=['batch_stats'])[0], compiler_options=RUN_ONCE)
  full = np.asarray(run(s0, s1), np.float64)
  half = run(s0.astype(jnp.bfloat16), s1.astype(jnp.bfloat16))
  assert half.dtype == jnp.bfloat16
  err = np.abs(np.asarray(half, np.float64) - full).max() / np.abs(full).max()
  assert 0 < err < 3e-2
  jaxpr = jax.make_jaxpr(lambda a, b: cell.apply(variables, a, b, weights, betas, train=True,
                                                 mutable=['batch_stats'])[0])(
                                                     s0.astype(jnp.bfloat16),
                                                     s1.astype(jnp.bfloat16))
  # Every add at a node's op-part shape (N, H, W, C/K) is a float32 mixing sum.
  adds = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == 'add'
          and e.outvars[0].aval.shape[-1] == 4 and e.outvars[0].aval.shape[1:3] == (8, 8)]
  assert adds and all(e.outvars[0].aval.dtype == jnp.float32 for e in adds)


# ------------------------------------------------------------------ selection and errors


def test_edge_impl_grouped_resolution_and_errors():
  assert supernet.resolve_edge_impl('grouped') == 'grouped'
  for platform in ('cpu', 'cuda', 'rocm', 'tpu', None):
    assert supernet.resolve_edge_impl('auto', platform=platform) == supernet.AUTO_EDGE_IMPLS.get(
        platform or jax.default_backend(), 'scan')
  assert supernet.resolve_edge_impl('auto', platform='cpu') == 'scan'
  with pytest.raises(ValueError, match=r"model.edge_impl='grouped' needs "
                     r"model.channel_sampling='first' \(got 'random'\)"):
    supernet.resolve_edge_impl('grouped', 'random')
  with pytest.raises(ValueError, match=r"model.edge_impl='grouped' has no form of "
                     r"\['conv_7x1_1x7'\]"):
    supernet.resolve_edge_impl('grouped', 'first', genotypes.PRIMITIVES + ('conv_7x1_1x7',))
  with pytest.raises(ValueError, match="is not one of \\('auto', 'batched', 'grouped', 'scan'\\)"):
    supernet.resolve_edge_impl('grouped_v2')


def test_auto_falls_back_to_scan_where_grouped_cannot_run(monkeypatch):
  monkeypatch.setitem(supernet.AUTO_EDGE_IMPLS, 'cuda', 'grouped')
  assert supernet.resolve_edge_impl('auto', platform='cuda') == 'grouped'
  assert supernet.resolve_edge_impl('auto', 'random', platform='cuda') == 'scan'
  assert supernet.resolve_edge_impl('auto', platform='cpu') == 'scan'


def test_search_config_refuses_grouped_with_random_sampling():
  from configs import cifar10_search  # pylint: disable=g-import-not-at-top
  config = cifar10_search.get_config()
  config.model.edge_impl = 'grouped'
  config_validation.validate_search_config(config)
  config.model.channel_sampling = 'random'
  with pytest.raises(config_validation.ConfigError) as info:
    config_validation.validate_search_config(config)
  message = str(info.value)
  assert 'model.edge_impl' in message and "channel_sampling='first'" in message
  assert '\n' not in message


def test_cell_edges_stage_layout():
  """Stages by source: 8 input edges, then 3, 2 and 1 from nodes 0, 1 and 2, at
  the scanned cell's stacked positions."""
  edges = grouped_cell.cell_edges(4, 2, genotypes.PRIMITIVES)
  stages = [[e for e in edges if grouped_cell.stage_of(e) == s] for s in range(4)]
  assert [len(s) for s in stages] == [8, 3, 2, 1]
  assert all(e.stride == 2 and e.scope == 'input_edges' for e in stages[0])
  assert [e.position for e in stages[0]] == list(range(8))
  assert [(e.index, e.target, e.position) for e in stages[1]] == [(4, 1, 0), (7, 2, 1),
                                                                   (11, 3, 3)]
  assert [(e.index, e.position) for e in stages[2]] == [(8, 2), (12, 4)]
  assert [(e.index, e.position) for e in stages[3]] == [(13, 5)]
  for e in edges:
    assert cell_parts.edge_slot(e.index) == (e.scope, e.position)
  masked = grouped_cell.cell_edges(4, 1, genotypes.PRIMITIVES,
                                   np.eye(14, len(genotypes.PRIMITIVES), dtype=int))
  assert masked[3].scope == 'edge_3' and masked[3].position is None
  assert masked[3].kept == (genotypes.PRIMITIVES[3],)


def test_merge_separable_needs_the_grouped_layout():
  from configs import cifar10_search  # pylint: disable=g-import-not-at-top
  config = cifar10_search.get_config()
  assert config.model.merge_separable is False
  config.model.merge_separable = True
  with pytest.raises(config_validation.ConfigError,
                     match=r"model.merge_separable=True .* needs model.edge_impl='grouped' "
                     r"\(got 'auto'\)"):
    config_validation.validate_search_config(config)
  config.model.edge_impl = 'grouped'
  config_validation.validate_search_config(config)


def test_take_and_set_rows_equal_array_indexing():
  """The slice forms of x[idx] and x.at[idx].set(v) for static indices: runs,
  gaps, out of order, all rows, and another axis."""
  x = jnp.arange(24.0).reshape(6, 4)
  for idx in ([0, 1, 3], [2, 4], [5], [0, 1, 2, 3, 4, 5], [4, 0, 1]):
    np.testing.assert_array_equal(grouped_cell.take_rows(x, idx), x[np.array(idx)])
    values = -jnp.arange(1.0, len(idx) + 1)[:, None] * jnp.ones((1, 4))
    np.testing.assert_array_equal(grouped_cell.set_rows(x, idx, values),
                                  x.at[np.array(idx)].set(values))
  np.testing.assert_array_equal(grouped_cell.take_rows(x, [3, 1], axis=1), x[:, [3, 1]])
