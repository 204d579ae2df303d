"""Evaluation networks built from a genotype, trained from scratch (DARTS /
PC-DARTS `model.py`: github.com/quark0/darts, github.com/yuhuixu1993/PC-DARTS).

`NetworkCIFAR` (C 36, 20 cells, stride-1 stem) and `NetworkImageNet` (C 48, 14
cells, stride-8 stem) stack discrete cells: each intermediate node adds two
ops of the genotype. BatchNorms are affine, and in training every op that is
not an identity is followed by drop-path. An auxiliary classifier reads the
output of cell 2·layers//3 in training.

Both networks return `(logits, logits_aux)`; `logits_aux` is None unless
`train=True` and `auxiliary=True`. Drop-path draws from the Flax rng stream
`drop_path`, one Bernoulli per example keyed by the example's position in the
global batch (`parallel.global_index`), so the masks do not depend on how the
batch is split over devices.

Parameter and multiply-add counts (`count_params`, `count_macs`) come from the
model's own shapes under `jax.eval_shape`: nothing is materialised or compiled.
"""

import math
import os
from typing import Any, Dict, Optional, Sequence, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from pcdarts_jax.run import config_fields
from pcdarts_jax.data import datasets as data
from pcdarts_jax.data import pipeline as input_pipeline
from pcdarts_jax.data import sources
from pcdarts_jax.spaces.darts import genotypes
from pcdarts_jax.nn import initializers
from pcdarts_jax.nn import ops
from pcdarts_jax.run import parallel

NETWORKS = ('cifar', 'imagenet')  # model.network of the DARTS evaluation networks.
DROP_PATH_RNG = 'drop_path'  # Flax rng stream of the drop-path masks.
AUXILIARY = 'auxiliary_head'  # Module name; excluded from parameter counts.
# Image sizes of the data sets a network trains on (ImageNet at the mobile setting).
IMAGE_SHAPES = {**data.IMAGE_SHAPES, 'imagenet2012': (224, 224, 3)}


def resolve_genotype(name_or_path: str) -> genotypes.Genotype:
  """A published genotype by name, a genotype.json, or a search workdir holding one."""
  if isinstance(name_or_path, str) and os.path.isdir(name_or_path):
    name_or_path = os.path.join(name_or_path, 'genotype.json')
  return genotypes.load_genotype(name_or_path)


def check_genotype(genotype: genotypes.Genotype, field: str = 'genotype'):
  """Raises ValueError naming `field` unless every cell is a well-formed genotype."""
  for kind in ('normal', 'reduce'):
    cell, concat = getattr(genotype, kind), getattr(genotype, f'{kind}_concat')
    if not cell or len(cell) % 2:
      raise ValueError(f'{field}: the {kind} cell has {len(cell)} genes; a cell needs '
                       f'two (op, input) genes per node.')
    for gene, (op, j) in enumerate(cell):
      if op not in ops.OP_NAMES:
        raise ValueError(f'{field}: {kind} gene {gene} names op {op!r}; allowed: '
                         f'{ops.OP_NAMES}.')
      if not 0 <= j < gene // 2 + 2:
        raise ValueError(f'{field}: {kind} gene {gene} reads state {j}; node '
                         f'{gene // 2} can read states 0..{gene // 2 + 1}.')
    states = len(cell) // 2 + 2
    if not concat or any(not 0 <= i < states for i in concat):
      raise ValueError(f'{field}: {kind}_concat={list(concat)} must name states in '
                       f'0..{states - 1}.')


def drop_path(x: jax.Array, drop_prob: jax.Array, rng: jax.Array,
              example_index: jax.Array) -> jax.Array:
  """Zeroes whole examples with probability `drop_prob`, scales the rest by 1/keep.

  `example_index` (B,) gives each example's global position; its mask bit is
  drawn from fold_in(rng, position). Expectation is preserved.
  """
  keep = 1.0 - jnp.asarray(drop_prob, jnp.float32)
  keys = jax.vmap(jax.random.fold_in, (None, 0))(rng, example_index)
  mask = jax.vmap(lambda k: jax.random.bernoulli(k, keep))(keys)
  scale = mask.astype(jnp.float32) / keep
  return x * scale.astype(x.dtype)[:, None, None, None]


