"""Many searches in one program: N seeds stepped by one vmapped bilevel step.

DARTS-family searches land in different optima from run to run; the DARTS
authors (Liu et al. ICLR 2019, section 3.3) run the search several times and
keep the genotype with the best validation accuracy. `search.num_seeds` = N runs
those searches as one program: seed i (of 0..N-1) is the search a one-seed run
with `seed = config.seed + i` would make, with its own initial weights, arch
values, BatchNorm statistics, optimizer states and step keys (augmentation,
channel sampling, Dirichlet/Gumbel draws), and one `jax.vmap` over the seed axis
steps all N (inside the pmap over devices: devices x seeds).

Layout. A seeds state is the search state with a leading seed axis on every
leaf except `step`, which stays one scalar: the warm-up gate (`lax.cond` on
`state.step`) and the learning-rate and temperature schedules see one unbatched
step, so the warm-up still skips the arch pass. Under pmap the state is
replicated as usual (devices, seeds, ...).

Data. `search.seed_data='shared'` (default): every seed sees the same batches
(one input pipeline; seed i then differs from a one-seed run with seed
config.seed + i only in the order of its batches). `'per_seed'`: seed i reads
its own stream, shuffled as a one-seed run with that seed shuffles; its batches
carry a seed axis after the device axis.

This module holds only the seed axis; the search's own state factory, bilevel
step (with its non-finite guard) and eval step are passed in, so it does not
import the search loop, which uses it.
"""

import collections
import json
import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from pcdarts_jax.run import config_fields
from pcdarts_jax.run import driver
from pcdarts_jax.run import parallel
from pcdarts_jax.run import rundir

SEED_DATA = ('shared', 'per_seed')
SEEDS_FILE = 'seeds.json'
AGREEMENT_PICTURE = 'seed_agreement.png'
SELECTION = ('the highest final validation accuracy (DARTS: the best of several searches '
             'by validation); ties: the lowest seed index')


# --------------------------------------------------------------------------
# Config.


def num_seeds(config) -> int:
  """`search.num_seeds` (1 where a library caller's config lacks it)."""
  return config_fields.num_seeds(config.search)


def seed_data(config) -> str:
  """`search.seed_data`: 'shared' or 'per_seed' batches."""
  return config_fields.seed_data(config.search)


def validate(config, require: Callable[[bool, str], None]):
  """One-line errors for the seed fields. N > 1 is refused with DrNAS'
  progressive stages (each stage boundary prunes ops from the seed's own arch
  values, so the seeds' supernets would differ in shape) and with SGNAS (its own
  two-phase search)."""
  s = config.search
  n = config_fields.num_seeds(s)
  require(config_fields.is_int(n) and n >= 1,
          f'search.num_seeds={n!r} must be an integer >= 1.')
  data = config_fields.seed_data(s)
  require(data in SEED_DATA, f'search.seed_data={data!r} is not one of {SEED_DATA}.')
  if n == 1:
    return
  require(config_fields.space(config.model) != 'sgnas',
          f'search.num_seeds={n} is not supported by SGNAS (model.space=\'sgnas\'); '
          f'allowed: 1.')
  stages = len(tuple(s.get('stage_epochs', ()) or ()))
  require(stages <= 1,
          f'search.num_seeds={n} is not supported with DrNAS progressive learning '
          f'({stages} stages in search.stage_epochs); allowed: num_seeds=1, or '
          f'search.stage_epochs=() for one stage.')


def seed_config(config, index: int):
  """The config of seed `index` as a one-seed run: seed config.seed + index,
  num_seeds 1. The subsets of streamed inputs stay those of the run
  (data.subset_seed pinned), so every seed searches on the same split."""
  one = config.copy_and_resolve_references()
  with one.unlocked():
    if 'subset_seed' not in one.data:
      one.data.subset_seed = config.seed
    one.seed = config.seed + index
    one.search.num_seeds = 1
  return one


# --------------------------------------------------------------------------
# Keys.


