"""FLOPs of SGNAS architectures: the lookup table, exact and expected FLOPs, the
FLOPs loss and the prior pool's sampling.

FLOPs are multiply-adds of the convs and the linear layer (BatchNorm,
activations, pooling and residual additions not counted), the convention of
`pcdarts_jax.spaces.darts.network.count_macs` and of the published mobile-setting figures.
The table is computed from the layout's layer shapes: per layer, the cost of one
group for each choice = its slice of the expand 1x1 conv + its depthwise conv +
its slice of the project 1x1 conv (a skipped group costs nothing); the base is
the stem, the fixed first block, the head conv and the classifier.
"""

import dataclasses
from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np

from pcdarts_jax.sgnas import layout as layout_lib

MEGA = 1e6


@dataclasses.dataclass(frozen=True)
class Table:
  base: int               # MACs every architecture has.
  per_group: np.ndarray   # (L, 4) int64: MACs of one group per choice (skip: 0).

  def mflops(self) -> Tuple[float, np.ndarray]:
    """(base, per_group) in MFLOPs, for the differentiable expected FLOPs."""
    return self.base / MEGA, self.per_group.astype(np.float64) / MEGA


def _conv_macs(size_out: int, kernel: int, c_in_per_group: int, c_out: int) -> int:
  return size_out * size_out * kernel * kernel * c_in_per_group * c_out


def base_macs(layout: layout_lib.Layout) -> int:
  s = layout.stem_size
  stem = _conv_macs(s, 3, layout.image_channels, layout.stem_channels)
  # Fixed MBConv, expansion 1: depthwise 3x3 then project (no expand conv).
  first = (_conv_macs(s, 3, 1, layout.stem_channels) +
           _conv_macs(s, 1, layout.stem_channels, layout.first_channels))
  last = layout.layers[-1]
  head = _conv_macs(last.size_out, 1, last.c_out, layout.head_channels)
  classifier = layout.head_channels * layout.num_classes
  return stem + first + head + classifier


def group_macs(layer: layout_lib.Layer, choice: int) -> int:
  """MACs of one group of `layer` with `choice` (index into layout.CHOICES)."""
  if choice == layout_lib.SKIP:
    return 0
  c = layer.c_in
  expand = _conv_macs(layer.size_in, 1, c, c)
  depthwise = _conv_macs(layer.size_out, layout_lib.KERNELS[choice], 1, c)
  project = _conv_macs(layer.size_out, 1, c, layer.c_out)
  return expand + depthwise + project


def lookup_table(layout: layout_lib.Layout) -> Table:
  per_group = np.array([[group_macs(layer, c) for c in range(layout_lib.NUM_CHOICES)]
                        for layer in layout.layers], np.int64)
  return Table(base_macs(layout), per_group)


def architecture_macs(choices, table: Table) -> int:
  """Exact MACs of an architecture ((L, 6) choice indices) from the table."""
  choices = np.asarray(choices)
  rows = np.arange(choices.shape[0])[:, None]
  return int(table.base + table.per_group[rows, choices].sum())


def expected_mflops(probs: jax.Array, table: Table) -> jax.Array:
  """Expected MFLOPs of a relaxed architecture: probs (..., L, 6, 4) per group
  over CHOICES. Equals architecture_macs / 1e6 at a one-hot `probs`."""
  base, per_group = table.mflops()
  per_group = jnp.asarray(per_group, jnp.float32)
  return base + jnp.einsum('...lgc,lc->...', probs, per_group)


def flops_loss(flops: jax.Array, target: jax.Array, alpha: float, lam: float,
               margin: float) -> jax.Array:
  """SGNAS's asymmetric FLOPs loss (FLOPs in MFLOPs): alpha·lam·(F-T)² above
  T + margin, alpha·(T-F)² below T - margin, 0 inside the dead zone. lam > 1
  punishes overshooting the budget harder than undershooting it."""
  diff = flops - target
  above = alpha * lam * diff ** 2
  below = alpha * diff ** 2
  return jnp.where(diff > margin, above, jnp.where(diff < -margin, below, 0.0))


