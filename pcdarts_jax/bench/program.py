"""What a lowered program executes, counted from its StableHLO without running
or compiling it: a proxy of a step's kernel count for any platform, measurable
on a CPU-only machine (launch.benchmark --measure=program --platform=cuda).

Counting rules, per call of the program:
  * an op counts once each time it runs: a loop body times the loop's trip
    count (read from the loop's own condition: a counter against a constant),
    a function at each of its call sites;
  * a conditional whose branch is known when the program is compiled (the
    choice of a `lax.platform_dependent`, lowered as a `case` on a constant)
    is no conditional: its chosen branch alone counts;
  * any other conditional counts once in `conditionals`, and its costliest
    branch's ops count (the step with every branch that does work taken);
  * constants, returns, tuples and optimization barriers are no work; loops,
    conditionals and calls count through what they contain.
Ops are counted before XLA fuses them, so `executed_ops` bounds the number of
kernels from above: compare two forms of one step on one platform with it.
"""

import dataclasses
import math
from typing import Any, Dict, Optional, Tuple

import jax
from jax.extend.mlir import ir

PLATFORMS = ('cpu', 'cuda', 'rocm', 'tpu')  # jax lowering platform names

# Ops that do no work of their own (containers are counted through their bodies).
_FREE = frozenset((
    'stablehlo.constant', 'stablehlo.return', 'func.return', 'stablehlo.tuple',
    'stablehlo.get_tuple_element', 'stablehlo.optimization_barrier'))
_CONDITIONALS = frozenset(('stablehlo.case', 'stablehlo.if'))
_CONTAINERS = _CONDITIONALS | {'stablehlo.while', 'func.call', 'stablehlo.composite',
                               'func.func'}
_DOTS = frozenset(('stablehlo.dot_general', 'stablehlo.dot'))
# Comparison of the loop counter i with the bound b: trip count from the start s and step d.
_TRIPS = {
    'LT': lambda s, b, d: math.ceil((b - s) / d) if d > 0 else None,
    'LE': lambda s, b, d: math.floor((b - s) / d) + 1 if d > 0 else None,
    'GT': lambda s, b, d: math.ceil((s - b) / -d) if d < 0 else None,
    'GE': lambda s, b, d: math.floor((s - b) / -d) + 1 if d < 0 else None,
    'NE': lambda s, b, d: (b - s) // d if d and (b - s) % d == 0 and (b - s) // d >= 0
                          else None,
}
_MIRRORED = {'LT': 'GT', 'LE': 'GE', 'GT': 'LT', 'GE': 'LE', 'NE': 'NE'}


@dataclasses.dataclass
class Counts:
  """Executions per call of the program (see the module docstring)."""
  executed_ops: int = 0
  executed_convolutions: int = 0
  executed_dots: int = 0
  executed_custom_calls: int = 0
  conditionals: int = 0
  while_loops: int = 0
  loop_iterations: int = 0
  # Loops whose trip count is not a constant of the program: counted once.
  unknown_trip_count_loops: int = 0
  custom_call_targets: Tuple[str, ...] = ()

  def __add__(self, other: 'Counts') -> 'Counts':
    return Counts(**{f.name: (tuple(sorted(set(getattr(self, f.name))
                                           | set(getattr(other, f.name))))
                              if f.name == 'custom_call_targets'
                              else getattr(self, f.name) + getattr(other, f.name))
                     for f in dataclasses.fields(self)})

  def times(self, n: int) -> 'Counts':
    return Counts(**{f.name: (getattr(self, f.name) if f.name == 'custom_call_targets'
                              else n * getattr(self, f.name))
                     for f in dataclasses.fields(self)})

  def as_dict(self) -> Dict[str, Any]:
    record = dataclasses.asdict(self)
    record['custom_call_targets'] = list(self.custom_call_targets)
    return record


def _name(op) -> str:
  return op.operation.name


def _block_ops(region):
  return [op for block in region.blocks for op in block.operations]


def _terminator(region):
  return list(region.blocks[0].operations)[-1]


