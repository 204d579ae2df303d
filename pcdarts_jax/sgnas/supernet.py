"""The SGNAS unified single-path supernet as Flax modules
(SGNAS, Huang & Chu CVPR 2021, github.com/eric8607242/SGNAS).

Every searchable layer is a `UnifiedBlock`: a shared expand 1x1 conv to 6·C_in
hidden channels in 6 groups, per group a depthwise 3x3 / 5x5 / 7x7 conv or skip,
a shared project 1x1 conv, a switchable BatchNorm picked by the number of
skipped groups, and the residual. Two forwards share the weights:

- single path (`hard=True`, supernet training and accuracy checks): `arch` holds
  the (L, 6) choice indices; each group computes only its chosen kernel
  (`lax.switch`: the other kernels are not run), a skipped group nothing;
- soft (`hard=False`, generator training): `arch` holds the (L, 6, 4) choice
  probabilities; each group is the probability-weighted sum of its kernels'
  outputs; the switchable BN is the one at the rounded expected number of
  skipped groups (the reference; `soft_bn='mixture'`: its 6 BNs mixed by the
  distribution of that number). At a one-hot `arch` the two forwards are equal.
"""

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from pcdarts_jax.nn import initializers
from pcdarts_jax.nn import ops
from pcdarts_jax.sgnas import layout as layout_lib

GROUPS = layout_lib.GROUPS
KERNELS = layout_lib.KERNELS
SKIP = layout_lib.SKIP


class RowBatchNorm(nn.Module):
  """`rows` BatchNorms over the same channels, mixed per channel by `weights`.

  weights (rows, C) (or (rows,)): the output is Σ_r w_r · BN_r(x). In train mode
  every row normalises with the batch statistics (averaged over `axis_name`) and
  row r's running averages move by u_r of the usual update (`update_weights`,
  default `weights`), so a one-hot row weight is exactly one ordinary BatchNorm;
  rows with weight 0 are left alone.
  Eval mode uses each row's running averages. Biased batch variance, PyTorch
  momentum 0.1, eps 1e-5. The variance is two-pass, E[(x - mean)^2], not
  E[x^2] - mean^2: on near-constant channels (small maps after ReLU6) the
  one-pass form cancels catastrophically.
  """
  rows: int
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, x, weights, train: bool, update_weights=None):
    c = x.shape[-1]
    shaped = lambda w: jnp.broadcast_to(w.reshape(self.rows, -1), (self.rows, c))
    weights = shaped(weights)
    update_weights = weights if update_weights is None else shaped(update_weights)
    scale = self.param('scale', nn.initializers.ones, (self.rows, c), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (self.rows, c), jnp.float32)
    mean = self.variable('batch_stats', 'mean', jnp.zeros, (self.rows, c), jnp.float32)
    var = self.variable('batch_stats', 'var', jnp.ones, (self.rows, c), jnp.float32)
    xf = x.astype(jnp.float32)
    if train:
      batch_mean = jnp.mean(xf, (0, 1, 2))
      if self.axis_name is not None:
        batch_mean = lax.pmean(batch_mean, self.axis_name)
      batch_var = jnp.mean(jnp.square(xf - batch_mean), (0, 1, 2))
      if self.axis_name is not None:
        batch_var = lax.pmean(batch_var, self.axis_name)
      if not self.is_initializing():
        step = (1.0 - ops.BN_MOMENTUM) * lax.stop_gradient(update_weights)
        mean.value = mean.value + step * (lax.stop_gradient(batch_mean) - mean.value)
        var.value = var.value + step * (lax.stop_gradient(batch_var) - var.value)
      normalised = (xf - batch_mean) * lax.rsqrt(batch_var + ops.BN_EPSILON)
      out = normalised * jnp.sum(weights * scale, 0) + jnp.sum(weights * bias, 0)
    else:  # Σ_r w_r ((x - μ_r) γ_r / σ_r + β_r), one affine map per channel.
      gain = scale * lax.rsqrt(var.value + ops.BN_EPSILON)
      out = xf * jnp.sum(weights * gain, 0) + jnp.sum(weights * (bias - mean.value * gain), 0)
    return out.astype(x.dtype)


def skip_count_distribution(skip_probs: jax.Array) -> jax.Array:
  """P(n groups skipped), n = 0..5, from the independent skip probabilities of
  groups 1..5 (group 0 never skips): the Poisson-binomial distribution."""
  dist = jnp.zeros((GROUPS,), skip_probs.dtype).at[0].set(1.0)
  for g in range(1, GROUPS):
    p = skip_probs[g]
    dist = dist * (1.0 - p) + jnp.roll(dist, 1).at[0].set(0.0) * p
  return dist


# How the soft forward picks the switchable BN: the reference's one BN at the
# rounded expected number of skipped groups, or the mixture by its distribution.
SOFT_BN_MODES = ('rounded_index', 'mixture')


def switchable_bn_weights(arch_row: jax.Array, hard: bool,
                          soft_bn: str = 'rounded_index') -> jax.Array:
  """The weights of a layer's 6 switchable BNs: one-hot at the number of
  skipped groups (single path); in the soft forward, one-hot at
  round(Σ_g p_skip,g) with no gradient through the choice ('rounded_index', the
  reference's `round(skip_connection_num)`, halves to even like Python's round)
  or the Poisson-binomial distribution of the number skipped ('mixture')."""
  if hard:
    return jax.nn.one_hot(jnp.sum(arch_row == SKIP), GROUPS)
  if soft_bn == 'rounded_index':
    index = jnp.clip(jnp.round(lax.stop_gradient(jnp.sum(arch_row[:, SKIP]))), 0, GROUPS - 1)
    return jax.nn.one_hot(index.astype(jnp.int32), GROUPS, dtype=arch_row.dtype)
  if soft_bn == 'mixture':
    return skip_count_distribution(arch_row[:, SKIP])
  raise ValueError(f'soft_bn={soft_bn!r} is not one of {SOFT_BN_MODES}.')


