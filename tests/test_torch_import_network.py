"""torch_import.network_variables on state_dicts synthesised from the reference
evaluation networks' module structure (DARTS / PC-DARTS model.py).

The synthesiser below writes, for every PyTorch tensor, the Flax variable it
must land in; it follows the reference modules, not the importer's tables, so a
naming or layout mistake on either side fails here.
"""

import jax
import ml_collections
import numpy as np
import pytest

from pcdarts_jax.spaces.darts import genotypes
from pcdarts_jax.nn import initializers
from pcdarts_jax.spaces.darts import network
from pcdarts_jax.train import torch_import

# Every op kind that carries weights, at stride 1 and 2.
GENOTYPE = genotypes.Genotype(
    normal=[('sep_conv_3x3', 1), ('skip_connect', 0), ('conv_7x1_1x7', 0),
            ('dil_conv_3x3', 1), ('sep_conv_7x7', 0), ('sep_conv_5x5', 1),
            ('avg_pool_3x3', 0), ('dil_conv_5x5', 3)],
    normal_concat=[2, 3, 4, 5],
    reduce=genotypes.PC_DARTS_image.reduce, reduce_concat=[2, 3, 4, 5])


def _config(network_kind, c, layers, auxiliary=True):
  data_name = 'imagenet2012' if network_kind == 'imagenet' else 'cifar10'
  return ml_collections.ConfigDict({
      'genotype': 'custom', 'data': {'name': data_name},
      'model': {'network': network_kind, 'init_channels': c, 'layers': layers,
                'num_classes': 10, 'auxiliary': auxiliary, 'depthwise_impl': 'dense'}})