def _drop_path_on(train: bool, drop_path_prob) -> bool:
  """A Python 0 (or None) switches drop-path off at trace time; a traced value
  keeps it in the graph, so one compiled step serves every epoch's probability."""
  if not train or drop_path_prob is None:
    return False
  return not (isinstance(drop_path_prob, (int, float)) and drop_path_prob == 0)


class Cell(nn.Module):
  """A discrete cell: node i = op_{2i}(state) + op_{2i+1}(state), op names `op_{j}`."""
  genes: Tuple[Tuple[str, int], ...]
  concat: Tuple[int, ...]
  channels: int
  reduction: bool
  reduction_prev: bool
  depthwise_impl: str = 'auto'
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, s0, s1, train: bool = True, drop_path_prob=None):
    c, bn_axis = self.channels, dict(axis_name=self.axis_name)
    if self.reduction_prev:
      s0 = ops.FactorizedReduce(c, affine=True, name='preprocess0', **bn_axis)(s0, train)
    else:
      s0 = ops.ReLUConvBN(c, 1, 1, 0, affine=True, name='preprocess0', **bn_axis)(s0, train)
    s1 = ops.ReLUConvBN(c, 1, 1, 0, affine=True, name='preprocess1', **bn_axis)(s1, train)
    dropping = _drop_path_on(train, drop_path_prob)
    index = parallel.global_index(s1.shape[0], self.axis_name) if dropping else None
    states = [s0, s1]
    for node in range(len(self.genes) // 2):
      total = None
      for j in (2 * node, 2 * node + 1):
        primitive, source = self.genes[j]
        stride = 2 if self.reduction and source < 2 else 1
        op = ops.make_op(primitive, c, stride, affine=True,
                         depthwise_impl=self.depthwise_impl, search=False,
                         axis_name=self.axis_name, name=f'op_{j}')
        h = op(states[source], train=train)
        if dropping and not isinstance(op, ops.Identity):
          h = drop_path(h, drop_path_prob, self.make_rng(DROP_PATH_RNG), index)
        total = h if total is None else total + h
      states.append(total)
    return jnp.concatenate([states[i] for i in self.concat], axis=-1)


class AuxiliaryHead(nn.Module):
  """ReLU, 5x5 avg pool (no padding), 1x1 conv 128, BN, ReLU, 2x2 conv 768,
  [BN,] ReLU, linear. CIFAR: pool stride 3 on 8x8 maps. ImageNet: pool stride 2
  on 7x7 maps (the reference comment says 14x14, but cell 2·layers//3 is the
  second reduction cell) and no BN after the 2x2 conv (quirk kept for parity:
  the reference dropped it and trained its published models without it)."""
  num_classes: int
  pool_stride: int = 3
  second_bn: bool = True
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool = True):
    x = nn.relu(x)
    if min(x.shape[1:3]) < 5:
      raise ValueError(f'the auxiliary head needs feature maps of at least 5x5, got '
                       f'{x.shape[1]}x{x.shape[2]} (input too small for '
                       f'model.auxiliary=True; set it to False).')
    x = nn.avg_pool(x, (5, 5), (self.pool_stride,) * 2, padding='VALID')
    x = ops.conv(128, 1, name='conv1')(x)
    x = nn.relu(ops.batch_norm(train, True, 'bn1', self.axis_name)(x))
    x = ops.conv(768, 2, name='conv2')(x)
    if self.second_bn:
      x = ops.batch_norm(train, True, 'bn2', self.axis_name)(x)
    x = nn.relu(x)
    x = x.reshape(x.shape[0], -1).astype(jnp.promote_types(x.dtype, jnp.float32))
    return _classifier(self.num_classes, x)


def _classifier(num_classes: int, x: jax.Array) -> jax.Array:
  return nn.Dense(num_classes, kernel_init=initializers.kernel_init,
                  bias_init=initializers.bias_init_for(x.shape[-1]),
                  name='classifier')(x)