def run_keys(seed: int) -> Tuple[jax.Array, jax.Array, jax.Array]:
  """(init, step, eval) keys of a one-seed search with `seed`: the state is made
  from `init`, step t draws from fold_in(step, t), the validation of epoch e from
  fold_in(eval, e)."""
  init_rng, step_key = jax.random.split(jax.random.PRNGKey(seed))
  eval_key = jax.random.fold_in(step_key, -1 % (2 ** 31))
  return init_rng, step_key, eval_key


def seed_keys(config, n: Optional[int] = None) -> Tuple[jax.Array, jax.Array, jax.Array]:
  """`run_keys` of seeds config.seed + i, stacked: three (N, 2) key arrays."""
  n = num_seeds(config) if n is None else n
  keys = [run_keys(config.seed + i) for i in range(n)]
  return tuple(jnp.stack(k) for k in zip(*keys))


def fold_in(keys: jax.Array, data) -> jax.Array:
  """fold_in(key_i, data) for each seed's key (a leading seed axis); one key
  (a one-seed run's) folds as jax.random.fold_in."""
  if np.ndim(keys) == 1:
    return jax.random.fold_in(keys, data)
  return jax.vmap(jax.random.fold_in, (0, None))(keys, data)


# --------------------------------------------------------------------------
# States.


def state_axes(state) -> Any:
  """vmap axes of a seeds state: 0 for every leaf, None for the shared `step`."""
  return jax.tree.map(lambda _: 0, state).replace(step=None)


def stack_states(states: Sequence[Any]) -> Any:
  """One-seed states (equal steps) -> one seeds state (leading seed axis)."""
  steps = {int(s.step) for s in states}
  if len(steps) != 1:
    raise ValueError(f'seed states at different steps {sorted(steps)} cannot be stacked.')
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[s.replace(step=None) for s in states])
  return stacked.replace(step=states[0].step)


def create_states(create: Callable[[jax.Array], Any], init_rngs: jax.Array) -> Any:
  """The seeds state of `create(init_rng)` (the search's state factory) for each
  seed's init key. Made one seed at a time, so seed i's values are exactly a
  one-seed run's."""
  return stack_states([create(init_rngs[i]) for i in range(init_rngs.shape[0])])


def first_nonfinite(state) -> Optional[int]:
  """The seed (of a host seeds state) whose first non-finite step came first
  (ties: the lowest index); None where none went non-finite."""
  steps = np.asarray(state.first_nonfinite_step)
  bad = np.flatnonzero(steps >= 0)
  return None if not bad.size else int(bad[np.argmin(steps[bad])])


def seed_state(state, index: int) -> Any:
  """Seed `index`'s one-seed state (of an unreplicated seeds state)."""
  step = state.step
  return jax.tree.map(lambda x: x[index], state.replace(step=None)).replace(step=step)


def count(state) -> int:
  """The number of seeds of a (host, unreplicated) seeds state."""
  return int(jax.tree.leaves(state.replace(step=None))[0].shape[0])


# --------------------------------------------------------------------------
# Steps.


def _data_axis(data: str) -> Optional[int]:
  if data not in SEED_DATA:
    raise ValueError(f'search.seed_data={data!r} is not one of {SEED_DATA}.')
  return None if data == 'shared' else 0


def vmap_step(step_fn: Callable, data: str = 'shared', flatten: bool = False) -> Callable:
  """The search step `step_fn(state, train_batch, arch_batch, rng)` (the
  guarded bilevel step) over a seeds state: `rngs` holds one key per seed, the
  batches are shared (`data='shared'`) or carry a seed axis ('per_seed'). The
  step enters unbatched; a guarded step may leave a frozen seed behind (a
  non-finite step with search.skip_nonfinite off), so the step out is the
  largest: the seeds that stepped. Metric sums come out per seed ((N,) each),
  or with `flatten` as `flatten_sums` lays them out."""
  data_axis = _data_axis(data)

  def stepped(state, train_batch, arch_batch, rngs):
    new_state, metrics = jax.vmap(step_fn, in_axes=(state_axes(state), data_axis, data_axis, 0))(
        state, train_batch, arch_batch, rngs)
    return new_state.replace(step=jnp.max(new_state.step)), (
        flatten_sums(metrics) if flatten else metrics)

  return stepped