def reference_state_dict(rng, kind, c, layers, genotype, classes=10, auxiliary=True,
                         in_channels=3):
  """{torch key: (array, flax (collection, path), layout)} of the reference network."""
  sd = {}

  def conv(name, flax, c_out, c_in, kh, kw):
    sd[f'{name}.weight'] = (rng.normal(size=(c_out, c_in, kh, kw)).astype(np.float32),
                            ('params',) + flax + ('kernel',), 'conv')

  def bn(name, flax, ch):
    for leaf, coll, flax_leaf in (('weight', 'params', 'scale'), ('bias', 'params', 'bias'),
                                  ('running_mean', 'batch_stats', 'mean'),
                                  ('running_var', 'batch_stats', 'var')):
      sd[f'{name}.{leaf}'] = (rng.uniform(0.5, 1.5, size=(ch,)).astype(np.float32),
                              (coll,) + flax + (flax_leaf,), 'vector')
    sd[f'{name}.num_batches_tracked'] = (np.array(3, np.int64), None, None)

  def linear(name, flax, c_out, c_in):
    sd[f'{name}.weight'] = (rng.normal(size=(c_out, c_in)).astype(np.float32),
                            ('params',) + flax + ('kernel',), 'linear')
    sd[f'{name}.bias'] = (rng.normal(size=(c_out,)).astype(np.float32),
                          ('params',) + flax + ('bias',), 'vector')

  def factorized_reduce(name, flax, c_in, c_out):
    conv(f'{name}.conv_1', flax + ('conv_1',), c_out // 2, c_in, 1, 1)
    conv(f'{name}.conv_2', flax + ('conv_2',), c_out // 2, c_in, 1, 1)
    bn(f'{name}.bn', flax + ('bn',), c_out)

  def relu_conv_bn(name, flax, c_in, c_out):  # Sequential(ReLU, Conv2d, BN) in `.op`.
    conv(f'{name}.op.1', flax + ('conv',), c_out, c_in, 1, 1)
    bn(f'{name}.op.2', flax + ('bn',), c_out)

  def op(name, flax, primitive, ch, stride):
    if primitive == 'skip_connect' and stride == 2:
      factorized_reduce(name, flax, ch, ch)
    elif primitive.startswith('sep_conv_'):  # ReLU dw pw BN ReLU dw pw BN
      k = int(primitive[-1])
      for first, dw, pw, b, i in ((1, 'dw1', 'pw1', 'bn1', 1), (0, 'dw2', 'pw2', 'bn2', 5)):
        conv(f'{name}.op.{i}', flax + (dw,), ch, 1, k, k)
        conv(f'{name}.op.{i + 1}', flax + (pw,), ch, ch, 1, 1)
        bn(f'{name}.op.{i + 2}', flax + (b,), ch)
    elif primitive.startswith('dil_conv_'):  # ReLU dw pw BN
      k = int(primitive[-1])
      conv(f'{name}.op.1', flax + ('dw',), ch, 1, k, k)
      conv(f'{name}.op.2', flax + ('pw',), ch, ch, 1, 1)
      bn(f'{name}.op.3', flax + ('bn',), ch)
    elif primitive == 'conv_7x1_1x7':  # ReLU, conv (1,7), conv (7,1), BN
      conv(f'{name}.1', flax + ('conv_1x7',), ch, ch, 1, 7)
      conv(f'{name}.2', flax + ('conv_7x1',), ch, ch, 7, 1)
      bn(f'{name}.3', flax + ('bn',), ch)

  if kind == 'cifar':
    conv('stem.0', ('stem_conv',), 3 * c, in_channels, 3, 3)
    bn('stem.1', ('stem_bn',), 3 * c)
    c_pp, c_p, reduction_prev = 3 * c, 3 * c, False
  else:
    conv('stem0.0', ('stem0_conv1',), c // 2, in_channels, 3, 3)
    bn('stem0.1', ('stem0_bn1',), c // 2)
    conv('stem0.3', ('stem0_conv2',), c, c // 2, 3, 3)
    bn('stem0.4', ('stem0_bn2',), c)
    conv('stem1.1', ('stem1_conv',), c, c, 3, 3)
    bn('stem1.2', ('stem1_bn',), c)
    c_pp, c_p, reduction_prev = c, c, True
  c_curr, c_aux = c, None
  for i in range(layers):
    reduction = i in (layers // 3, 2 * layers // 3)
    if reduction:
      c_curr *= 2
    cell, flax = f'cells.{i}', (f'cell_{i}',)
    if reduction_prev:
      factorized_reduce(f'{cell}.preprocess0', flax + ('preprocess0',), c_pp, c_curr)
    else:
      relu_conv_bn(f'{cell}.preprocess0', flax + ('preprocess0',), c_pp, c_curr)
    relu_conv_bn(f'{cell}.preprocess1', flax + ('preprocess1',), c_p, c_curr)
    genes = genotype.reduce if reduction else genotype.normal
    for j, (primitive, index) in enumerate(genes):
      stride = 2 if reduction and index < 2 else 1
      op(f'{cell}._ops.{j}', flax + (f'op_{j}',), primitive, c_curr, stride)
    reduction_prev = reduction
    c_pp, c_p = c_p, 4 * c_curr
    if i == 2 * layers // 3:
      c_aux = c_p
  if auxiliary:
    head = ('auxiliary_head',)
    conv('auxiliary_head.features.2', head + ('conv1',), 128, c_aux, 1, 1)
    bn('auxiliary_head.features.3', head + ('bn1',), 128)
    conv('auxiliary_head.features.5', head + ('conv2',), 768, 128, 2, 2)
    if kind == 'cifar':  # ImageNet's head has no BN after the 2x2 conv.
      bn('auxiliary_head.features.6', head + ('bn2',), 768)
    linear('auxiliary_head.classifier', head + ('classifier',), classes, 768)
  linear('classifier', ('classifier',), classes, c_p)
  return sd


def _flax_value(array, layout):
  if layout == 'conv':
    return array.transpose(2, 3, 1, 0)  # OIHW -> HWIO (depthwise (C,1,k,k) -> (k,k,1,C))
  if layout == 'linear':
    return array.T
  return array


def _lookup(variables, where):
  node = variables
  for key in where:
    node = node[key]
  return np.asarray(node)


@pytest.mark.parametrize('kind,c,layers', [('cifar', 4, 3), ('imagenet', 8, 3)])
def test_every_tensor_lands_in_its_flax_variable(kind, c, layers):
  sd = reference_state_dict(np.random.default_rng(0), kind, c, layers, GENOTYPE)
  variables = torch_import.network_variables({k: v for k, (v, _, _) in sd.items()},
                                             GENOTYPE, _config(kind, c, layers))
  expected = {where: _flax_value(value, layout) for value, where, layout in sd.values()
              if where is not None}
  got = {}
  for collection in ('params', 'batch_stats'):
    flat = jax.tree_util.tree_flatten_with_path(variables[collection])[0]
    for path, leaf in flat:
      got[(collection,) + tuple(p.key for p in path)] = np.asarray(leaf)
  assert set(got) == set(expected)
  for where, value in expected.items():
    np.testing.assert_array_equal(got[where], value, err_msg=str(where))


def test_imported_cifar_network_runs_and_drops_the_head_when_asked():
  sd = {k: v for k, (v, _, _) in reference_state_dict(
      np.random.default_rng(1), 'cifar', 4, 3, genotypes.PCDARTS).items()}
  config = _config('cifar', 4, 3, auxiliary=False)
  variables = torch_import.network_variables(sd, genotypes.PCDARTS, config)
  assert network.AUXILIARY not in variables['params']
  model = network.build_network(config, genotype=genotypes.PCDARTS)
  logits, aux = model.apply(variables, np.ones((2, 32, 32, 3), np.float32), train=False)
  assert logits.shape == (2, 10) and aux is None and np.all(np.isfinite(logits))
  # The same structure as the trainer's own initialisation.
  own = initializers.init_variables(model, jax.random.PRNGKey(0), np.ones((1, 32, 32, 3)))
  assert jax.tree.map(np.shape, own) == jax.tree.map(np.shape, variables)


def test_errors_name_the_key():
  config = _config('cifar', 4, 3)
  sd = {k: v for k, (v, _, _) in reference_state_dict(
      np.random.default_rng(2), 'cifar', 4, 3, genotypes.DARTS_V2).items()}
  # nn.DataParallel's prefix is accepted.
  torch_import.network_variables({f'module.{k}': v for k, v in sd.items()},
                                 genotypes.DARTS_V2, config)
  missing = dict(sd)
  del missing['cells.2.preprocess0.conv_1.weight']
  with pytest.raises(ValueError, match=r"lacks 'cells\.2\.preprocess0\.conv_1\.weight'"):
    torch_import.network_variables(missing, genotypes.DARTS_V2, config)
  extra = dict(sd, **{'cells.0._ops.9.op.1.weight': np.zeros((1,), np.float32)})
  with pytest.raises(ValueError, match=r"unexpected key 'cells\.0\._ops\.9\.op\.1\.weight'"):
    torch_import.network_variables(extra, genotypes.DARTS_V2, config)
  wrong = dict(sd, **{'classifier.weight': np.zeros((10, 7), np.float32)})
  with pytest.raises(ValueError, match=r"'classifier\.weight'\] has shape \(10, 7\)"):
    torch_import.network_variables(wrong, genotypes.DARTS_V2, config)
  # A checkpoint of another genotype does not fit.
  with pytest.raises(ValueError):
    torch_import.network_variables(sd, genotypes.PCDARTS, config)


def test_reading_a_torch_file_without_torch_says_what_to_do(tmp_path):
  try:
    import torch  # pylint: disable=g-import-not-at-top,unused-import
    pytest.skip('torch is installed')
  except ImportError:
    pass
  with pytest.raises(ValueError, match=r'needs PyTorch to read \(pip install torch\)'):
    torch_import.read_state_dict(str(tmp_path / 'weights.pt'))
