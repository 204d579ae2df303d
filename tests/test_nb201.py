"""The NAS-Bench-201 space: cell, macro network, genotypes, data, results table."""

import json
import os
import pickle

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import drnas_nb201_nonprogressive_search
from configs import drnas_nb201_search
from configs import nb201_cifar10_search
from configs import nb201_darts_autodl_search
from configs import nb201_cifar100_search
from configs import nb201_digits_search
from configs import nb201_imagenet16_search
from pcdarts_jax.search import validation as config_validation
from pcdarts_jax.data import datasets as data
from pcdarts_jax.nn import initializers
from pcdarts_jax.search import search as loop
from pcdarts_jax.spaces import relaxation
from pcdarts_jax import spaces
from pcdarts_jax.spaces.nb201 import space as nb201
from pcdarts_jax.spaces.nb201 import table as nb201_table
from tests import compile_options
from tests.test_supernet import assert_scanned_cells_match_unrolled

PRIMS = nb201.PRIMITIVES
BEST = '|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|'


def tiny_model(**overrides):
  fields = dict(init_channels=4, num_classes=10, cells_per_stage=1, partial_channels=1)
  fields.update(overrides)
  return ml_collections.ConfigDict(fields)


_jit = compile_options.jit_once  # Programs that run once.


def _init(module, *args, **kwargs):
  """module.init, compiled, with an unsafe_rbg key: an eager (or threefry) init
  compiles each op's key derivation on its own, many times slower."""
  return _jit(lambda key, *a: module.init(key, *a, **kwargs))(
      jax.random.key(0, impl='unsafe_rbg'), *args)


def shapes_of(module, x_shape, **kwargs):
  x = jax.ShapeDtypeStruct(x_shape, jnp.float32)
  return flax.core.unfreeze(jax.eval_shape(
      lambda r, x: module.init(r, x, train=False, **kwargs), jax.random.PRNGKey(0), x))


# ------------------------------------------------------------------ cell


def test_ops_and_edges_order():
  assert PRIMS == ('none', 'skip_connect', 'nor_conv_1x1', 'nor_conv_3x3', 'avg_pool_3x3')
  assert nb201.EDGES == ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))
  assert nb201.edge_labels() == ['0->1', '0->2', '1->2', '0->3', '1->3', '2->3']


def test_cell_sums_edges_in_order():
  # Only skip_connect kept: edge e scales its source by w[e], so the output
  # identifies which edge feeds which node.
  mask = tuple(tuple(int(k == 1) for k in range(5)) for _ in range(6))
  cell = nb201.SearchCell(3, op_mask=mask)
  w = np.array([2.0, 3.0, 5.0, 7.0, 11.0, 13.0])
  weights = jnp.zeros((6, 5)).at[:, 1].set(w)
  x = jnp.ones((1, 4, 4, 3))
  variables = cell.init(jax.random.PRNGKey(0), x, weights)
  assert not variables  # skip connections only: no parameters
  out = cell.apply(variables, x, weights)
  node1 = w[0]
  node2 = w[1] + w[2] * node1
  node3 = w[3] + w[4] * node1 + w[5] * node2
  np.testing.assert_allclose(out, node3 * np.ones((1, 4, 4, 3)))


def test_cell_parameters_per_edge():
  shapes = shapes_of(nb201.build_supernet(tiny_model(partial_channels=2)), (2, 8, 8, 3))
  cell = shapes['params']['cell_0']
  assert sorted(cell) == [f'edge_{e}' for e in range(6)]
  for e in range(6):  # K = 2: the ops see C/K = 2 channels; avg pool has no BN.
    assert sorted(cell[f'edge_{e}']) == ['nor_conv_1x1', 'nor_conv_3x3']
    assert cell[f'edge_{e}']['nor_conv_3x3']['conv']['kernel'].shape == (3, 3, 2, 2)
    assert cell[f'edge_{e}']['nor_conv_1x1']['conv']['kernel'].shape == (1, 1, 2, 2)
    # Search cells: BN without scale or shift.
    assert 'bn' not in cell[f'edge_{e}']['nor_conv_3x3']
    assert shapes['batch_stats']['cell_0'][f'edge_{e}']['nor_conv_3x3']['bn']['mean'].shape == (2,)


# ------------------------------------------------------------------ macro network


