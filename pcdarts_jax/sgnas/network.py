"""The stand-alone network of a derived SGNAS architecture (Huang & Chu
CVPR 2021), trained from scratch by the one trainer (`model.network='sgnas'`).

Stem conv 3x3 (stride layout.stem_stride), BN, act; the fixed MBConv (expansion
1, depthwise 3x3, project to layout.first_channels, no expand conv); per
searchable layer an MBConv whose expansion e is its number of non-skipped
groups: expand 1x1 c_in -> e·c_in, BN, act; a mixed depthwise conv (each group
of c_in hidden channels with its own kernel, at the layer's stride), BN, act;
optional squeeze-excite; project 1x1 -> c_out, BN; the residual when stride 1
and c_in = c_out. Then 1x1 conv -> head_channels, BN, act; global average pool;
optional dropout; linear. act is ReLU6 or h-swish (`model.activation`).

Choices made here:
- Hidden channels are laid out kernel by kernel, and the groups that share a
  kernel run as one depthwise conv: the same network as one conv per group up
  to a permutation of the hidden channels (which the expand conv learns), with
  fewer ops to compile.
- Every searchable layer has its expand conv, also at expansion 1, as in the
  supernet and the FLOPs lookup table; so the table's FLOPs of an architecture
  are exactly `network.count_macs` of this network without SE. (The reference
  stand-alone model drops the expand conv when e = 1.)
- SE as the reference: global pool, 1x1 conv (bias) to hidden // 4, ReLU, 1x1
  conv (bias) back, h-sigmoid gate; in the fixed block too. Its MACs are
  counted by `count_macs` (two linear layers), not by the lookup table.
- The residual rule (stride 1, c_in = c_out) applies to the fixed block too
  (the reference MBConv's rule; only the digits layout has stem = first width).
- Dropout draws per example from the trainer's per-step stream
  (`network.DROP_PATH_RNG`), keyed by the example's global position, so the
  mask does not depend on the device count. There is no drop-path: the
  trainer's `drop_path_prob` argument is ignored.

`__call__(x, train, drop_path_prob=None)` returns `(logits, None)`: the
trainer's (logits, auxiliary logits) convention; there is no auxiliary head.
"""

import json
import os
from typing import Any, Dict, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pcdarts_jax.run import config_fields
from pcdarts_jax.nn import initializers
from pcdarts_jax.spaces.darts import network as network_lib
from pcdarts_jax.nn import ops
from pcdarts_jax.run import parallel
from pcdarts_jax.sgnas import flops as flops_lib
from pcdarts_jax.sgnas import layout as layout_lib

# The reference's published ImageNet architectures (its SGNAS_A/B/C layer lists:
# per layer the kernels of the non-skipped groups); lookup-table MFLOPs 372.4 /
# 325.6 / 280.6, reported 373 / 326 / 281. Valid for the 'imagenet' and 'cifar'
# layouts (the same 19 layers).
PUBLISHED = {
    'SGNAS_A': '573733|7333xx|353xxx|77375x|7533xx|75557x|73377x|73333x|75573x|7553xx|'
               '5735xx|7737xx|7353xx|7735xx|3733xx|33373x|7337xx|777xxx|33737x',
    'SGNAS_B': '5735xx|553xxx|553xxx|55355x|55533x|35555x|35577x|5537xx|5557xx|5553xx|'
               '55xxxx|555xxx|535xxx|3753xx|3733xx|3777xx|7557xx|535xxx|33737x',
    'SGNAS_C': '5535xx|553xxx|553xxx|553xxx|5553xx|355xxx|3557xx|553xxx|555xxx|5553xx|'
               '55xxxx|555xxx|535xxx|555xxx|333xxx|75xxxx|3577xx|73xxxx|33733x',
}
ACTIVATIONS = ('relu6', 'hswish')
SE_REDUCTION = 4
DROPOUT_RNG = network_lib.DROP_PATH_RNG  # The trainer's per-step stream of network randomness.


def hard_sigmoid(x: jax.Array) -> jax.Array:
  """ReLU6(x + 3) / 6."""
  return jax.nn.relu6(x + 3.0) / 6.0


def hard_swish(x: jax.Array) -> jax.Array:
  """x · ReLU6(x + 3) / 6."""
  return x * hard_sigmoid(x)


