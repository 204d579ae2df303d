"""FLOPs of SGNAS architectures: the lookup table, exact and expected FLOPs, the
FLOPs loss and the prior pool.

FLOPs are multiply-adds of the convs and the linear layer (BatchNorm,
activations, pooling and residual additions not counted), the convention of
`pcdarts_jax.network.count_macs` and of the published mobile-setting figures.
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


def prior_pool(layout: layout_lib.Layout, table: Table, targets_mflops, seed: int,
               samples: int = 4000) -> Tuple[np.ndarray, np.ndarray]:
  """The prior architectures of the generator: for each target, the architecture
  of `samples` random ones (seeded) whose FLOPs are nearest. Returns (choices
  (T, L, 6), MFLOPs (T,)) for the targets in order."""
  rng = np.random.default_rng([seed, 11])
  candidates = random_architectures(layout, samples, rng)
  rows = np.arange(layout.num_layers)[None, :, None]
  mflops = (table.base + table.per_group[rows, candidates].sum((1, 2))) / MEGA
  picks = [int(np.argmin(np.abs(mflops - t))) for t in targets_mflops]
  return candidates[picks], mflops[picks]
