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
PREPROCESS = ('preprocess0', 'preprocess1')  # a DARTS cell's input modules


class _Run:
  """The variables `parent` holds for the cells `names`, and how to apply one
  unbound cell to a slice of them inside a scan step."""

  def __init__(self, parent: nn.Module, names: Sequence[str], args: Tuple,
               rng_name: Optional[str]):
    collections = [c for c in COLLECTIONS if parent.has_variable(c, names[0])]
    self.cells = [{c: parent.get_variable(c, n) for c in collections} for n in names]
    self.update_stats = ('batch_stats' in collections
                         and parent.is_mutable_collection('batch_stats'))
    self.keys = (jax.random.split(parent.make_rng(rng_name), len(names))
                 if rng_name and parent.has_rng(rng_name) else None)
    self.parent, self.names, self.args, self.rng_name = parent, names, args, rng_name

  def apply(self, cell: nn.Module, variables, *inputs, key=None, **kwargs):
    """(cell's output, the statistics it wrote, or None where none are written)."""
    out = cell.apply(variables, *inputs, *self.args,
                     rngs=None if key is None else {self.rng_name: key},
                     mutable=['batch_stats'] if self.update_stats else False, **kwargs)
    return (out[0], out[1]['batch_stats']) if self.update_stats else (out, None)

  def write_stats(self, stats_of_cell: Callable[[int], dict]) -> None:
    if self.update_stats:
      for j, name in enumerate(self.names):
        self.parent.put_variable('batch_stats', name, stats_of_cell(j))


def _stacked(trees):
  return jax.tree.map(lambda *v: jnp.stack(v), *trees)


def _row(tree, j):
  return jax.tree.map(lambda v: v[j], tree)


def scan_identical_cells(parent: nn.Module, cell: nn.Module, names: Sequence[str], carry,
                         cell_inputs: Callable[[object], Tuple], next_carry: Callable,
                         args: Tuple, rng_name: Optional[str] = None):
  """Applies unbound `cell` once per name in `names`, with the variables `parent`
  holds under that name, threading `carry`: a step calls
  `cell(*cell_inputs(carry), *args)` and moves on to `next_carry(carry, output)`.
  BatchNorm statistics are written back per cell where `parent` may change
  them; `rng_name`: an rng stream the cells draw from (one key per cell).
  Returns the final carry."""
  run = _Run(parent, names, args, rng_name)

  def step(carry, xs):
    variables, key = xs
    y, stats = run.apply(cell, variables, *cell_inputs(carry), key=key)
    return next_carry(carry, y), stats

  carry, stats = jax.lax.scan(step, carry, (_stacked(run.cells), run.keys))
  run.write_stats(lambda j: _row(stats, j))
  return carry


def scan_cell_run(parent: nn.Module, first: nn.Module, later: nn.Module,
                  names: Sequence[str], s0, s1, args: Tuple,
                  rng_name: Optional[str] = None):
  """Applies a run of two or more DARTS cells (`names`: same type, channels and
  resolution) that each read the two cells before them, as one `lax.scan`
  whose step j computes cell j's `preprocess1` and edges and cell j + 1's
  `preprocess0`, both preprocesses on cell j - 1's output (cell j + 1's `s0`).
  Only the first cell's `preprocess0` runs before the loop, so the run's first
  `s0` may have any shape (after a reduction cell, the output of the cell
  before it, at twice the resolution); `s1` must have the run's output shape.
  The last step computes a stand-in `preprocess0` (the last cell's, again) and
  drops it. `first` and `later` are the unbound cells (`later`: the cells after
  the first, which follow a normal cell), called as
  `cell(s0, s1, *args, part=...)` (supernet.SearchCell); `parent` holds their
  variables under `names` and gets their BatchNorm statistics back per cell
  where it may change them. `rng_name`: the stream the cells draw from (one
  key per cell). Returns the last two cells' outputs."""
  run = _Run(parent, names, args, rng_name)
  last = len(names) - 1

  def part_of(j, keep):  # cell j's variables of the modules `keep` says yes to
    return {c: {m: v for m, v in tree.items() if keep(m)}
            for c, tree in run.cells[j].items()}

  is_preprocess0, is_preprocess1 = {'preprocess0'}.__contains__, {'preprocess1'}.__contains__
  p0, first_stats = run.apply(first, part_of(0, is_preprocess0), s0, None,
                              part='preprocess0')
  preprocess1 = _stacked([part_of(j, is_preprocess1) for j in range(len(names))])
  edges = _stacked([part_of(j, lambda m: m not in PREPROCESS) for j in range(len(names))])
  next0 = _stacked([part_of(min(j + 1, last), is_preprocess0) for j in range(len(names))])

  def step(carry, xs):
    x0, _, previous = carry  # cell j's preprocessed s0; cell j - 1's output (its s1)
    vars1, edge_vars, vars0, key = xs
    x1, stats1 = run.apply(later, vars1, None, previous, part='preprocess1')
    y, stats_edges = run.apply(later, edge_vars, x0, x1, key=key, part='edges')
    x0_next, stats0 = run.apply(later, vars0, previous, None, part='preprocess0')
    stats = None if stats1 is None else {**stats_edges, **stats1}
    return (x0_next, previous, y), (stats, stats0)

  carry, (stats, stats0) = jax.lax.scan(
      step, (p0, jnp.zeros_like(s1), s1), (preprocess1, edges, next0, run.keys))
  run.write_stats(lambda j: {**_row(stats, j),
                             **(first_stats if j == 0 else _row(stats0, j - 1))})
  return carry[1], carry[2]