def reduction_layers(layers: int) -> Tuple[int, int]:
  return (layers // 3, 2 * layers // 3)


class _Network(nn.Module):
  """Shared body of both networks; subclasses give the stem and the head pooling."""
  genotype: genotypes.Genotype
  init_channels: int
  num_classes: int
  layers: int
  auxiliary: bool = True
  depthwise_impl: str = 'auto'
  axis_name: Optional[str] = None
  dtype: str = 'float32'  # activations; params, BN statistics and logits stay float32

  def _stem(self, x, train) -> Tuple[jax.Array, jax.Array, int, int, bool]:
    """-> (s0, s1, channels of s0, channels of s1, reduction_prev of cell 0)."""
    raise NotImplementedError

  def _aux_head(self) -> AuxiliaryHead:
    raise NotImplementedError

  def _pool(self, x) -> jax.Array:
    return jnp.mean(x, axis=(1, 2))

  @nn.compact
  def __call__(self, x, train: bool = True, drop_path_prob=None):
    x = ops.network_input(x, self.dtype)
    s0, s1, _, _, reduction_prev = self._stem(x, train)
    g = self.genotype
    c_curr = self.init_channels
    logits_aux = None
    for i in range(self.layers):
      reduction = i in reduction_layers(self.layers)
      if reduction:
        c_curr *= 2
      genes, concat = (g.reduce, g.reduce_concat) if reduction else (g.normal, g.normal_concat)
      cell = Cell(tuple(map(tuple, genes)), tuple(concat), c_curr, reduction, reduction_prev,
                  self.depthwise_impl, self.axis_name, name=f'cell_{i}')
      s0, s1 = s1, cell(s0, s1, train, drop_path_prob)
      reduction_prev = reduction
      # Created at init in any mode, so one set of variables serves train and eval.
      if i == 2 * self.layers // 3 and self.auxiliary and (train or self.is_initializing()):
        aux = self._aux_head()(s1, train)
        logits_aux = aux if train else None
    out = self._pool(s1.astype(jnp.promote_types(s1.dtype, jnp.float32)))
    return _classifier(self.num_classes, out), logits_aux


class NetworkCIFAR(_Network):
  """Stem conv 3x3 -> 3C, BN; s0 = s1 = stem; global average pool; linear."""
  stem_multiplier: int = 3

  def _stem(self, x, train):
    c = self.stem_multiplier * self.init_channels
    s = ops.batch_norm(train, True, 'stem_bn', self.axis_name)(
        ops.conv(c, 3, 1, 1, 'stem_conv')(x))
    return s, s, c, c, False

  def _aux_head(self):
    return AuxiliaryHead(self.num_classes, pool_stride=3, second_bn=True,
                         axis_name=self.axis_name, name=AUXILIARY)


class NetworkImageNet(_Network):
  """Stride-8 stem: stem0 = conv 3x3 s2 -> C/2, BN, ReLU, conv 3x3 s2 -> C, BN;
  stem1 = ReLU, conv 3x3 s2 -> C, BN. The first cell reads s0 = stem0 at twice
  s1's resolution (reduction_prev). Head: the reference's 7x7 average pool,
  which at 224x224 input is the global average over the final 7x7 maps."""

  def _stem(self, x, train):
    c = self.init_channels
    bn = lambda name: ops.batch_norm(train, True, name, self.axis_name)
    s0 = nn.relu(bn('stem0_bn1')(ops.conv(c // 2, 3, 2, 1, 'stem0_conv1')(x)))
    s0 = bn('stem0_bn2')(ops.conv(c, 3, 2, 1, 'stem0_conv2')(s0))
    s1 = bn('stem1_bn')(ops.conv(c, 3, 2, 1, 'stem1_conv')(nn.relu(s0)))
    return s0, s1, c, c, True

  def _aux_head(self):
    return AuxiliaryHead(self.num_classes, pool_stride=2, second_bn=False,
                         axis_name=self.axis_name, name=AUXILIARY)


def build_network(config, axis_name: Optional[str] = None, genotype=None) -> nn.Module:
  """The DARTS evaluation network of a train config (`config.model` with
  model.network 'cifar' or 'imagenet', `config.genotype`). `genotype` overrides
  `config.genotype`: a name, a genotype.json path or a search workdir, or a Genotype."""
  m = config.model
  network = config_fields.field(m, 'network', 'cifar')
  if network not in NETWORKS:
    raise ValueError(f'model.network={network!r} is not one of {NETWORKS}.')
  if genotype is None or isinstance(genotype, str):
    genotype = resolve_genotype(config.genotype if genotype is None else genotype)
  cls = NetworkCIFAR if network == 'cifar' else NetworkImageNet
  return cls(genotype=genotype, init_channels=m.init_channels, num_classes=m.num_classes,
             layers=m.layers, auxiliary=config_fields.field(m, 'auxiliary', True),
             depthwise_impl=config_fields.field(m, 'depthwise_impl', 'auto'), axis_name=axis_name,
             dtype=config_fields.model_dtype(m))


def input_shape(config) -> Tuple[int, int, int, int]:
  """(1, H, W, C) of one image of `config.data.name`; without data fields, the
  network's reference input (CIFAR 32x32, ImageNet 224x224)."""
  name = config.data.name if hasattr(config, 'data') else None
  if sources.is_own(name) or (
      name in IMAGE_SHAPES and (name != 'imagenet2012' or 'image_size' in config.data)):
    return (1,) + input_pipeline.image_shape(config.data)
  if name not in IMAGE_SHAPES:
    imagenet = config_fields.field(config.model, 'network', 'cifar') == 'imagenet'
    name = 'imagenet2012' if imagenet else 'cifar10'
  return (1,) + IMAGE_SHAPES[name]


def variable_shapes(model: nn.Module, shape: Sequence[int]) -> Dict[str, Any]:
  """Abstract variables of `model` for inputs of `shape` (N, H, W, C)."""
  model = _for_counting(model)
  x = jax.ShapeDtypeStruct(tuple(shape), jnp.float32)
  return flax.core.unfreeze(jax.eval_shape(
      lambda r, x: model.init(r, x, train=False), jax.random.PRNGKey(0), x))


def _for_counting(model: nn.Module) -> nn.Module:
  """The grouped-conv depthwise implementation traces fastest; shapes are the same."""
  if hasattr(model, 'depthwise_impl') and hasattr(model, 'axis_name'):
    return model.clone(depthwise_impl='conv', axis_name=None)
  return model


def count_params(model: nn.Module, shape: Sequence[int],
                 include_auxiliary: bool = False) -> int:
  """Trainable parameters (not BN running statistics), the auxiliary head excluded
  unless asked for, as the reference's count_parameters_in_MB counts them."""
  flat = flax.traverse_util.flatten_dict(variable_shapes(model, shape)['params'])
  return sum(math.prod(v.shape) for path, v in flat.items()
             if include_auxiliary or AUXILIARY not in path)


def count_macs(model: nn.Module, shape: Sequence[int]) -> int:
  """Multiply-adds per image of an inference pass (train=False: no auxiliary head).

  Counted from the actual input/output shapes of every conv and linear layer:
  k_h·k_w·C_in/groups·C_out·H_out·W_out for a conv (depthwise: groups = C),
  in·out for a linear layer. BatchNorm, ReLU, pooling, drop-path and the
  additions of the cell nodes are not counted (the usual convention of the
  published mobile-setting figures).
  """
  model = _for_counting(model)
  variables = variable_shapes(model, shape)
  total = [0]

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name != '__call__':
      return out
    module, x = context.module, args[0] if args else None
    if isinstance(module, (ops.Conv, ops.Pointwise, ops.DepthwiseConv)):
      n, h, w, c_out = out.shape
      if isinstance(module, ops.Conv):
        per_output = module.kernel_size[0] * module.kernel_size[1] * x.shape[-1]
      elif isinstance(module, ops.Pointwise):
        per_output = x.shape[-1]
      else:
        per_output = module.kernel_size ** 2
      total[0] += per_output * c_out * h * w * n
    elif isinstance(module, nn.Dense):
      total[0] += x.shape[0] * x.shape[-1] * out.shape[-1]
    return out

  x = jax.ShapeDtypeStruct(tuple(shape), jnp.float32)
  with nn.intercept_methods(interceptor):
    jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  return total[0] // shape[0]