@pytest.mark.parametrize('size', [32, 16])
def test_supernet_shapes(size):
  model = nb201.build_supernet(tiny_model(init_channels=4, partial_channels=2))
  shapes = shapes_of(model, (2, size, size, 3))
  assert shapes['arch'][nb201.ARCH_NAME].shape == (6, 5)
  params = shapes['params']
  assert params['stem_conv']['kernel'].shape == (3, 3, 3, 4)
  assert params['stem_bn']['scale'].shape == (4,)  # stem BN is affine
  assert params['resblock_1']['conv_a']['conv']['kernel'].shape == (3, 3, 4, 8)
  assert params['resblock_1']['conv_b']['conv']['kernel'].shape == (3, 3, 8, 8)
  assert params['resblock_1']['shortcut']['kernel'].shape == (1, 1, 4, 8)
  assert params['resblock_2']['conv_a']['conv']['kernel'].shape == (3, 3, 8, 16)
  assert params['last_bn']['scale'].shape == (16,)
  assert params['classifier']['kernel'].shape == (16, 10)
  assert sorted(k for k in params if k.startswith('cell_')) == ['cell_0', 'cell_1', 'cell_2']
  variables = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
  (logits, state) = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=False, capture_intermediates=True,
                               mutable=['intermediates']), variables, x)
  assert logits.shape == (2, 10)
  inter = state['intermediates']
  s = size
  assert inter['stem_bn']['__call__'][0].shape == (2, s, s, 4)
  assert inter['cell_0']['__call__'][0].shape == (2, s, s, 4)
  assert inter['resblock_1']['__call__'][0].shape == (2, s // 2, s // 2, 8)
  assert inter['cell_1']['__call__'][0].shape == (2, s // 2, s // 2, 8)
  assert inter['resblock_2']['__call__'][0].shape == (2, s // 4, s // 4, 16)
  assert inter['cell_2']['__call__'][0].shape == (2, s // 4, s // 4, 16)


def test_default_macro_has_five_cells_per_stage():
  model = nb201.build_supernet(nb201_cifar10_search.get_config())
  shapes = shapes_of(model, (1, 32, 32, 3))
  assert sum(k.startswith('cell_') for k in shapes['params']) == 15
  assert shapes['params']['classifier']['kernel'].shape == (64, 10)


def test_stage_cells_scanned_match_unrolled():
  """Each stage's cells run as one lax.scan over their stacked variables
  (spaces/cell_scan.py): the unrolled loop's variables and numbers (logits, loss,
  weight and arch gradients, BatchNorm statistics; the eval branch of the shared
  scan is tested in test_supernet)."""
  x = jnp.asarray(np.random.RandomState(2).randn(2, 8, 8, 3), jnp.float32)
  labels = jnp.array([3, 8])
  models = {scan: nb201.build_supernet(tiny_model(cells_per_stage=2, scan_cells=scan))
            for scan in (False, True)}
  variables = _init(models[True], x[:1])
  assert_scanned_cells_match_unrolled(models, variables, x, labels, evaluate=False)


def test_fast_init_matches_structure():
  model = nb201.build_supernet(tiny_model(partial_channels=2))
  x = jnp.zeros((1, 8, 8, 3))
  variables = initializers.init_variables(model, jax.random.PRNGKey(0), x)
  shapes = shapes_of(model, (1, 8, 8, 3))
  assert jax.tree.map(lambda a: a.shape, variables) == jax.tree.map(lambda s: s.shape, shapes)
  assert 0 < np.abs(variables['arch']['alphas']).max() < 1e-2


def count_params(model, size=32):
  shapes = shapes_of(model, (1, size, size, 3))
  return sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes['params']))


def test_network_parameter_counts():
  """C 16, 5 cells per stage, 10 classes: the all-`none` network is the macro
  skeleton alone; each nor_conv_3x3 edge adds 9 C^2 weights and an affine BN."""
  config = nb201_cifar10_search.get_config()
  skeleton = count_params(nb201.build_network(
      '|none~0|+|none~0|none~1|+|none~0|none~1|none~2|', config))
  assert skeleton == (27 * 16 + 32 + (9 * 16 * 32 + 64) + (9 * 32 * 32 + 64) + 16 * 32 +
                      (9 * 32 * 64 + 128) + (9 * 64 * 64 + 128) + 32 * 64 + 128 + 64 * 10 + 10)
  all_conv = '|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|'
  per_cell = sum(6 * (9 * c * c + 2 * c) for c in (16, 32, 64))
  # 1,531,546: NAS-Bench-201's largest network (1.53 M parameters).
  assert count_params(nb201.build_network(all_conv, config)) == skeleton + 5 * per_cell == 1531546


def test_resnet_block_matches_reference(ref):
  block = nb201.ResNetBasicBlock(6, stride=2)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 6, 6, 3))
  variables = _init(block, x, train=True)
  out, _ = _jit(lambda v: block.apply(v, x, train=True, mutable=['batch_stats']))(variables)
  p = variables['params']
  a = ref.bn(ref.conv(ref.relu(x), p['conv_a']['conv']['kernel'], 2, 1))
  b = ref.bn(ref.conv(ref.relu(a), p['conv_b']['conv']['kernel'], 1, 1))
  xn = np.asarray(x, np.float64)
  pooled = (xn[:, 0::2, 0::2] + xn[:, 1::2, 0::2] + xn[:, 0::2, 1::2] + xn[:, 1::2, 1::2]) / 4
  shortcut = ref.pointwise(pooled, p['shortcut']['kernel'])
  np.testing.assert_allclose(out, shortcut + b, rtol=1e-4, atol=1e-5)


