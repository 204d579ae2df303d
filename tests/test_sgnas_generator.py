"""The SGNAS generator as the reference's SinGenerator: structure, parameter
count, initialisation, and the import of a reference state_dict."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pcdarts_jax.train import torch_import
from pcdarts_jax.sgnas import generator as generator_lib
from pcdarts_jax.sgnas import layout as layout_lib

LAYERS = 19  # The ImageNet / CIFAR layouts: a 19 x 24 architecture map.

# The reference's state_dict at its sizes (hc_dim 10, hidden 32, layer_nums 5):
# every conv 3x3 without bias, the tail's conv with one.
REFERENCE_SHAPES = {
    'hc_head.0.conv.weight': (32, 10, 3, 3),
    'hc_head.1.conv.weight': (32, 32, 3, 3),
    'hc_head.2.conv.weight': (32, 32, 3, 3),
    'bb_head.0.conv.weight': (32, 1, 3, 3),
    'bb_head.1.conv.weight': (32, 32, 3, 3),
    'head.conv.weight': (32, 32, 3, 3),
    'body.block1.conv.weight': (32, 32, 3, 3),
    'body.block2.conv.weight': (32, 32, 3, 3),
    'body.block3.conv.weight': (32, 32, 3, 3),
    'tail.0.weight': (1, 32, 3, 3),
    'tail.0.bias': (1,),
}


def _init(gen, layers=LAYERS):
  prior = jnp.zeros((1, layers, layout_lib.GROUPS, layout_lib.NUM_CHOICES))
  return jax.jit(gen.init)(jax.random.PRNGKey(0), prior, jnp.zeros((1,)))


def test_parameter_count_and_names_are_the_references():
  params = _init(generator_lib.Generator())['params']
  sizes = {name: {leaf: v.shape for leaf, v in module.items()} for name, module in params.items()}
  assert sorted(sizes) == ['body_0', 'body_1', 'body_2', 'head', 'prior_head_0',
                           'prior_head_1', 'tail', 'target_head_0', 'target_head_1',
                           'target_head_2']
  assert all(list(leaves) == ['kernel'] for name, leaves in sizes.items() if name != 'tail')
  assert sizes['tail'] == {'kernel': (3, 3, 32, 1), 'bias': (1,)}
  assert sizes['target_head_0']['kernel'] == (3, 3, 10, 32)
  assert sizes['prior_head_0']['kernel'] == (3, 3, 1, 32)
  # 10·32·9 + 2·32·32·9 (target head) + 32·9 + 32·32·9 (prior head) + 4·32·32·9
  # (head, body) + 32·9 + 1 (tail) = 67,969, the reference's count.
  count = sum(x.size for x in jax.tree.leaves(params))
  assert count == 67_969 == sum(int(np.prod(s)) for s in REFERENCE_SHAPES.values())


def test_he_fan_out_initialisation():
  params = _init(generator_lib.Generator())['params']
  kernel = np.asarray(params['target_head_1']['kernel'])  # 9216 weights
  assert np.std(kernel) == pytest.approx(np.sqrt(2 / (3 * 3 * 32)), rel=0.05)
  assert abs(np.mean(kernel)) < 0.005
  assert not np.any(np.asarray(params['tail']['bias']))


def _conv3x3(x, weight, bias=None):
  """PyTorch's Conv2d(k=3, stride 1, padding 1) on one (C, H, W) map, in numpy."""
  c, h, w = x.shape
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1)))
  out = np.zeros((weight.shape[0], h, w))
  for i in range(3):
    for j in range(3):
      out += np.einsum('oc,chw->ohw', weight[:, :, i, j], padded[:, i:i + h, j:j + w])
  return out if bias is None else out + bias[:, None, None]


def _reference_forward(state, prior, target):
  """SinGenerator.forward on one prior (L, 24) and one normalised target."""
  relu = lambda v: np.maximum(v, 0)
  hc = np.full((10,) + prior.shape, target)
  for i in range(3):
    hc = relu(_conv3x3(hc, state[f'hc_head.{i}.conv.weight']))
  y = prior[None]
  for i in range(2):
    y = relu(_conv3x3(y, state[f'bb_head.{i}.conv.weight']))
  prior_y = y + hc
  y = relu(_conv3x3(prior_y, state['head.conv.weight']))
  for i in range(1, 4):
    y = relu(_conv3x3(y, state[f'body.block{i}.conv.weight']))
  return _conv3x3(y + prior_y, state['tail.0.weight'], state['tail.0.bias'])[0]


@pytest.fixture(scope='module')
def reference_state():
  rng = np.random.default_rng(0)
  return {k: (rng.normal(size=s) * (0.3 if k.startswith('tail') else 0.12)).astype(np.float32)
          for k, s in REFERENCE_SHAPES.items()}


def test_imported_reference_generator_computes_the_same_logits(reference_state):
  gen = generator_lib.Generator()
  variables = torch_import.sgnas_generator_params(
      {f'module.{k}': v for k, v in reference_state.items()}, gen)
  rng = np.random.default_rng(1)
  choices = rng.integers(0, layout_lib.NUM_CHOICES, (LAYERS, layout_lib.GROUPS))
  choices[:, 0] = rng.integers(0, 3, LAYERS)
  prior = layout_lib.one_hot(choices)
  ours = np.asarray(gen.apply(variables, jnp.asarray(prior[None]), jnp.asarray([0.4])))[0]
  theirs = _reference_forward(reference_state, prior.reshape(LAYERS, 24), 0.4)
  theirs = theirs.reshape(LAYERS, layout_lib.GROUPS, layout_lib.NUM_CHOICES)
  np.testing.assert_allclose(ours[:, 1:], theirs[:, 1:], rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(ours[:, 0, :3], theirs[:, 0, :3], rtol=1e-4, atol=1e-4)
  assert np.all(ours[:, 0, layout_lib.SKIP] == generator_lib.MASKED)


def test_import_names_the_wrong_key(reference_state):
  gen = generator_lib.Generator()
  missing = {k: v for k, v in reference_state.items() if k != 'body.block2.conv.weight'}
  with pytest.raises(ValueError, match=r"lacks 'body.block2.conv.weight' \(needed for "
                                       r"params/body_1/kernel\)"):
    torch_import.sgnas_generator_params(missing, gen)
  extra = dict(reference_state, **{'body.block4.conv.weight': np.zeros((32, 32, 3, 3))})
  with pytest.raises(ValueError, match=r"unexpected key 'body.block4.conv.weight'.*"
                                       r"generator.body_layers"):
    torch_import.sgnas_generator_params(extra, gen)
  wrong = dict(reference_state, **{'hc_head.0.conv.weight': np.zeros((32, 8, 3, 3))})
  with pytest.raises(ValueError, match=r"'hc_head.0.conv.weight'\] has shape \(32, 8, 3, 3\); "
                                       r"expected \(32, 10, 3, 3\)"):
    torch_import.sgnas_generator_params(wrong, gen)