def vmap_eval_step(eval_step: Callable) -> Callable:
  """The eval step `eval_step(state, batch, rng)` over a seeds state: one
  shared batch, one key per seed; metric sums per seed."""
  def evaluate_seeds(state, batch, rngs):
    return jax.vmap(eval_step, in_axes=(state_axes(state), None, 0))(state, batch, rngs)
  return evaluate_seeds


def host_sums(sums) -> List[Dict[str, float]]:
  """Per-seed metric sums (seeds, or devices x seeds under pmap, where every
  device holds the total) -> one dict of floats per seed (one transfer)."""
  sums = jax.device_get(sums)
  first = next(iter(sums.values()))
  if np.ndim(first) == 2:  # A device axis: this process's first copy.
    sums = {k: v[0] for k, v in sums.items()}
  n = np.shape(next(iter(sums.values())))[0]
  return [{k: float(v[i]) for k, v in sums.items()} for i in range(n)]


def flatten_sums(sums) -> Dict[str, jax.Array]:
  """Per-seed sums ({key: (N,)}) -> scalars, inside the step: `key` added over
  the seeds (a running loss over all searches; `nonfinite` > 0 if any seed went
  non-finite) and `seed_<i>/key` per seed. An epoch driver that adds, fetches
  and checkpoints scalar sums then carries every seed's."""
  out = {k: jnp.sum(v, 0) for k, v in sums.items()}
  for k, v in sums.items():
    out.update({f'seed_{i}/{k}': v[i] for i in range(v.shape[0])})
  return out


def unflatten_sums(sums: Mapping[str, float], n: int) -> List[Dict[str, float]]:
  """`flatten_sums`' host floats -> one dict per seed."""
  return [{k[len(f'seed_{i}/'):]: v for k, v in sums.items() if k.startswith(f'seed_{i}/')}
          for i in range(n)]


def summarise(sums: Mapping[str, float], prefix: str = '') -> Dict[str, float]:
  """{'loss', 'accuracy'} of one seed's sums ({} where nothing was counted)."""
  total = float(sums[prefix + 'count'])
  if total == 0:
    return {}
  return {'loss': float(sums[prefix + 'loss_sum']) / total,
          'accuracy': float(sums[prefix + 'correct']) / total}


def evaluate(eval_step: Callable, state, batches, rngs: jax.Array,
             feed: Callable = lambda batch: batch) -> List[Dict[str, float]]:
  """Per-seed loss/accuracy over masked `batches` with a vmapped eval step;
  batch j draws from fold_in(rng_i, j), as a one-seed evaluation does."""
  totals = None
  for j, batch in enumerate(batches):
    sums = eval_step(state, feed(batch), fold_in(rngs, j))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  return [summarise(s) for s in host_sums(totals)]


def search_sources(config, inputs, make_inputs: Callable) -> Tuple[Any, Any]:
  """The (weight, arch) host batch iterators of a search: `inputs`' own with
  one seed or shared data; with `seed_data='per_seed'`, one stream per seed
  (seed i's from `make_inputs(seed_config(config, i))`, the search's input
  factory; seed 0's are `inputs`') as `SeedStreams`."""
  n = num_seeds(config)
  if n == 1 or seed_data(config) == 'shared':
    return inputs.train, inputs.arch
  others = [make_inputs(seed_config(config, i)) for i in range(1, n)]
  return (SeedStreams([inputs.train] + [o.train for o in others]),
          SeedStreams([inputs.arch] + [o.arch for o in others]))


