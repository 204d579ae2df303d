"""Runs of identical cells as one `lax.scan` over their stacked variables.

A supernet's cells of one shape and one configuration compute the same function
with different weights. Unrolled, the compiler sees every one of them; scanned,
it sees one, so a deep supernet compiles in a fraction of the time. The
variables stay per cell (`cell_{i}`, as an unrolled loop creates them at init),
so checkpoints, DrNAS widening and weight imports see one tree either way.
`scan_identical_cells` scans cells whose inputs have one shape (NAS-Bench-201's
stages); `scan_cell_run` pipelines DARTS cells, which read the two cells before
them, so that a run's first cell may read inputs of other shapes.
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


PREPROCESS = ('preprocess0', 'preprocess1')


def scan_cell_run(parent: nn.Module, first: nn.Module, later: nn.Module,
                  names: Sequence[str], s0, s1, args: Tuple,
                  rng_name: Optional[str] = None):
  """Applies a run of two or more DARTS cells (`names`: same type, channels and
  resolution) that each read the two cells before them, as one `lax.scan`
  whose step j computes cell j's `preprocess1` and edges and cell j + 1's
  `preprocess0`, both preprocesses on cell j - 1's output (cell j + 1's `s0`).
  Only the first cell's `preprocess0` runs before the loop, so the run's first
  `s0` may have any shape (after a reduction cell, the output of the cell
  before it, at twice the resolution); `s1` must have the run's output shape. The last step computes
  a stand-in `preprocess0` (the last cell's, again) and drops it. `first` and
  `later` are the unbound cells (`later`: the cells after the first, which
  follow a normal cell), called as `cell(s0, s1, *args, part=...)`
  (supernet.SearchCell); `parent` holds their variables under `names` and gets
  their BatchNorm statistics back per cell where it may change them.
  `rng_name`: the stream the cells draw from (one key per cell). Returns the
  last two cells' outputs."""
  collections = [c for c in COLLECTIONS if parent.has_variable(c, names[0])]
  cells = [{c: parent.get_variable(c, n) for c in collections} for n in names]
  update_stats = 'batch_stats' in collections and parent.is_mutable_collection('batch_stats')
  keys = (jax.random.split(parent.make_rng(rng_name), len(names))
          if rng_name and parent.has_rng(rng_name) else None)
  last = len(names) - 1

  def part_of(j, keep):  # cell j's variables of the modules `keep` says yes to
    return {c: {m: v for m, v in tree.items() if keep(m)} for c, tree in cells[j].items()}

  def stacked(parts):
    return jax.tree.map(lambda *v: jnp.stack(v), *parts)

  def apply(cell, variables, x0, x1, part, key=None):
    out = cell.apply(variables, x0, x1, *args, part=part,
                     rngs=None if key is None else {rng_name: key},
                     mutable=['batch_stats'] if update_stats else False)
    return out if update_stats else (out, None)

  p0, first_stats = apply(first, part_of(0, {'preprocess0'}.__contains__), s0, None,
                          'preprocess0')
  own = stacked([part_of(j, lambda m: m != 'preprocess0') for j in range(len(names))])
  next0 = stacked([part_of(min(j + 1, last), {'preprocess0'}.__contains__)
                   for j in range(len(names))])

  def step(carry, xs):
    x0, _, previous = carry  # cell j's preprocessed s0; cell j - 1's output (its s1)
    own_vars, next_vars, key = xs
    x1, stats1 = apply(later, own_vars, None, previous, 'preprocess1')
    y, stats_edges = apply(later, own_vars, x0, x1, 'edges', key)
    x0_next, stats0 = apply(later, next_vars, previous, None, 'preprocess0')
    # (each apply gives back all the statistics it was given)
    stats = None if stats1 is None else {
        **stats_edges['batch_stats'], 'preprocess1': stats1['batch_stats']['preprocess1']}
    return (x0_next, previous, y), (stats, None if stats0 is None else stats0['batch_stats'])

  carry, (stats, stats0) = jax.lax.scan(
      step, (p0, jnp.zeros_like(s1), s1), (own, next0, keys))
  if update_stats:
    for j, name in enumerate(names):
      tree = jax.tree.map(lambda v, j=j: v[j], stats)
      tree['preprocess0'] = (first_stats['batch_stats'] if j == 0 else
                             jax.tree.map(lambda v, j=j: v[j - 1], stats0))['preprocess0']
      parent.put_variable('batch_stats', name, tree)
  return carry[1], carry[2]