class _Counter:
  """Walks a module from its entry function, with the integer scalars known at
  compile time (constants, and what a constant-index `case` returns)."""

  def __init__(self, module: ir.Module):
    self.functions = {}
    for op in module.body.operations:
      if _name(op) == 'func.func':
        self.functions[ir.StringAttr(op.attributes['sym_name']).value] = op
    self.memo = {}

  def constant(self, value, known: Dict) -> Optional[int]:
    """The value as a Python int where the program fixes it, else None."""
    if value in known:
      return known[value]
    if isinstance(value, ir.BlockArgument):
      return None
    op = value.owner
    name = _name(op)
    if name == 'stablehlo.constant':
      attr = op.attributes['value']
      if (isinstance(attr, ir.DenseIntElementsAttr) and attr.is_splat
          and ir.RankedTensorType(attr.type).rank == 0):
        return int(attr.get_splat_value().value)
      return None
    if name == 'stablehlo.convert':
      return self.constant(op.operands[0], known)
    if name in _CONDITIONALS:
      branch = self.known_branch(op, known)
      if branch is not None:
        returned = _terminator(op.regions[branch]).operands[value.result_number]
        return self.constant(returned, known)
    return None

  def known_branch(self, op, known: Dict) -> Optional[int]:
    index = self.constant(op.operands[0], known)
    if index is None:
      return None
    if _name(op) == 'stablehlo.if':  # regions: true, false
      return 0 if index else 1
    # An out-of-range case index runs the last branch.
    return index if 0 <= index < len(op.regions) else len(op.regions) - 1

  def function(self, name: str, arguments: Tuple[Optional[int], ...]) -> Counts:
    key = (name, arguments)
    if key not in self.memo:
      body = self.functions[name].regions[0].blocks[0]
      known = {arg: c for arg, c in zip(body.arguments, arguments) if c is not None}
      self.memo[key] = self.ops(list(body.operations), known)
    return self.memo[key]

  def ops(self, operations, known: Dict) -> Counts:
    total = Counts()
    for op in operations:
      total = total + self.op(op, known)
    return total

  def op(self, op, known: Dict) -> Counts:
    name = _name(op)
    if name in _FREE:
      return Counts()
    if name == 'func.call':
      callee = ir.FlatSymbolRefAttr(op.attributes['callee']).value
      return self.function(callee, tuple(self.constant(a, known) for a in op.operands))
    if name == 'stablehlo.composite':
      callee = ir.FlatSymbolRefAttr(op.attributes['decomposition']).value
      return self.function(callee, tuple(self.constant(a, known) for a in op.operands))
    if name == 'stablehlo.while':
      return self.loop(op, known)
    if name in _CONDITIONALS:
      branch = self.known_branch(op, known)
      if branch is not None:
        return self.ops(_block_ops(op.regions[branch]), known)
      branches = [self.ops(_block_ops(region), known) for region in op.regions]
      return max(branches, key=lambda c: c.executed_ops) + Counts(conditionals=1)
    counts = Counts(executed_ops=1)
    if name == 'stablehlo.convolution':
      counts.executed_convolutions = 1
    elif name in _DOTS:
      counts.executed_dots = 1
    elif name == 'stablehlo.custom_call':
      counts.executed_custom_calls = 1
      counts.custom_call_targets = (ir.StringAttr(op.attributes['call_target_name']).value,)
    return counts  # A region of another op (a reduction's body) is part of that op.

  def loop(self, op, known: Dict) -> Counts:
    cond, body = op.regions[0], op.regions[1]
    trips = self.trip_count(op, known)
    # A constant the loop carries unchanged (a platform choice made outside a
    # scan, differentiated) is still known inside it.
    known = dict(known)
    returned = _terminator(body).operands
    for i, start in enumerate(op.operands):
      value = self.constant(start, known)
      if value is not None and returned[i] == body.blocks[0].arguments[i]:
        known[body.blocks[0].arguments[i]] = known[cond.blocks[0].arguments[i]] = value
    per_iteration = self.ops(_block_ops(cond), known) + self.ops(_block_ops(body), known)
    loop = Counts(while_loops=1, loop_iterations=trips or 1,
                  unknown_trip_count_loops=int(trips is None))
    return per_iteration.times(trips if trips is not None else 1) + loop

  def trip_count(self, op, known: Dict) -> Optional[int]:
    """Iterations of a loop whose condition compares a counter (a loop-carried
    value that starts at a constant and the body steps by a constant) with a
    constant; None for any other loop."""
    cond_block, body = op.regions[0].blocks[0], op.regions[1]
    compare = _terminator(op.regions[0]).operands[0].owner
    if isinstance(compare, ir.Block) or _name(compare) != 'stablehlo.compare':
      return None
    direction = str(compare.attributes['comparison_direction']).split()[-1].rstrip('>')
    lhs, rhs = compare.operands
    if not _is_argument_of(lhs, cond_block):
      lhs, rhs, direction = rhs, lhs, _MIRRORED.get(direction)
    if not _is_argument_of(lhs, cond_block) or direction not in _TRIPS:
      return None
    bound = self.constant(rhs, known)
    index = lhs.arg_number
    start = self.constant(op.operands[index], known)
    step = _counter_step(body, index, self)
    if None in (bound, start, step):
      return None
    trips = _TRIPS[direction](start, bound, step)
    return None if trips is None else max(trips, 0)


