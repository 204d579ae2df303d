"""Metric sums of a step, and their way to the host.

Steps return sums over their batch ({loss_sum, correct, count}, plus correct5
for top-5), added over the device axis on device: sums accumulate exactly
across steps and devices, and the host divides only when it reports.
"""

from typing import Dict, Iterable, Optional

import jax
import jax.numpy as jnp
import optax

from pcdarts_jax.run import parallel


def cross_entropy(logits: jax.Array, labels: jax.Array, smoothing: float = 0.0) -> jax.Array:
  """Per-example cross entropy against (1 - s) one_hot + s / num_classes."""
  num_classes = logits.shape[-1]
  targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  if smoothing:
    targets = (1.0 - smoothing) * targets + smoothing / num_classes
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def batch_sums(loss: jax.Array, logits: jax.Array, labels: jax.Array,
               mask: Optional[jax.Array] = None) -> Dict[str, jax.Array]:
  """{loss_sum, correct, count} of a batch whose mean loss is `loss`; `mask`
  (0/1 per example) leaves padding out."""
  hit = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  if mask is None:
    n = labels.shape[0]
    return {'loss_sum': loss * n, 'correct': jnp.sum(hit), 'count': jnp.asarray(n, jnp.float32)}
  return {'loss_sum': loss * jnp.sum(mask), 'correct': jnp.sum(hit * mask),
          'count': jnp.sum(mask)}


def masked_sums(losses: jax.Array, logits: jax.Array, labels: jax.Array,
                mask: jax.Array) -> Dict[str, jax.Array]:
  """{loss_sum, correct, count} of a padded evaluation batch from per-example losses."""
  hit = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  return {'loss_sum': jnp.sum(losses * mask), 'correct': jnp.sum(hit * mask),
          'count': jnp.sum(mask)}


def top5_sums(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> Dict[str, jax.Array]:
  """{correct, correct5}: top-1 and top-5 hits (top-k of the classes there are)."""
  k = min(5, logits.shape[-1])
  top = jax.lax.top_k(logits, k)[1]
  hit = top == labels[:, None]
  return {'correct': jnp.sum(hit[:, 0] * mask), 'correct5': jnp.sum(jnp.any(hit, -1) * mask)}


def zero_sums() -> Dict[str, jax.Array]:
  zero = jnp.zeros((), jnp.float32)
  return {'loss_sum': zero, 'correct': zero, 'count': zero}


def accumulate(totals, sums):
  """totals + sums, on device (no host sync); totals None: sums."""
  return sums if totals is None else jax.tree.map(jnp.add, totals, sums)


def host_sums(sums) -> Dict[str, float]:
  """Device metric sums -> Python floats (one transfer). Sums of a pmapped step
  are already added over the devices: every device holds the total."""
  if next(iter(sums.values())).ndim:  # A device axis: take this process's first copy.
    sums = parallel.unreplicate(sums)
  return {k: float(v) for k, v in jax.device_get(sums).items()}


def total(sums: Iterable) -> Dict[str, float]:
  """The host sums of a stream of device sums (an evaluation pass)."""
  totals = None
  for s in sums:
    totals = accumulate(totals, s)
  return host_sums(totals)


def summarise(sums: Optional[Dict[str, float]], prefix: str = '',
              top5: bool = False) -> Dict[str, float]:
  """{loss, accuracy (, top5_accuracy)} of host sums (keys `prefix`loss_sum, ...);
  {} when they count no example (the arch sums during the arch warm-up)."""
  if not sums or not sums[prefix + 'count']:
    return {}
  count = float(sums[prefix + 'count'])
  out = {'loss': float(sums[prefix + 'loss_sum']) / count,
         'accuracy': float(sums[prefix + 'correct']) / count}
  if top5:
    out['top5_accuracy'] = float(sums[prefix + 'correct5']) / count
  return out