class SeedStreams:
  """N host batch iterators (one per seed, `search.seed_data='per_seed'`) as one,
  for `DevicePrefetch`: its `put_sharded` splits a batch's leading axis over the
  devices, so each array comes laid out as (devices x seeds, B / devices, ...)
  and lands on the devices as (devices, seeds, B / devices, ...), the seeds
  step's per-seed input. `state()` / `restore()` take one position per seed."""

  def __init__(self, iterators: Sequence[Any], devices: Optional[int] = None):
    self.iterators = list(iterators)
    self.devices = devices

  @property
  def steps_per_epoch(self) -> int:
    return self.iterators[0].steps_per_epoch

  def state(self):
    return [it.state() for it in self.iterators]

  def restore(self, states):
    for it, position in zip(self.iterators, states):
      it.restore(position)

  def __iter__(self):
    return self

  def __next__(self):
    d = self.devices or parallel.local_device_count()

    def arrange(*xs):
      split = [np.asarray(x).reshape((d, -1) + np.shape(x)[1:]) for x in xs]
      stacked = np.stack(split, 1)  # devices, seeds, B / devices, ...
      return stacked.reshape((d * len(xs),) + stacked.shape[2:])
    return jax.tree.map(arrange, *[next(it) for it in self.iterators])


def stack_batches(batches: Sequence[Any], axis: int = 0) -> Any:
  """Per-seed batches (`seed_data='per_seed'`) -> one batch with a seed axis at
  `axis` (1 for batches already split over the devices: devices, seeds, ...)."""
  return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs], axis), *batches)


# --------------------------------------------------------------------------
# Outputs.


def seed_dir(root: str, index: int) -> str:
  """WORKDIR/seed_<i>: seed i's genotype.json, genotypes.jsonl and arch.npz."""
  return os.path.join(root, f'seed_{index}')


def seed_workdir(root: str, index: int, log_name: str) -> rundir.Workdir:
  return rundir.Workdir(seed_dir(root, index), log_name)


def last_record(path: str) -> Optional[Dict[str, Any]]:
  """The last line of a JSON-lines log (None: no such file or no line)."""
  if not os.path.exists(path):
    return None
  with open(path) as f:
    lines = [line for line in f if line.strip()]
  return json.loads(lines[-1]) if lines else None


def append_record(paths: rundir.Workdir, record: Mapping[str, Any]):
  """One epoch's line in the seed's log (the one-seed run's record format)."""
  os.makedirs(paths.root, exist_ok=True)
  with open(paths.jsonl, 'a') as f:
    f.write(json.dumps(record) + '\n')


def write_final(paths: rundir.Workdir, genotype_dict: Mapping[str, Any],
                arch: Mapping[str, np.ndarray]):
  """genotype.json and arch.npz of one seed, as a one-seed search writes them."""
  os.makedirs(paths.root, exist_ok=True)
  rundir.write_atomic(paths.genotype, json.dumps(genotype_dict) + '\n')
  np.savez(paths.arch + '.tmp.npz', **{k: np.asarray(v) for k, v in arch.items()})
  os.replace(paths.arch + '.tmp.npz', paths.arch)


def scalars_of(index: int, values: Mapping[str, float]) -> Dict[str, float]:
  """TensorBoard tags of seed `index`: seed_<i>/<tag>."""
  return {f'seed_{index}/{k}': v for k, v in values.items()}


def choose(valid_accuracies: Sequence[Optional[float]]) -> int:
  """The seed with the highest final validation accuracy (ties: the lowest
  index; a seed without one, or a non-finite one, ranks last)."""
  def key(i):
    a = valid_accuracies[i]
    return (a is not None and np.isfinite(a), a if a is not None and np.isfinite(a) else 0.0,
            -i)
  return max(range(len(valid_accuracies)), key=key)