def test_batch_norm_statistics_over_devices():
  """With `axis_name`, every BN of the block and the cell normalises over the
  global batch: two 'devices' of 2 images compute what one device of 4 does."""
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 4, 4, 4))
  weights = jnp.full((6, 5), 0.2)
  for make in (lambda a: nb201.ResNetBasicBlock(8, axis_name=a),
               lambda a: nb201.SearchCell(4, partial_channels=2, axis_name=a)):
    args = () if isinstance(make(None), nb201.ResNetBasicBlock) else (weights,)
    variables = _init(make(None), x, *args, train=False)
    run = lambda a, x: make(a).apply(variables, x, *args, train=True, mutable=['batch_stats'])[0]
    split = _jit(jax.vmap(lambda x: run('devices', x), axis_name='devices'))(
        x.reshape(2, 2, 4, 4, 4))
    whole = _jit(lambda x: run(None, x))(x)
    np.testing.assert_allclose(split.reshape(whole.shape), whole,
                               rtol=1e-4, atol=1e-5)


def test_partial_channel_mixed_op(ref):
  """K = 2: the ops see the first C/2 channels, the rest bypass, then a shuffle."""
  op = nb201.MixedOp(4, kept=(1, 4), partial_channels=2)  # skip_connect, avg_pool_3x3
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 5, 5, 4))
  weights = jnp.asarray([0.0, 0.25, 0.0, 0.0, 0.75])
  out = _jit(lambda x, weights: op.apply({}, x, weights))(x, weights)
  xn = np.asarray(x)
  mixed = 0.25 * xn[..., :2] + 0.75 * ref.pool(xn[..., :2], 'avg', 3, 1, 1)
  expected = ref.channel_shuffle(np.concatenate([mixed, xn[..., 2:]], -1), 2)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ masks and relaxations


MASK = tuple(tuple(0 if (k == 3 or (e == 0 and k in (2, 4))) else 1 for k in range(5))
             for e in range(6))  # nor_conv_3x3 off everywhere; edge 0 also loses 1x1 and pool


def test_masked_ops_are_not_built():
  model = nb201.build_supernet(tiny_model(op_mask=MASK))
  params = shapes_of(model, (2, 8, 8, 3))['params']
  for cell in ('cell_0', 'cell_1', 'cell_2'):
    assert 'edge_0' not in params[cell]  # only none and skip_connect left: no weights
    for e in range(1, 6):
      assert sorted(params[cell][f'edge_{e}']) == ['nor_conv_1x1']


def test_stage_overrides():
  model = nb201.build_supernet(tiny_model(partial_channels=1), partial_channels=2,
                               op_masks={'alphas': np.asarray(MASK)})
  assert model.partial_channels == 2 and model.op_mask == MASK
  assert nb201.build_supernet(tiny_model(), op_masks=np.asarray(MASK)).op_mask == MASK
  with pytest.raises(ValueError, match='holds one'):
    nb201.build_supernet(tiny_model(), op_masks={'normal': MASK, 'reduce': MASK})


