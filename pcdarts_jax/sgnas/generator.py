"""The SGNAS architecture generator (SPEC §11).

Input: a prior architecture as an (L, 24) one-hot map and the normalised target
FLOPs (T - low) / (high - low) broadcast to `target_channels` extra channels.
A small fully convolutional net (3x3 convs, `hidden` channels, ReLU, a residual
body) maps it to (L, 24) logits, read as (L, 6, 4) per-group choice logits.
Training relaxes them with a soft Gumbel-softmax per group; generation takes the
argmax. Group 0's skip logit is masked out, so group 0 never skips.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from pcdarts_jax import initializers
from pcdarts_jax.sgnas import layout as layout_lib

MASKED = -1e9


def _conv(features: int, name: str) -> nn.Conv:
  return nn.Conv(features, (3, 3), padding='SAME', kernel_init=initializers.kernel_init,
                 bias_init=nn.initializers.zeros, name=name)


class Generator(nn.Module):
  """__call__(prior (B, L, 6, 4) one-hot, target (B,) normalised) -> logits (B, L, 6, 4)."""
  hidden: int = 32
  blocks: int = 2
  target_channels: int = 10

  @nn.compact
  def __call__(self, prior, target):
    b, layers = prior.shape[:2]
    width = layout_lib.GROUPS * layout_lib.NUM_CHOICES
    x = prior.reshape(b, layers, width, 1).astype(jnp.float32)
    t = jnp.broadcast_to(target.astype(jnp.float32)[:, None, None, None],
                         (b, layers, width, self.target_channels))
    x = nn.relu(_conv(self.hidden, 'stem')(jnp.concatenate([x, t], -1)))
    for i in range(self.blocks):
      y = nn.relu(_conv(self.hidden, f'block{i}_a')(x))
      x = nn.relu(x + _conv(self.hidden, f'block{i}_b')(y))
    logits = _conv(1, 'out')(x).reshape(b, layers, layout_lib.GROUPS, layout_lib.NUM_CHOICES)
    return logits.at[:, :, 0, layout_lib.SKIP].set(MASKED)


def gumbel_softmax(rng: jax.Array, logits: jax.Array, tau) -> jax.Array:
  """Soft Gumbel-softmax over the last axis (the 4 choices of a group)."""
  gumbel = jax.random.gumbel(rng, logits.shape, logits.dtype)
  return jax.nn.softmax((logits + gumbel) / tau, axis=-1)


def argmax_choices(logits: jax.Array) -> jax.Array:
  """(..., L, 6, 4) logits -> (..., L, 6) choice indices (a valid architecture)."""
  return jnp.argmax(logits, -1).astype(jnp.int32)


def temperature(config, epoch: int) -> float:
  """tau at a generator epoch: tau_initial · tau_decay^epoch (5, ×0.95 per epoch)."""
  g = config.generator
  return float(g.tau_initial * g.tau_decay ** epoch)
