"""Fairness-style path sampling for SGNAS supernet training
(SGNAS, Huang & Chu CVPR 2021, github.com/eric8607242/SGNAS).

Each step trains `num_paths` single paths. Per layer, the paths' expansions
(non-skipped groups) walk a shuffled cycle over 2..6 and each group's kernel a
shuffled cycle over {3, 5, 7}: within any window of a cycle's length every
value is drawn exactly once, so no expansion or kernel gets more updates than
another. Which groups (1..5) skip is drawn at random.

The paths are a pure function of (seed, step): a hash stands in for a stateful
generator, so a resumed run draws the same paths and nothing is checkpointed.
"""

import numpy as np

from pcdarts_jax.sgnas import layout as layout_lib

EXPANSIONS = np.arange(2, layout_lib.GROUPS + 1)  # Expansion 1 is never trained.
_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix(x: np.ndarray) -> np.ndarray:
  """splitmix64 finaliser: a well-spread 64-bit hash, vectorised."""
  with np.errstate(over='ignore'):
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _hash(*keys) -> np.ndarray:
  """A uint64 hash of broadcast integer arrays."""
  out = np.uint64(0x9E3779B97F4A7C15)
  with np.errstate(over='ignore'):
    for k in keys:
      out = _mix(out + np.asarray(k).astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15))
  return out


def _cycle(seed: int, tag, draw: np.ndarray, length: int) -> np.ndarray:
  """Position `draw` (any int array) of a stream of shuffled cycles of 0..length-1;
  `tag` (broadcast with `draw`) separates the streams."""
  cycle, position = draw // length, draw % length
  keys = _hash(seed, tag[..., None], cycle[..., None], np.arange(length))
  permutations = np.argsort(keys, axis=-1)
  return np.take_along_axis(permutations, position[..., None], -1)[..., 0]


def sample_paths(seed: int, step: int, num_paths: int, num_layers: int) -> np.ndarray:
  """(num_paths, num_layers, 6) int32 choice indices for training step `step`."""
  groups = layout_lib.GROUPS
  draw = step * num_paths + np.arange(num_paths)[:, None]         # (P, 1)
  layer = np.arange(num_layers)[None, :]                           # (1, L)
  draws = np.broadcast_to(draw, (num_paths, num_layers))
  expansion = EXPANSIONS[_cycle(seed, 1000 + layer, draws, len(EXPANSIONS))]  # (P, L)
  group = np.arange(groups)
  kernel_tag = 2000 + layer[..., None] * groups + group            # (1, L, 6)
  kernels = _cycle(seed, kernel_tag, np.broadcast_to(draws[..., None], draws.shape + (groups,)),
                   len(layout_lib.KERNELS))
  # Skip the (6 - e) groups of 1..5 with the smallest random keys.
  rank_keys = _hash(seed, 3000, draws[..., None], layer[..., None], group)
  rank_keys[..., 0] = _MASK  # Group 0 never skips.
  order = np.argsort(np.argsort(rank_keys, axis=-1), axis=-1)      # Rank of each group.
  skipped = order < (groups - expansion)[..., None]
  return np.where(skipped, layout_lib.SKIP, kernels).astype(np.int32)