def test_prune_masks_and_cell_channels():
  alphas = np.array([[0.0, 3.0, 2.0, 1.0, 2.0]] * 6)
  first = nb201.prune_masks({'alphas': alphas}, 3)['alphas']
  np.testing.assert_array_equal(first[0], [0, 1, 1, 0, 1])  # tie 2.0: both kept
  alphas[:, 3] = 9.0  # op 3 was pruned: it cannot come back
  second = nb201.prune_masks({'alphas': alphas}, 2, {'alphas': first})['alphas']
  np.testing.assert_array_equal(second[0], [0, 1, 1, 0, 0])
  model = nb201.build_supernet(tiny_model(cells_per_stage=2), op_masks=second)
  assert [nb201.cell_channels(model, i) for i in range(6)] == [4, 4, 8, 8, 16, 16]
  params = shapes_of(model, (1, 8, 8, 3))['params']
  assert sorted(params['cell_5']['edge_0']) == ['nor_conv_1x1']


def test_masked_ops_are_not_computed():
  x = jnp.ones((1, 4, 4, 2))
  weights = jnp.full((5,), 0.2)
  ops_in = lambda kept: str(jax.make_jaxpr(
      lambda x: nb201.MixedOp(2, kept=kept).apply({}, x, weights))(x))
  # The 3x3 average pool is a reduce_window, or padded slices (`shifted`, CPU).
  pool = lambda jaxpr: 'reduce_window' in jaxpr or 'pad[' in jaxpr
  assert pool(ops_in((1, 4)))
  assert not pool(ops_in((0, 1)))


@pytest.mark.parametrize('kind', relaxation.RELAXATIONS)
def test_masked_ops_have_zero_weight(kind):
  model = nb201.build_supernet(tiny_model(op_mask=MASK, relaxation=kind))
  alphas = jax.random.normal(jax.random.PRNGKey(0), (6, 5))
  weights = model.apply({}, alphas, method=nb201.SearchNetwork.mixing_weights,
                        rngs={relaxation.RELAX_RNG: jax.random.PRNGKey(1)})
  mask = np.asarray(MASK, bool)
  np.testing.assert_array_equal(np.asarray(weights)[~mask], 0.0)
  np.testing.assert_allclose(np.sum(weights, -1), 1.0, rtol=1e-5)


def test_op_mask_errors():
  with pytest.raises(ValueError, match='model.op_mask must be a 6x5'):
    nb201.build_supernet(tiny_model(op_mask=((1, 1),)))
  bad = tuple((0,) * 5 if e == 2 else (1,) * 5 for e in range(6))
  with pytest.raises(ValueError, match=r"model.op_mask removes every op of edge\(s\) \['1->2'\]"):
    nb201.build_supernet(tiny_model(op_mask=bad))
  with pytest.raises(ValueError, match='model.partial_channels=3'):
    nb201.build_supernet(tiny_model(partial_channels=3))
  with pytest.raises(ValueError, match="model.relaxation='x' is not one of"):
    nb201.build_supernet(tiny_model(relaxation='x'))


def test_gradients_reach_arch_and_weights():
  """Through the relaxed (Dirichlet, pathwise) weights and a partial-channel cell."""
  cell = nb201.SearchCell(4, partial_channels=2)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 5, 4))
  variables = _init(cell, x, jnp.full((6, 5), 0.2), train=False)
  alphas = 1e-3 * jax.random.normal(jax.random.PRNGKey(2), (6, 5))

  @_jit
  def grads(params, alphas):
    def loss(params, alphas):
      weights = relaxation.mixing_weights('dirichlet', alphas, jax.random.PRNGKey(3))
      out, _ = cell.apply({'params': params, 'batch_stats': variables['batch_stats']}, x,
                          weights, train=True, mutable=['batch_stats'])
      return jnp.sum(jnp.sin(out))
    return jax.grad(loss, argnums=(0, 1))(params, alphas)

  g_params, g_alphas = grads(variables['params'], alphas)
  assert np.all(np.isfinite(g_alphas)) and np.abs(g_alphas).sum() > 0
  assert all(np.all(np.isfinite(v)) for v in jax.tree.leaves(g_params))
  assert np.abs(g_params['edge_5']['nor_conv_3x3']['conv']['kernel']).sum() > 0