def activation_fn(name: str):
  if name == 'relu6':
    return jax.nn.relu6
  if name == 'hswish':
    return hard_swish
  raise ValueError(f'model.activation={name!r} is not one of {ACTIVATIONS}.')


def example_dropout(x: jax.Array, rate: float, rng: jax.Array,
                    example_index: jax.Array) -> jax.Array:
  """Inverted dropout of (B, F) features; example b's mask from fold_in(rng, index[b])."""
  keep = 1.0 - rate
  keys = jax.vmap(jax.random.fold_in, (None, 0))(rng, example_index)
  mask = jax.vmap(lambda k: jax.random.bernoulli(k, keep, x.shape[1:]))(keys)
  return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros_like(x))


def _dense(features: int, fan_in: int, name: str) -> nn.Dense:
  return nn.Dense(features, kernel_init=initializers.kernel_init,
                  bias_init=initializers.bias_init_for(fan_in), name=name)


class SqueezeExcite(nn.Module):
  """x · h_sigmoid(W2 relu(W1 mean(x) + b1) + b2), W1: C -> max(1, C // reduction)."""
  reduction: int = SE_REDUCTION

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    squeezed = max(1, c // self.reduction)
    s = jnp.mean(x.astype(jnp.promote_types(x.dtype, jnp.float32)), axis=(1, 2))
    s = nn.relu(_dense(squeezed, c, 'squeeze')(s))
    gate = hard_sigmoid(_dense(c, squeezed, 'excite')(s))
    return x * gate[:, None, None, :].astype(x.dtype)


class MBConv(nn.Module):
  """Inverted bottleneck with a mixed depthwise conv: one group of C_in hidden
  channels per entry of `kernels` (so expansion = len(kernels)). `expand=False`
  (expansion 1 only) leaves out the expand conv, as the fixed first block does."""
  features: int
  kernels: Tuple[int, ...]
  stride: int = 1
  expand: bool = True
  se: bool = False
  activation: str = 'relu6'
  depthwise_impl: str = 'auto'
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool = True):
    act = activation_fn(self.activation)
    bn = lambda name: ops.batch_norm(train, True, name, self.axis_name)
    c = x.shape[-1]
    if not self.expand and len(self.kernels) != 1:
      raise ValueError(f'an MBConv without expand conv has one group, got {self.kernels}.')
    h = x
    if self.expand:
      h = act(bn('expand_bn')(ops.Pointwise(len(self.kernels) * c, name='expand')(x)))
    parts, start = [], 0
    for k in sorted(set(self.kernels)):  # Channels kernel by kernel (module docstring).
      width = self.kernels.count(k) * c
      conv = ops.DepthwiseConv(k, self.stride, k // 2, impl=self.depthwise_impl,
                               name=f'dw{k}x{k}')
      parts.append(conv(h[..., start:start + width]))
      start += width
    h = act(bn('dw_bn')(parts[0] if len(parts) == 1 else jnp.concatenate(parts, -1)))
    if self.se:
      h = SqueezeExcite(name='se')(h)
    out = bn('project_bn')(ops.Pointwise(self.features, name='project')(h))
    if self.stride == 1 and c == self.features:
      out = out + x
    return out


class SGNASNetwork(nn.Module):
  """The stand-alone network of `choices` ((L, 6) choice indices as nested tuples)
  on `layout` (module docstring)."""
  layout: layout_lib.Layout
  choices: Tuple[Tuple[int, ...], ...]
  se: bool = False
  activation: str = 'relu6'
  dropout: float = 0.0
  depthwise_impl: str = 'auto'
  axis_name: Optional[str] = None
  dtype: str = 'float32'  # activations; params, BN statistics and logits stay float32

  @nn.compact
  def __call__(self, x, train: bool = True, drop_path_prob=None):
    del drop_path_prob  # No drop-path in these networks (module docstring).
    lay = self.layout
    if len(self.choices) != lay.num_layers:
      raise ValueError(f'{len(self.choices)} layers of choices for the {lay.num_layers} '
                       f'layers of layout {lay.name!r}.')
    act = activation_fn(self.activation)
    bn = lambda name: ops.batch_norm(train, True, name, self.axis_name)
    block = dict(se=self.se, activation=self.activation, depthwise_impl=self.depthwise_impl,
                 axis_name=self.axis_name)
    x = ops.network_input(x, self.dtype)
    s = lay.stem_stride
    x = ops.Conv(lay.stem_channels, (3, 3), (s, s), ((1, 1), (1, 1)), name='stem')(x)
    x = act(bn('stem_bn')(x))
    x = MBConv(lay.first_channels, (3,), 1, expand=False, name='first', **block)(x, train)
    for i, (layer, row) in enumerate(zip(lay.layers, self.choices)):
      x = MBConv(layer.c_out, layout_lib.group_of_choices(row), layer.stride,
                 name=f'layer{i}', **block)(x, train)
    x = act(bn('head_bn')(ops.Pointwise(lay.head_channels, name='head')(x)))
    x = jnp.mean(x.astype(jnp.promote_types(x.dtype, jnp.float32)), axis=(1, 2))
    if train and self.dropout > 0:
      index = parallel.global_index(x.shape[0], self.axis_name)
      x = example_dropout(x, self.dropout, self.make_rng(DROPOUT_RNG), index)
    return _dense(lay.num_classes, lay.head_channels, 'classifier')(x), None