def agreement(edges: Sequence[Mapping[str, Sequence[Tuple[int, int, str]]]]) -> Dict[str, Any]:
  """How many seeds agree, per cell type and edge, from each seed's
  `space.genotype_edges(genotype)` ({cell type: [(node, input, op)]}).

  Per cell type: `edges`, one per edge (input -> node) some seed keeps, with
  `chosen` (seeds keeping it: agreement on the chosen inputs), `ops` (seeds per
  op), `op` (the most common; ties: the first in name order) and `op_agree`
  (seeds keeping it with that op); and `nodes`, one per node, with `inputs` (the
  most common set of inputs) and `inputs_agree` (seeds choosing exactly that
  set)."""
  report = {}
  kinds = sorted({kind for seed in edges for kind in seed})
  for kind in kinds:
    per_edge = collections.defaultdict(collections.Counter)
    per_node = collections.defaultdict(collections.Counter)
    for seed in edges:
      inputs = collections.defaultdict(list)
      for node, source, op in seed.get(kind, ()):
        per_edge[(int(node), int(source))][op] += 1
        inputs[int(node)].append(int(source))
      for node, sources in inputs.items():
        per_node[node][tuple(sorted(sources))] += 1
    rows = []
    for (node, source), ops in sorted(per_edge.items()):
      op, agree = sorted(ops.items(), key=lambda item: (-item[1], item[0]))[0]
      rows.append({'edge': f'{source}->{node}', 'node': node, 'input': source,
                   'chosen': sum(ops.values()), 'op': op, 'op_agree': agree,
                   'ops': dict(sorted(ops.items()))})
    nodes = []
    for node, sets in sorted(per_node.items()):
      inputs, agree = sorted(sets.items(), key=lambda item: (-item[1], item[0]))[0]
      nodes.append({'node': node, 'inputs': list(inputs), 'inputs_agree': agree})
    report[kind] = {'edges': rows, 'nodes': nodes}
  return report


def report(config, finals: Sequence[Mapping[str, Any]], genotype_dicts: Sequence[Mapping],
           genotype_strs: Sequence[str], edges: Optional[Sequence[Mapping]]) -> Dict[str, Any]:
  """The contents of seeds.json: per-seed final metrics and genotype, the
  chosen seed and the agreement (None where the space has no
  `genotype_edges`). `finals[i]`: seed i's last epoch record fields (at least
  `valid`)."""
  n = len(finals)
  accuracies = [(f.get('valid') or {}).get('accuracy') for f in finals]
  chosen = choose(accuracies)
  valid = np.array([a for a in accuracies if a is not None and np.isfinite(a)], np.float64)
  spread = None if not valid.size else {
      'mean': float(valid.mean()), 'std': float(valid.std()),
      'min': float(valid.min()), 'max': float(valid.max())}
  return {
      'num_seeds': n,
      'seeds': [config.seed + i for i in range(n)],
      'seed_data': seed_data(config),
      'selection': SELECTION,
      'chosen': chosen,
      'chosen_seed': config.seed + chosen,
      'valid_accuracy': spread,
      'distinct_genotypes': len({json.dumps(g, sort_keys=True) for g in genotype_dicts}),
      'per_seed': [{'index': i, 'seed': config.seed + i, 'dir': f'seed_{i}',
                    'final': dict(finals[i]), 'genotype': dict(genotype_dicts[i]),
                    'genotype_str': genotype_strs[i]} for i in range(n)],
      'agreement': None if edges is None else agreement(edges),
  }


def write_report(root: str, summary: Mapping[str, Any]) -> str:
  path = os.path.join(root, SEEDS_FILE)
  rundir.write_atomic(path, json.dumps(summary, indent=2) + '\n')
  return path


# The fields of a seed's last epoch record that seeds.json keeps as its final metrics.
FINAL_FIELDS = ('epoch', 'step', 'train', 'arch', 'valid', 'nonfinite_skipped',
                'benchmark_accuracy')


def combine_epoch(epoch: int, step: int, seconds: float, results: Sequence[driver.Epoch],
                  seed_paths: Sequence[rundir.Workdir], main: bool) -> driver.Epoch:
  """The epoch of an N-seed search from each seed's (`results[i]`, as a one-seed
  run reports its epoch): seed i's record goes to seed_<i>/genotypes.jsonl (epoch,
  step and `seconds` added, as the driver adds them); the run's record, console
  line and pictures are those of the seed with the best validation accuracy this
  epoch (`seed`: its index; `seeds_valid_accuracy`: every seed's), its scalars
  every seed's under seed_<i>/."""
  accuracies = [(r.record.get('valid') or {}).get('accuracy') for r in results]
  best = choose(accuracies)
  if main:
    for r, paths in zip(results, seed_paths):
      append_record(paths, {'epoch': epoch + 1, 'step': step, **r.record, 'seconds': seconds})
  scalars = {}
  for i, r in enumerate(results):
    scalars.update(scalars_of(i, r.scalars))
  shown = ' '.join('-' if a is None else f'{a:.4f}' for a in accuracies)
  return driver.Epoch(
      dict(results[best].record, seed=best, seeds_valid_accuracy=accuracies), scalars,
      f'{results[best].text}\n  seeds: valid_acc {shown} (seed {best} shown)',
      results[best].pictures)


