"""DrNAS progressive learning: pruning, widening, the stage switch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import drnas_digits_search
from pcdarts_jax.nn import initializers
from pcdarts_jax.nn import ops
from pcdarts_jax.search import optim
from pcdarts_jax.search import progressive
from pcdarts_jax.spaces.darts import space as darts_space
from pcdarts_jax.spaces.darts import supernet


def test_prune_keeps_exactly_the_top_ops_by_alpha():
  rng = np.random.default_rng(0)
  arch = {'alphas_normal': rng.normal(size=(14, 7)), 'alphas_reduce': rng.normal(size=(14, 7))}
  arch['alphas_normal'][0] = [0.1, 0.5, 0.5, -1, 2, 0, 0.3]  # A tie at 0.5.
  masks = darts_space.prune_masks(arch, 4)
  for kind in ('normal', 'reduce'):
    a, m = arch[f'alphas_{kind}'], masks[kind]
    assert m.shape == (14, 7) and (m.sum(-1) == 4).all()
    for e in range(14):
      assert a[e][m[e] == 1].min() >= a[e][m[e] == 0].max()
  np.testing.assert_array_equal(masks['normal'][0], [0, 1, 1, 0, 1, 0, 1])
  # A later stage prunes among the ops still kept.
  again = darts_space.prune_masks(arch, 2, previous=masks)
  assert ((again['normal'] <= masks['normal']).all() and (again['normal'].sum(-1) == 2).all())


def test_masked_ops_get_zero_weight_and_are_not_built():
  config = drnas_digits_search.get_config()
  config.model.layers = 3  # cell_0 normal, cells 1 and 2 reduction.
  masks = {k: np.zeros((14, 7), np.int32) for k in ('normal', 'reduce')}
  for k in masks:
    masks[k][:, [0, 3]] = 1  # max_pool and sep_conv_3x3 kept everywhere...
  masks['normal'][5] = [0, 0, 0, 0, 0, 1, 0]  # ...but edge 5 keeps dil_conv_3x3 only.
  model = supernet.build_supernet(config, partial_channels=2, op_masks=masks)
  x = jnp.zeros((1, 8, 8, 1))
  params = initializers.init_variables(model, jax.random.PRNGKey(0), x)['params']
  assert set(params['cell_0']['edge_5']) == {'dil_conv_3x3'}
  assert set(params['cell_0']['edge_0']) == {'sep_conv_3x3'}  # Pools have no params.
  from pcdarts_jax.spaces import relaxation  # pylint: disable=g-import-not-at-top
  w = relaxation.mixing_weights('dirichlet', jnp.zeros((14, 7)), jax.random.PRNGKey(1),
                                mask=jnp.asarray(masks['normal'], jnp.float32))
  assert float(jnp.abs(w * (1 - masks['normal'])).max()) == 0.0


@pytest.mark.parametrize('primitive,stride', [('sep_conv_3x3', 1), ('dil_conv_5x5', 2),
                                              ('max_pool_3x3', 1), ('skip_connect', 2)])
def test_widened_op_computes_the_widened_output(primitive, stride):
  old, new = 4, 8
  index = progressive.widen_index(np.random.default_rng(3), old, new)
  assert list(index[:old]) == [0, 1, 2, 3]
  make = lambda c: ops.make_op(primitive, c, stride, affine=False, depthwise_impl='conv',
                               search=True)
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 8, 8, old))
  small = make(old)
  variables = jax.tree.map(np.asarray, small.init(jax.random.PRNGKey(1), x, train=True))
  y, _ = small.apply(variables, x, train=True, mutable=['batch_stats'])
  wide = {k: progressive.widen_op(v, primitive, stride, index, old)
          for k, v in variables.items()}
  y_wide, _ = make(new).apply(wide, x[..., index], train=True, mutable=['batch_stats'])
  out = progressive.output_index(primitive, stride, index, old)
  np.testing.assert_allclose(y_wide, np.asarray(y)[..., out], atol=2e-5)


@pytest.mark.parametrize('rule', progressive.WIDEN_RULES)
def test_transfer_widens_weights_statistics_and_momentum_consistently(rule):
  config = drnas_digits_search.get_config()
  config.model.layers = 2
  x = jnp.zeros((1, 8, 8, 1))
  first = supernet.build_supernet(config)
  variables = initializers.init_variables(first, jax.random.PRNGKey(0), x)
  arch = {k: np.asarray(v) for k, v in variables['arch'].items()}
  masks = darts_space.prune_masks(arch, 4)
  second = supernet.build_supernet(config, partial_channels=2, op_masks=masks)
  target = initializers.init_variables(second, jax.random.PRNGKey(0), x)
  tx = optim.weight_optimizer(config, 10)
  opt_state = tx.init(variables['params'])
  # A recognisable momentum buffer: the weights themselves.
  opt_state = progressive.transfer_opt_state(opt_state, lambda t: variables['params'])
  rng, index = np.random.default_rng(0), {}
  move = lambda tree, like: progressive.transfer(tree, like, first, second, rng, index,
                                                 rule=rule)
  params = move(variables['params'], target['params'])
  stats = move(variables['batch_stats'], target['batch_stats'])
  trace = move(optim.momentum_buffer(opt_state, variables['params']), target['params'])
  shapes = lambda t: jax.tree.map(np.shape, t)
  assert shapes(params) == shapes(target['params'])
  assert shapes(stats) == shapes(target['batch_stats'])
  # The momentum buffer was the weights: widened the same way, it still is.
  jax.tree.map(np.testing.assert_array_equal, trace, params)
  # Parameter counts: every kept op doubles its width (k 4 -> 2); others unchanged.
  count = lambda t: sum(int(np.prod(np.shape(a))) for a in jax.tree.leaves(t))
  assert count(params) == count(target['params'])
  np.testing.assert_array_equal(params['classifier']['kernel'],
                                variables['params']['classifier']['kernel'])


def _numbered(shape, start):
  return start + np.arange(np.prod(shape), dtype=np.float64).reshape(shape)


def test_reference_widening_draws_per_layer_and_copies_without_dividing():
  """DrNAS's `wider`: SepConv's depthwise output draw feeds its 1x1 conv's
  input, the 1x1 output draw its BatchNorm; the second half draws anew; no copy
  is divided. Draws are stubbed per role so each index is known."""
  old = 2
  draws = {'dw1/out': [0, 1, 1, 0], 'pw1/out': [0, 1, 0, 0], 'dw2/out': [0, 1, 0, 1],
           'pw2/out': [0, 1, 1, 1]}
  draw = lambda role, size: np.asarray(draws[role])
  params = {'dw1': {'kernel': _numbered((3, 3, 1, old), 0)},
            'pw1': {'kernel': _numbered((1, 1, old, old), 100)},
            'dw2': {'kernel': _numbered((3, 3, 1, old), 200)},
            'pw2': {'kernel': _numbered((1, 1, old, old), 300)}}
  stats = {'bn1': {'mean': np.array([1., 2.])}, 'bn2': {'mean': np.array([3., 4.])}}
  wide = progressive.reference_widen_op(params, 'sep_conv_3x3', 1, draw, old)
  wide_stats = progressive.reference_widen_op(stats, 'sep_conv_3x3', 1, draw, old)
  take = lambda a, role, axis: np.take(a, draws[role], axis=axis)
  np.testing.assert_array_equal(wide['dw1']['kernel'],
                                take(params['dw1']['kernel'], 'dw1/out', -1))
  np.testing.assert_array_equal(
      wide['pw1']['kernel'],
      take(take(params['pw1']['kernel'], 'dw1/out', -2), 'pw1/out', -1))  # not divided
  np.testing.assert_array_equal(
      wide['pw2']['kernel'],
      take(take(params['pw2']['kernel'], 'dw2/out', -2), 'pw2/out', -1))
  np.testing.assert_array_equal(wide_stats['bn1']['mean'], [1., 2., 1., 1.])
  np.testing.assert_array_equal(wide_stats['bn2']['mean'], [3., 4., 4., 4.])


def test_reference_widening_of_the_stride_2_skip():
  """FactorizedReduce: each half-width conv draws its input and output; the
  BatchNorm appends the two output draws' extra channels (as the reference
  concatenates them), not the channels the convs' outputs land on."""
  old = 4
  draws = {'conv_1/in': [0, 1, 2, 3, 3, 0, 1, 2], 'conv_1/out': [0, 1, 1, 0],
           'conv_2/in': [0, 1, 2, 3, 0, 0, 0, 0], 'conv_2/out': [0, 1, 0, 0]}
  draw = lambda role, size: np.asarray(draws[role])
  params = {'conv_1': {'kernel': _numbered((1, 1, old, old // 2), 0)},
            'conv_2': {'kernel': _numbered((1, 1, old, old // 2), 50)}}
  wide = progressive.reference_widen_op(params, 'skip_connect', 2, draw, old)
  np.testing.assert_array_equal(
      wide['conv_1']['kernel'],
      np.take(np.take(params['conv_1']['kernel'], draws['conv_1/in'], -2),
              draws['conv_1/out'], -1))
  stats = progressive.reference_widen_op({'bn': {'var': np.array([5., 6., 7., 8.])}},
                                         'skip_connect', 2, draw, old)
  np.testing.assert_array_equal(stats['bn']['var'], [5., 6., 7., 8., 6., 5., 5., 5.])


def test_stage_fields_are_validated():
  from pcdarts_jax.search import validation as config_validation  # pylint: disable=g-import-not-at-top
  config = drnas_digits_search.get_config()
  config_validation.validate_search_config(config)
  config.search.stage_partial_channels = (2, 4)
  with pytest.raises(config_validation.ConfigError, match='non-increasing'):
    config_validation.validate_search_config(config)
  config = drnas_digits_search.get_config()
  config.search.stage_epochs = (3, 2)
  with pytest.raises(config_validation.ConfigError, match='sum to search.epochs=6'):
    config_validation.validate_search_config(config)
  config = drnas_digits_search.get_config()
  config.search.widen = 'net2wider_divided'
  with pytest.raises(config_validation.ConfigError,
                     match=r"search.widen='net2wider_divided' is not one of \('net2wider', "):
    config_validation.validate_search_config(config)
  stages = progressive.stages(drnas_digits_search.get_config())
  assert [(st.start_epoch, st.partial_channels, st.ops_kept) for st in stages] == [
      (0, 4, 7), (3, 2, 4)]