# ------------------------------------------------------------------ genotypes


def test_genotype_string_round_trip():
  g = nb201.parse(BEST)
  assert g == ((('nor_conv_3x3', 0),),
               (('nor_conv_3x3', 0), ('nor_conv_3x3', 1)),
               (('skip_connect', 0), ('nor_conv_3x3', 1), ('nor_conv_3x3', 2)))
  assert nb201.genotype_str(g) == BEST
  d = nb201.genotype_to_dict(g)
  assert json.loads(json.dumps(d)) == d and d['arch_str'] == BEST
  assert nb201.genotype_from_dict(d) == g
  assert nb201.genotype_from_dict({'nodes': d['nodes']}) == g


@pytest.mark.parametrize('text, message', [
    ('|none~0|+|none~0|none~1|', 'has 2 nodes'),
    ('none~0|+|none~0|none~1|+|none~0|none~1|none~2|', 'must start and end with'),
    ('|none~0|+|none~0|+|none~0|none~1|none~2|', 'node 2 has 1 inputs'),
    ('|conv~0|+|none~0|none~1|+|none~0|none~1|none~2|', "'conv~0' is not"),
    ('|none0|+|none~0|none~1|+|none~0|none~1|none~2|', "'none0' is not"),
    ('|none~0|+|none~1|none~0|+|none~0|none~1|none~2|', 'input 0 of node 2 reads'),
])
def test_parse_errors(text, message):
  with pytest.raises(ValueError, match=message):
    nb201.parse(text)


def test_derive_argmax_per_edge():
  alphas = np.zeros((6, 5))
  best = [3, 2, 1, 1, 4, 0]  # per edge, in EDGES order
  for e, k in enumerate(best):
    alphas[e, k] = 1.0 + e
  g = nb201.derive({'alphas': alphas})
  assert nb201.genotype_str(g) == ('|nor_conv_3x3~0|+|nor_conv_1x1~0|skip_connect~1|'
                                   '+|skip_connect~0|avg_pool_3x3~1|none~2|')
  # Ties go to the first op; the argmax of alpha is that of every relaxation's mean.
  assert nb201.derive({'alphas': np.zeros((6, 5))})[2][2] == ('none', 2)
  # A masked op is never chosen.
  model = nb201.build_supernet(tiny_model(op_mask=MASK))
  alphas[:, 3] = 100.0
  g = nb201.derive({'alphas': alphas}, model)
  assert all(op != 'nor_conv_3x3' for node in g for op, _ in node)
  with pytest.raises(ValueError, match=r'alphas has shape \(14, 8\)'):
    nb201.derive({'alphas': np.zeros((14, 8))})


def test_space_interface():
  space = spaces.get('nb201')
  config = nb201_digits_search.get_config()
  model = space.build_supernet(config)
  assert isinstance(model, nb201.SearchNetwork)
  arch = {'alphas': np.random.default_rng(0).normal(size=(6, 5))}
  g = space.derive(arch, model)
  assert space.genotype_from_dict(space.genotype_to_dict(g)) == g
  scalars = space.arch_scalars(arch, model)
  assert len(scalars) == 1 + 6 * 5 and 'alpha_cell/edge_1->2/nor_conv_3x3' in scalars
  w = nb201.op_weights(arch)
  assert scalars['alpha_cell/edge_1->2/nor_conv_3x3'] == pytest.approx(w[2, 3])
  assert 0 < scalars['arch/cell/entropy'] <= np.log(5)
  assert isinstance(space.build_network(g, config), nb201.Network)


def test_draw(tmp_path):
  written = nb201.draw(nb201.parse(BEST.replace('skip_connect~0', 'none~0')),
                       str(tmp_path / 'epoch_001'))
  source = open(written[0]).read()
  assert written[0].endswith('epoch_001_cell.gv')
  assert source.count('label=nor_conv_3x3') == 5 and 'label=none' not in source
  assert all(os.path.exists(p) for p in written)
  heat = nb201.heatmap({'alphas': np.zeros((6, 5))}, None, str(tmp_path / 'arch.png'))
  assert os.path.getsize(heat) > 0


# ------------------------------------------------------------------ evaluation network