def random_architectures(layout: layout_lib.Layout, count: int,
                         rng: np.random.Generator) -> np.ndarray:
  """(count, L, 6) random valid architectures spread over the FLOPs range: each
  draws a density d ~ U(0, 1); groups 1..5 stay with probability d, kernels uniform."""
  shape = (count, layout.num_layers, layout_lib.GROUPS)
  kernels = rng.integers(0, len(layout_lib.KERNELS), shape)
  density = rng.uniform(0.0, 1.0, (count, 1, 1))
  skipped = rng.uniform(0.0, 1.0, shape) > density
  skipped[..., 0] = False  # Group 0 never skips.
  return np.where(skipped, layout_lib.SKIP, kernels).astype(np.int32)


def macs_range(table: Table) -> Tuple[int, int]:
  """The smallest and largest MACs any architecture of the table can have."""
  per_layer_min = table.per_group[:, :layout_lib.SKIP].min(1)  # Only group 0 counted.
  per_layer_max = table.per_group.max(1) * layout_lib.GROUPS
  return (int(table.base + per_layer_min.sum()), int(table.base + per_layer_max.sum()))


PRIOR_EXPANSIONS = (2, 6)  # The reference draws each prior layer's expansion from U{2..6}.


def pool_keys(low: float, high: float, pool_size: int) -> np.ndarray:
  """The FLOPs keys of a prior pool of `pool_size` priors: evenly inside (low,
  high), low + k·(high - low)/(pool_size + 1) for k = 1..pool_size (one key
  for the default pool_size 1: the middle). The reference floors the interval
  to whole MFLOPs; the keys are the same whenever pool_size + 1 divides
  high - low, as for its ImageNet (270, 450) and CIFAR (80, 120) ranges."""
  interval = (high - low) / (pool_size + 1)
  return np.round(low + interval * np.arange(1, pool_size + 1), 6)  # 0.3, not 0.30000000000000004


def contiguous_architectures(layout: layout_lib.Layout, count: int,
                             rng: np.random.Generator) -> np.ndarray:
  """(count, L, 6) random architectures as the reference draws priors: per
  layer an expansion e ~ U{2..6}; groups 0..e-1 each take a kernel uniformly
  from {3, 5, 7}, groups e..5 skip."""
  shape = (count, layout.num_layers, layout_lib.GROUPS)
  low, high = PRIOR_EXPANSIONS
  expansion = rng.integers(low, high + 1, shape[:2])
  kernels = rng.integers(0, len(layout_lib.KERNELS), shape)
  skipped = np.arange(layout_lib.GROUPS) >= expansion[..., None]
  return np.where(skipped, layout_lib.SKIP, kernels).astype(np.int32)


def sample_prior_pool(layout: layout_lib.Layout, table: Table, keys, bias: float, seed: int,
                      max_draws: int = 1_000_000,
                      batch: int = 4096) -> Tuple[np.ndarray, np.ndarray]:
  """The reference's prior pool: for each key (MFLOPs) the first seeded
  `contiguous_architectures` draw whose FLOPs lie within `bias` of the key
  (inclusive). Returns (choices (K, L, 6), MFLOPs (K,)); ValueError naming
  generator.pool_bias when no draw of `max_draws` lands within it."""
  rng = np.random.default_rng([seed, 13])
  rows = np.arange(layout.num_layers)[None, :, None]
  picks, picked_mflops = [], []
  for key in np.asarray(keys, np.float64):
    seen_low, seen_high, drawn = np.inf, -np.inf, 0
    while drawn < max_draws:
      candidates = contiguous_architectures(layout, batch, rng)
      mflops = (table.base + table.per_group[rows, candidates].sum((1, 2))) / MEGA
      hits = np.flatnonzero(np.abs(mflops - key) <= bias)
      if hits.size:
        picks.append(candidates[hits[0]])
        picked_mflops.append(mflops[hits[0]])
        break
      drawn += batch
      seen_low, seen_high = min(seen_low, mflops.min()), max(seen_high, mflops.max())
    else:
      raise ValueError(
          f'generator.pool_bias={bias}: none of {drawn} random priors (expansion 2..6, '
          f'{seen_low:.4g}..{seen_high:.4g} MFLOPs) lies within it of the pool key {key:.6g} '
          f'MFLOPs; widen generator.pool_bias or move generator.flops_low/flops_high.')
  return np.stack(picks), np.asarray(picked_mflops)
