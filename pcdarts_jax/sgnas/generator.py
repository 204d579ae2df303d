"""The SGNAS architecture generator, the reference's `SinGenerator`
(SGNAS, Huang & Chu CVPR 2021, github.com/eric8607242/SGNAS).

Input: a prior architecture as an (L, 24) one-hot map (1 channel) and the
normalised target FLOPs (T - low) / (high - low) broadcast to `target_channels`
channels of the same map. Fully convolutional, 3x3 convs at `hidden` channels,
ReLU after each, no biases except the tail's:

  target head: 3 convs on the target map;  prior head: 2 convs on the prior;
  x = prior head + target head;
  y = body (`body_layers` convs) of head (1 conv) of x;  logits = tail(y + x),

the tail a conv to 1 channel, read as (L, 6, 4) per-group choice logits.
Weights are He-normal by fan-out (std sqrt(2 / (k·k·out))), the tail's bias 0,
as the reference initialises them, so its released checkpoint imports
(`pcdarts_jax.train.torch_import.sgnas_generator_params`). Training relaxes the
logits with a soft Gumbel-softmax per group; generation takes the argmax.
Group 0's skip logit is masked out, so group 0 never skips (the reference
leaves it out of the group's softmax: the same distribution).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from pcdarts_jax.sgnas import layout as layout_lib

MASKED = -1e9
HE_FAN_OUT = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def _conv(features: int, name: str, bias: bool = False) -> nn.Conv:
  return nn.Conv(features, (3, 3), padding=((1, 1), (1, 1)), use_bias=bias,
                 kernel_init=HE_FAN_OUT, bias_init=nn.initializers.zeros, name=name)


class Generator(nn.Module):
  """__call__(prior (B, L, 6, 4) one-hot, target (B,) normalised) -> logits (B, L, 6, 4).

  Submodules (PyTorch names in parentheses): target_head_{0,1,2} (hc_head.i),
  prior_head_{0,1} (bb_head.i), head (head), body_{0..} (body.block{i+1}),
  tail (tail.0)."""
  hidden: int = 32
  body_layers: int = 3
  target_channels: int = 10

  @nn.compact
  def __call__(self, prior, target):
    b, layers = prior.shape[:2]
    width = layout_lib.GROUPS * layout_lib.NUM_CHOICES
    x = prior.reshape(b, layers, width, 1).astype(jnp.float32)
    t = jnp.broadcast_to(target.astype(jnp.float32)[:, None, None, None],
                         (b, layers, width, self.target_channels))
    for i in range(3):
      t = nn.relu(_conv(self.hidden, f'target_head_{i}')(t))
    for i in range(2):
      x = nn.relu(_conv(self.hidden, f'prior_head_{i}')(x))
    x = x + t
    y = nn.relu(_conv(self.hidden, 'head')(x))
    for i in range(self.body_layers):
      y = nn.relu(_conv(self.hidden, f'body_{i}')(y))
    logits = _conv(1, 'tail', bias=True)(y + x)
    logits = logits.reshape(b, layers, layout_lib.GROUPS, layout_lib.NUM_CHOICES)
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