def test_network_shapes_and_affine_bn():
  model = nb201.build_network(BEST, tiny_model(num_classes=7))
  for size in (32, 16):
    shapes = shapes_of(model, (2, size, size, 3))
    assert 'arch' not in shapes
    edge = shapes['params']['cell_1']['edge_0']  # 0->1 nor_conv_3x3 at 2C
    assert edge['conv']['kernel'].shape == (3, 3, 8, 8)
    assert edge['bn']['scale'].shape == (8,)  # affine
    variables = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    logits, aux = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables,
                                 jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32))
    assert logits.shape == (2, 7) and aux is None
  # skip_connect~0 on edge 3 has no parameters.
  assert 'edge_3' not in shapes['params']['cell_0']


def test_none_edges_contribute_nothing():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 4, 3))
  chain = nb201.parse('|skip_connect~0|+|none~0|skip_connect~1|+|none~0|none~1|skip_connect~2|')
  cell = nb201.Cell(chain, 3)
  np.testing.assert_array_equal(cell.apply({}, x), x)
  empty = nb201.parse('|none~0|+|none~0|none~1|+|none~0|none~1|none~2|')
  np.testing.assert_array_equal(nb201.Cell(empty, 3).apply({}, x), np.zeros(x.shape))
  pool = nb201.parse('|avg_pool_3x3~0|+|none~0|none~1|+|none~0|skip_connect~1|none~2|')
  # Node 3 = node 1 (the pooled input); its none edges add nothing.
  np.testing.assert_allclose(nb201.Cell(pool, 3).apply({}, x),
                             nb201.ops.Pool('avg', 1).apply({}, x))


# ------------------------------------------------------------------ ImageNet16-120


def _write_imagenet16(directory, rng, per_file=6):
  """Tiny files in the down-sampled format; returns {file: (data, labels)}."""
  os.makedirs(directory, exist_ok=True)
  written = {}
  for name in data.IMAGENET16_TRAIN_FILES + data.IMAGENET16_TEST_FILES:
    pixels = rng.integers(0, 256, (per_file, 768), dtype=np.uint8)
    labels = [1, 120, 121, 1000, 57, 2][:per_file]
    with open(os.path.join(directory, name), 'wb') as f:
      pickle.dump({'data': pixels, 'labels': labels}, f)
    written[name] = (pixels, np.asarray(labels))
  return written


def test_imagenet16_loader(tmp_path):
  written = _write_imagenet16(str(tmp_path), np.random.default_rng(0))
  config = ml_collections.ConfigDict({'name': 'imagenet16_120', 'data_dir': str(tmp_path)})
  train = data.load_split(config, 'train')
  test = data.load_split(config, 'test')
  assert train.images.shape == (10 * 4, 16, 16, 3) and train.images.dtype == np.uint8
  assert test.images.shape == (4, 16, 16, 3)
  # Classes 1..120 kept (121 and 1000 dropped), relabelled 0..119.
  np.testing.assert_array_equal(test.labels, [0, 119, 56, 1])
  assert train.labels.dtype == np.int32 and train.labels.max() <= 119
  # Channel-planar rows: pixel (h, w) of channel c is data[c * 256 + h * 16 + w].
  pixels, _ = written['val_data']
  kept = pixels[[0, 1, 4, 5]]
  for n, h, w, c in [(0, 0, 0, 0), (1, 3, 7, 2), (3, 15, 1, 1), (2, 9, 15, 0)]:
    assert test.images[n, h, w, c] == kept[n, c * 256 + h * 16 + w]
  first = written['train_data_batch_1'][0][0].reshape(3, 16, 16).transpose(1, 2, 0)
  np.testing.assert_array_equal(train.images[0], first)
  assert data.NUM_CLASSES['imagenet16_120'] == 120
  assert data.IMAGE_SHAPES['imagenet16_120'] == (16, 16, 3)
  # The ImageNet16 subdirectory of data_dir is accepted too.
  _write_imagenet16(str(tmp_path / 'outer' / 'ImageNet16'), np.random.default_rng(1))
  assert len(data.load_imagenet16(str(tmp_path / 'outer'), 'test')) == 4