def finish(config, root: str, seed_paths: Sequence[rundir.Workdir], state, model,
           space) -> Tuple[int, Any]:
  """The end of an N-seed search (main process): each seed's genotype.json and
  arch.npz, seeds.json and the agreement picture (with monitor.pictures).
  Returns (the chosen seed, its genotype): the best final validation accuracy."""
  genotypes_, finals = [], []
  for i, paths in enumerate(seed_paths):
    arch = {k: np.asarray(v) for k, v in seed_state(state, i).arch.items()}
    genotype = space.derive(arch, model)
    write_final(paths, space.genotype_to_dict(genotype), arch)
    genotypes_.append(genotype)
    last = last_record(paths.jsonl) or {}
    finals.append({k: last[k] for k in FINAL_FIELDS if k in last})
  edges = getattr(space, 'genotype_edges', None)
  summary = report(config, finals, [space.genotype_to_dict(g) for g in genotypes_],
                   [space.genotype_str(g) for g in genotypes_],
                   None if edges is None else [edges(g) for g in genotypes_])
  path = write_report(root, summary)
  if config.monitor.pictures:
    agreement_picture(summary, os.path.join(root, 'plots', AGREEMENT_PICTURE))
  chosen = summary['chosen']
  accuracy = (finals[chosen].get('valid') or {}).get('accuracy')
  print(f'{len(seed_paths)} searches: seed {chosen} (seed={summary["chosen_seed"]}) chosen '
        f'by final validation accuracy {accuracy}; {summary["distinct_genotypes"]} distinct '
        f'genotype(s); per-seed outputs in {root}/seed_<i>, summary in {path}', flush=True)
  return chosen, genotypes_[chosen]


def agreement_picture(summary: Mapping[str, Any], path: str) -> Optional[str]:
  """PNG of the agreement: per cell type, edges (rows) by ops (columns), each
  cell the number of seeds choosing that op on that edge (the last column: seeds
  keeping the edge). None where seeds.json has no agreement."""
  agree = summary.get('agreement')
  if not agree:
    return None
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  n = summary['num_seeds']
  kinds = list(agree)
  ops = sorted({op for kind in kinds for row in agree[kind]['edges'] for op in row['ops']})
  columns = ops + ['kept']
  rows = max(len(agree[kind]['edges']) for kind in kinds)
  fig, axes = plt.subplots(1, len(kinds), squeeze=False,
                           figsize=(1.5 + 0.55 * len(columns) * len(kinds) + 1.5 * len(kinds),
                                    1.8 + 0.32 * rows))
  for ax, kind in zip(axes[0], kinds):
    edges = agree[kind]['edges']
    grid = np.array([[row['ops'].get(op, 0) for op in ops] + [row['chosen']] for row in edges],
                    np.float64).reshape(len(edges), len(columns))
    ax.imshow(grid, cmap='Greens', vmin=0, vmax=max(n, 1), aspect='auto')
    for (r, c), value in np.ndenumerate(grid):
      if value:
        ax.text(c, r, f'{int(value)}', ha='center', va='center', fontsize=8,
                color='white' if value > n / 2 else 'black')
    ax.set_xticks(range(len(columns)))
    ax.set_xticklabels(columns, rotation=60, ha='right', fontsize=8)
    ax.set_yticks(range(len(edges)))
    ax.set_yticklabels([row['edge'] for row in edges], fontsize=8)
    ax.set_title(kind, fontsize=10)
  fig.suptitle(f'{n} seeds: how many choose each op per edge (chosen: seed '
               f'{summary["chosen"]}, seed={summary["chosen_seed"]})', fontsize=10)
  fig.tight_layout()
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