class UnifiedBlock(nn.Module):
  """One searchable MBConv layer (see the module docstring)."""
  layer: layout_lib.Layer
  axis_name: Optional[str] = None
  depthwise_impl: str = 'auto'
  soft_bn: str = 'rounded_index'

  @nn.compact
  def __call__(self, x, arch_row, train: bool, hard: bool):
    layer, c = self.layer, self.layer.c_in
    hidden = GROUPS * c
    bn = lambda name: ops.batch_norm(train, True, name, self.axis_name)
    h = jax.nn.relu6(bn('expand_bn')(ops.Pointwise(hidden, name='expand')(x)))
    kernels = [self.param(f'dw{k}x{k}', initializers.kernel_init, (k, k, 1, hidden),
                          jnp.float32).astype(x.dtype) for k in KERNELS]
    dw_bn = RowBatchNorm(len(KERNELS), self.axis_name, name='dw_bn')

    def conv(kernel, inputs):
      return ops.depthwise(inputs, kernel, layer.stride, kernel.shape[0] // 2,
                           impl=self.depthwise_impl)

    if hard:
      # Per group only its chosen kernel runs; a skipped group gives zeros.
      out_shape = jax.eval_shape(lambda a: conv(kernels[0][..., :c], a), h[..., :c])
      outputs = []
      for g in range(GROUPS):
        group = h[..., g * c:(g + 1) * c]
        branches = [lambda a, w=w[..., g * c:(g + 1) * c]: conv(w, a) for w in kernels]
        branches.append(lambda a: jnp.zeros(out_shape.shape, out_shape.dtype))
        outputs.append(lax.switch(arch_row[g], branches, group))
      y = jnp.concatenate(outputs, -1)
      # BN row = the chosen kernel per channel; skipped groups: no row (zeros).
      rows = jax.nn.one_hot(arch_row, len(KERNELS) + 1)[:, :len(KERNELS)]  # (6, 3)
      weights = jnp.repeat(rows.T, c, axis=1)                             # (3, hidden)
      mixed = jax.nn.relu6(dw_bn(y, weights, train))
    else:
      mixed = 0.0
      for i, kernel in enumerate(kernels):
        row = jax.nn.one_hot(i, len(KERNELS))[:, None]
        p = jnp.repeat(arch_row[:, i], c)  # This kernel's probability, per channel.
        # Running averages move by the kernel's probability (one-hot: as single path).
        normalised = dw_bn(conv(kernel, h), row, train, update_weights=row * p)
        mixed = mixed + p * jax.nn.relu6(normalised)
    out = ops.Pointwise(layer.c_out, name='project')(mixed)
    out = RowBatchNorm(GROUPS, self.axis_name, name='project_bn')(
        out, switchable_bn_weights(arch_row, hard, self.soft_bn)[:, None], train)
    return out + x if layer.residual else out


class Supernet(nn.Module):
  """The unified supernet of a layout. __call__(x, arch, train, hard) -> logits;
  `arch`: (L, 6) int choices (hard) or (L, 6, 4) probabilities (soft);
  `soft_bn`: one of SOFT_BN_MODES (the soft forward's switchable BN)."""
  layout: layout_lib.Layout
  axis_name: Optional[str] = None
  depthwise_impl: str = 'auto'
  soft_bn: str = 'rounded_index'

  @nn.compact
  def __call__(self, x, arch, train: bool = True, hard: bool = True):
    lay = self.layout
    bn = lambda name: ops.batch_norm(train, True, name, self.axis_name)
    s = lay.stem_stride
    x = ops.Conv(lay.stem_channels, (3, 3), (s, s), ((1, 1), (1, 1)), name='stem')(x)
    x = jax.nn.relu6(bn('stem_bn')(x))
    # The fixed first block: MBConv with expansion 1, kernel 3; residual by the
    # MBConv rule (equal widths, as in the digits layout), like the network's.
    y = ops.DepthwiseConv(3, 1, 1, impl=self.depthwise_impl, name='first_dw')(x)
    y = jax.nn.relu6(bn('first_dw_bn')(y))
    y = bn('first_project_bn')(ops.Pointwise(lay.first_channels, name='first_project')(y))
    x = y + x if lay.stem_channels == lay.first_channels else y
    for i, layer in enumerate(lay.layers):
      x = UnifiedBlock(layer, self.axis_name, self.depthwise_impl, self.soft_bn,
                       name=f'layer{i}')(
          x, arch[i], train, hard)
    x = jax.nn.relu6(bn('head_bn')(ops.Pointwise(lay.head_channels, name='head')(x)))
    x = jnp.mean(x.astype(jnp.float32), (1, 2))
    return nn.Dense(lay.num_classes, kernel_init=initializers.kernel_init,
                    bias_init=initializers.bias_init_for(lay.head_channels),
                    name='classifier')(x)


def init_arch(layout: layout_lib.Layout) -> jax.Array:
  """A valid single-path architecture (every group 3x3) to initialise with."""
  return jnp.zeros((layout.num_layers, GROUPS), jnp.int32)