def test_imagenet16_missing(tmp_path):
  with pytest.raises(data.DataError, match='data.data_dir is not set.*train_data_batch_1'):
    data.load_imagenet16(None, 'train')
  with pytest.raises(data.DataError, match=r"data.data_dir='.*' lacks \['train_data_batch_1'"):
    data.load_imagenet16(str(tmp_path), 'train')
  _write_imagenet16(str(tmp_path), np.random.default_rng(0))
  with open(tmp_path / 'val_data', 'wb') as f:
    f.write(b'not a pickle')
  with pytest.raises(data.DataError, match='val_data.*is not a down-sampled ImageNet'):
    data.load_imagenet16(str(tmp_path), 'test')


# ------------------------------------------------------------------ results table


def test_table_json_and_csv(tmp_path):
  other = '|none~0|+|none~0|none~1|+|none~0|none~1|none~2|'
  path = tmp_path / 'nb201.json'
  path.write_text(json.dumps({BEST: {'cifar10': 94.37, 'cifar100': 73.51,
                                     'imagenet16_120': 47.31}, other: {'cifar10': 10.0}}))
  table = nb201_table.load_table(str(path))
  assert nb201_table.lookup(table, BEST, 'cifar100') == 73.51
  assert nb201_table.lookup(table, other, 'cifar100') is None
  assert nb201_table.lookup(table, '|x|', 'cifar10') is None
  assert nb201_table.lookup(None, BEST, 'cifar10') is None
  csv_path = tmp_path / 'nb201.csv'
  csv_path.write_text(f'arch_str,cifar10,imagenet16_120\n{BEST},94.37,47.31\n{other},10.0,\n')
  table = nb201_table.load_table(str(csv_path))
  assert table == {BEST: {'cifar10': 94.37, 'imagenet16_120': 47.31}, other: {'cifar10': 10.0}}


@pytest.mark.parametrize('content, message', [
    (None, 'does not exist'),
    ('{"a": ', 'cannot be read'),
    ('[1, 2]', 'must map architecture strings'),
    ('{"|none~0|": {"cifar10": 1}}', 'entry 1: NB-201 genotype'),
    (json.dumps({BEST: {'cifar10': 'high'}}), "accuracy 'high' is not a finite number"),
    (json.dumps({BEST: 94.0}), 'must be {dataset: accuracy}'),
    ('{}', 'holds no architectures'),
])
def test_table_errors(tmp_path, content, message):
  path = tmp_path / 'table.json'
  if content is not None:
    path.write_text(content)
  with pytest.raises(nb201_table.TableError, match=f'nb201.table=.*{message}'):
    nb201_table.load_table(str(path))


def test_table_from_config(tmp_path):
  config = nb201_cifar10_search.get_config()
  assert nb201_table.from_config(config) is None
  path = tmp_path / 't.json'
  path.write_text(json.dumps({BEST: {'cifar10': 94.37}}))
  config.nb201.table = str(path)
  table = nb201_table.from_config(config)
  assert nb201_table.lookup(table, BEST, config.data.name) == 94.37
  assert nb201_table.from_config(ml_collections.ConfigDict({'model': {}})) is None


def test_table_csv_header_error(tmp_path):
  path = tmp_path / 'table.csv'
  path.write_text('genotype,cifar10\nx,1\n')
  with pytest.raises(nb201_table.TableError, match='needs the header "arch_str'):
    nb201_table.load_table(str(path))


# ------------------------------------------------------------------ configs


def test_configs():
  c10 = nb201_cifar10_search.get_config()
  assert c10.model.space == 'nb201' and c10.model.init_channels == 16
  assert c10.model.cells_per_stage == 5 and c10.model.edge_normalization is False
  s = c10.search
  assert (s.epochs, s.batch_size, s.learning_rate, s.learning_rate_min) == (100, 64, 0.025, 1e-3)
  assert (s.momentum, s.weight_decay, s.arch_learning_rate) == (0.9, 3e-4, 3e-4)
  assert (s.arch_beta1, s.arch_beta2, s.arch_weight_decay) == (0.5, 0.999, 1e-3)
  assert s.architect == 'first_order' and c10.nb201.table is None
  c10.nb201.table = '/tmp/t.json'  # a placeholder: overridable from the command line
  assert nb201_cifar100_search.get_config().model.num_classes == 100
  in16 = nb201_imagenet16_search.get_config()
  assert in16.data.name == 'imagenet16_120' and in16.model.num_classes == 120
  digits = nb201_digits_search.get_config()
  assert digits.data.name == 'digits' and digits.model.cells_per_stage == 1


