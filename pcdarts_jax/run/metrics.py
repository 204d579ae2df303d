"""Metric sums of a training or search step, brought to the host."""

from typing import Dict

import jax

from pcdarts_jax.run import parallel


def host_sums(sums) -> Dict[str, float]:
  """Device metric sums -> Python floats (one transfer). Sums of a pmapped step
  are already added over the devices: every device holds the total."""
  if next(iter(sums.values())).ndim:  # A device axis: take this process's first copy.
    sums = parallel.unreplicate(sums)
  return {k: float(v) for k, v in jax.device_get(sums).items()}