def _is_argument_of(value, block) -> bool:
  return isinstance(value, ir.BlockArgument) and value.owner == block


def _counter_step(body_region, index: int, counter: _Counter) -> Optional[int]:
  """d where the loop body returns its argument `index` plus (or minus) the constant d."""
  block = body_region.blocks[0]
  returned = _terminator(body_region).operands[index]
  if isinstance(returned, ir.BlockArgument):
    return None
  update = returned.owner
  if _name(update) not in ('stablehlo.add', 'stablehlo.subtract'):
    return None
  a, b = update.operands
  sign = 1 if _name(update) == 'stablehlo.add' else -1
  if _is_argument_of(a, block) and a.arg_number == index:
    d = counter.constant(b, {})
  elif sign == 1 and _is_argument_of(b, block) and b.arg_number == index:
    d = counter.constant(a, {})
  else:
    return None
  return None if d is None else sign * d


def count(module: ir.Module, entry: str = 'main') -> Counts:
  """Counts of one call of `entry` in a lowered StableHLO module."""
  counter = _Counter(module)
  if entry not in counter.functions:
    raise ValueError(f'the module has no function {entry!r}; it has {sorted(counter.functions)}')
  arguments = counter.functions[entry].regions[0].blocks[0].arguments
  return counter.function(entry, (None,) * len(arguments))


def lower(traced, platform: str) -> ir.Module:
  """The StableHLO module of a traced jit function (`jax.jit(f).trace(*args)`;
  abstract arguments are enough) lowered for `platform`, which needs no device
  of that platform: a program for a GPU lowers on a CPU-only machine."""
  if platform not in PLATFORMS:
    raise ValueError(f'--platform={platform!r} is not one of {PLATFORMS}')
  return traced.lower(lowering_platforms=(platform,)).compiler_ir('stablehlo')


def module_ops(module: ir.Module) -> int:
  """Ops written in the module, each once (loops not unrolled, no-work ops
  excluded): the size of what the compiler is given."""
  def ops_in(operation) -> int:
    total = 0
    for region in operation.regions:
      for block in region.blocks:
        for op in block.operations:
          name = _name(op)
          if name in _CONTAINERS:
            total += ops_in(op)
          elif name not in _FREE:
            total += 1  # A reduction's body is part of its op.
    return total
  return ops_in(module.operation)


def default_platform() -> str:
  """The lowering platform of this machine's default backend."""
  backend = jax.default_backend()
  if backend != 'gpu':
    return backend
  return 'rocm' if 'rocm' in jax.devices()[0].client.platform_version.lower() else 'cuda'