def test_drnas_configs_one_stage_and_progressive():
  """The paper's NB-201 numbers come from DrNAS' one-stage run (k 1, all ops, arch
  steps from the first epoch); the progressive one narrows k 4 -> 2, ops 5 -> 3."""
  one = drnas_nb201_nonprogressive_search.get_config()
  config_validation.validate_search_config(one)
  m, s = one.model, one.search
  assert (m.relaxation, m.partial_channels, m.edge_normalization) == ('dirichlet', 1, False)
  assert (s.epochs, tuple(s.stage_epochs), s.arch_start_epoch) == (100, (), 0)
  assert (s.arch_learning_rate, s.arch_regularizer, s.arch_weight_decay) == (3e-4, 'l2', 1e-3)
  assert s.lr_schedule_offset == 0
  progressive = drnas_nb201_search.get_config()
  config_validation.validate_search_config(progressive)
  p = progressive.search
  assert (tuple(p.stage_epochs), tuple(p.stage_partial_channels), tuple(p.stage_ops)) == (
      (50, 50), (4, 2), (5, 3))
  assert p.arch_start_epoch == 10 and p.lr_schedule_offset == 0


def test_autodl_darts_config_is_the_nb201_papers():
  """AutoDL's DARTS.config (the NAS-Bench-201 paper's DARTS): 50 epochs, wd 5e-4,
  Nesterov; the rest as DrNAS' NB-201 defaults (nb201_cifar10_search)."""
  config = nb201_darts_autodl_search.get_config()
  config_validation.validate_search_config(config)
  s = config.search
  assert (s.epochs, s.batch_size, s.learning_rate, s.learning_rate_min) == (50, 64, 0.025, 1e-3)
  assert (s.momentum, s.nesterov, s.weight_decay, s.grad_clip) == (0.9, True, 5e-4, 5.0)
  assert (s.arch_learning_rate, s.arch_weight_decay, s.arch_start_epoch) == (3e-4, 1e-3, 0)
  assert s.architect == 'first_order' and s.lr_schedule_offset == 0
  assert config.model.partial_channels == 1 and config.model.relaxation == 'softmax'
  np.testing.assert_allclose(config.data.mean, (0.49137, 0.48235, 0.44667), atol=1e-5)
  np.testing.assert_allclose(config.data.std, (0.24706, 0.24353, 0.26157), atol=1e-5)
  drnas = nb201_cifar10_search.get_config().search  # DrNAS' repo defaults.
  assert (drnas.epochs, drnas.weight_decay, drnas.nesterov) == (100, 3e-4, False)


def test_gumbel_validation_runs_at_the_epochs_temperature():
  """DrNAS validates its SNAS supernet before lowering tau: the epoch ending at
  step 20 (10 steps per epoch, epoch index 1) validates at tau(1) = 9.1 of the
  linear 10 -> 1 over 10 epochs, as a constant tau of 9.1 does."""
  config = nb201_digits_search.get_config()
  config.model.update(relaxation='gumbel', init_channels=4)
  config.search.epochs = 10
  model = nb201.build_supernet(config)
  images = np.random.default_rng(0).uniform(size=(6, 8, 8, 1)).astype(np.float32)
  variables = initializers.init_variables(model, jax.random.PRNGKey(0), jnp.asarray(images[:1]))
  state = loop.SearchState(step=jnp.asarray(20), params=variables['params'],
                           batch_stats=variables['batch_stats'], arch=variables['arch'],
                           weight_opt_state=None, arch_opt_state=None)
  batch = {'image': images, 'label': np.arange(6) % 10, 'mask': np.ones(6, np.float32)}
  key = jax.random.PRNGKey(3)
  loss = lambda cfg, spe: float(loop.make_eval_step(model, cfg, steps_per_epoch=spe)(
      state, batch, key)['loss_sum'])
  constant = config.copy_and_resolve_references()
  constant.search.update(gumbel_tau_max=9.1, gumbel_tau_min=9.1)
  scheduled = loss(config, 10)  # one compile of this eval step for both checks
  assert scheduled == pytest.approx(loss(constant, 10), rel=1e-6)
  assert scheduled != pytest.approx(loss(config, None), rel=1e-4)  # tau 1