# --------------------------------------------------------------------------
# From a train config (dispatched to by pcdarts_jax.spaces.darts.network).


def resolve_architecture(config, name_or_path: str) -> np.ndarray:
  """The (L, 6) choices of `name_or_path` (config.genotype) on the config's layout:
  a published name (PUBLISHED), an architecture JSON file (launch/sgnas_generate.py's
  output, or a train workdir's genotype.json), a train workdir holding one, or an
  architecture string. ValueError naming the `genotype` field otherwise."""
  if not isinstance(name_or_path, str):
    raise ValueError(f'genotype={name_or_path!r} must be a string: a published name, a '
                     f'JSON file or an architecture string.')
  layout = layout_lib.layout_of_config(config)
  path = PUBLISHED.get(name_or_path, name_or_path)
  if os.path.isdir(path):
    path = os.path.join(path, 'genotype.json')
  try:
    return layout_lib.load(path, layout, 'genotype')
  except ValueError as e:
    message = str(e)
  if message.startswith('architecture string') and not os.path.exists(path):
    raise ValueError(
        f'genotype={name_or_path!r} is neither a published architecture '
        f'{tuple(PUBLISHED)}, an existing architecture JSON file nor an architecture '
        f"string (per layer 6 groups of {'/'.join(layout_lib.SHORT)}, layers separated "
        f"by '|', as launch/sgnas_generate.py prints them).")
  if message.startswith('genotype='):  # layout.load named the file already.
    raise ValueError(message)
  if message.startswith('genotype: '):
    message = message[len('genotype: '):]
  raise ValueError(f'genotype={name_or_path!r}: {message}')


def architecture_dict(config, choices) -> Dict[str, Any]:
  """genotype.json of a train workdir: `layout.to_dict` with the exact lookup-table
  MACs (architecture as searched: no SE) and the expansions; it loads back as a
  `config.genotype`."""
  layout = layout_lib.layout_of_config(config)
  choices = layout_lib.check_choices(choices, layout, 'genotype')
  macs = flops_lib.architecture_macs(choices, flops_lib.lookup_table(layout))
  return layout_lib.to_dict(choices, layout, macs=macs, mflops=macs / flops_lib.MEGA,
                            expansions=layout_lib.expansions(choices).tolist())


def architecture_json(config, choices) -> str:
  return json.dumps(architecture_dict(config, choices))


def build_network(config, choices: Sequence, axis_name: Optional[str] = None) -> SGNASNetwork:
  """The stand-alone network of `choices` for `config.model` (layout, num_classes,
  se, activation, dropout, depthwise_impl, dtype) on `config.data`'s images."""
  m = config.model
  layout = layout_lib.layout_of_config(config)
  choices = layout_lib.check_choices(choices, layout, 'genotype')
  activation = config_fields.field(m, 'activation', 'relu6')
  activation_fn(activation)  # Raises on an unknown name.
  return SGNASNetwork(
      layout=layout, choices=tuple(tuple(int(c) for c in row) for row in choices),
      se=bool(config_fields.field(m, 'se', False)), activation=activation,
      dropout=float(config_fields.field(m, 'dropout', 0.0)),
      depthwise_impl=config_fields.field(m, 'depthwise_impl', 'auto'), axis_name=axis_name,
      dtype=config_fields.model_dtype(m))
