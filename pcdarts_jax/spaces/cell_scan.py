"""Runs of identical cells as one `lax.scan` over their stacked variables.

A supernet's cells of one shape and one configuration compute the same function
with different weights. Unrolled, the compiler sees every one of them; scanned,
it sees one, so a deep supernet compiles in a fraction of the time. The
variables stay per cell (`cell_{i}`, as an unrolled loop creates them at init),
so checkpoints, DrNAS widening and weight imports see one tree either way.
"""

from typing import Callable, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

COLLECTIONS = ('params', 'batch_stats')


def scan_identical_cells(parent: nn.Module, cell: nn.Module, names: Sequence[str], carry,
                         cell_inputs: Callable[[object], Tuple], next_carry: Callable,
                         args: Tuple, rng_name: Optional[str] = None):
  """Applies unbound `cell` once per name in `names`, with the variables `parent`
  holds under that name, threading `carry`: a step calls
  `cell(*cell_inputs(carry), *args)` and moves on to `next_carry(carry, output)`.
  BatchNorm statistics are written back per cell where `parent` may change
  them; `rng_name`: an rng stream the cells draw from (one key per cell).
  Returns the final carry."""
  collections = [c for c in COLLECTIONS if parent.has_variable(c, names[0])]
  stacked = {c: jax.tree.map(lambda *v: jnp.stack(v), *[parent.get_variable(c, n)
                                                         for n in names])
             for c in collections}
  update_stats = 'batch_stats' in collections and parent.is_mutable_collection('batch_stats')
  keys = (jax.random.split(parent.make_rng(rng_name), len(names))
          if rng_name and parent.has_rng(rng_name) else None)

  def step(carry, xs):
    variables, key = xs
    out = cell.apply(variables, *cell_inputs(carry), *args,
                     rngs=None if key is None else {rng_name: key},
                     mutable=['batch_stats'] if update_stats else False)
    y, stats = out if update_stats else (out, None)
    return next_carry(carry, y), None if stats is None else stats['batch_stats']

  carry, stats = jax.lax.scan(step, carry, (stacked, keys))
  if update_stats:
    for j, name in enumerate(names):
      parent.put_variable('batch_stats', name, jax.tree.map(lambda v, j=j: v[j], stats))
  return carry
