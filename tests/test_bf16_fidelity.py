"""bfloat16 fidelity of the search: float32 and bfloat16 (model.dtype; bfloat16
activations, float32 params, arch values, statistics and mixing sums) searches of
the digits config over 3 seeds (search.num_seeds: one vmapped program per dtype),
from the same initial states, batches and step keys. Per seed and cell type the
arch values' softmax of the two precisions must stay close, and the derived
genotypes are compared.

The distance. Per edge, the total variation TV(p, q) = 1/2 sum |p - q| between
softmax(alpha) of the two runs; per seed and cell type the max over edges.

The bound, from first principles. The arch optimizer is Adam (PC-DARTS: lr
6e-4, betas (0.5, 0.999)): each step moves every alpha by about lr (|m/sqrt(v)|
<~ 1) in the direction of its gradient's sign, so after T arch steps two runs
whose gradients differ only by rounding are at most ~2 lr T apart per alpha, and
TV <= 1 - exp(-osc(d alpha)) <= osc <= 4 lr T. That worst case (every sign
flipped every step) is what independent seeds approach: their arch gradients
are unrelated. bfloat16 keeps 8 mantissa bits, a relative rounding of 2^-9 ~ 2e-3
per op on the activations; through the ~10-20 ops of a cell path, forward and
backward, the arch gradient carries a relative error of a few percent, so only
the alphas whose gradient is within that noise of zero flip sign, and only the
weight trajectories' slow drift apart (same batches and keys) adds to it. The
bfloat16 distance is then a small fraction of lr T: we bound it by
TV < 0.25 lr T (`_tv_bound`), and require it below the between-seed spread (the
smallest max-over-edges TV between two float32 seeds of that cell type), the
scale at which genotypes already differ.

Measured on this 2-core CPU (XLA:CPU; JAX as pinned), CI variant (C 4, 3 cells,
2 nodes, batch 32, 12 steps of which 10 arch steps: lr T = 6e-3, bound 1.5e-3):
bfloat16 vs float32 TV 4.0e-4 .. 8.3e-4 (0.07 .. 0.14 lr T; the figure moves with
XLA's code generation, e.g. 3.6e-4 .. 6.5e-4 at LLVM opt level 0), between float32 seeds
1.6e-3 .. 2.4e-3 (0.27 .. 0.41 lr T): bfloat16 sits 2.2x below the closest pair of
seeds. With 28 arch steps: 1.1e-3 .. 2.1e-3 against 3.8e-3 .. 4.8e-3 (same
ratios). Genotypes: the same seed's float32 and bfloat16 genotypes share 5-8 of
8 kept (node, input, op) edges, two float32 seeds 0-2 of 8. Slow variant
(search.search, 4-node cells, 3 epochs of 11 steps, 22 arch steps: lr T =
1.3e-2, bound 3.3e-3): bfloat16 vs float32 TV 7.2e-4 .. 1.5e-3 (0.05 .. 0.11 lr T),
between float32 seeds 4.4e-3 .. 7.2e-3 (3.7x above the largest bfloat16
figure of the same cell type); genotypes share 11-14 of 16 kept edges per seed,
two float32 seeds 2-5 of 16. The test requires each seed's agreement to reach
at least the best agreement between two float32 seeds. Wall times: CI variant
~170 s (user CPU 110 s, two compiles of ~60-80 s each), slow variant ~4 min.
"""

import itertools
import os
import time

import jax
import numpy as np
import pytest

from configs import digits_search
from pcdarts_jax.data import datasets as data
from pcdarts_jax.search import optim
from pcdarts_jax.search import search as loop
from pcdarts_jax.search import seeds
from pcdarts_jax.spaces.darts import genotypes
from pcdarts_jax.spaces.darts import space
from pcdarts_jax.spaces.darts import supernet
from tests import compile_options

NUM_SEEDS = 3
KINDS = ('normal', 'reduce')
DTYPES = ('float32', 'bfloat16')
# The CI variant: a few steps of the search step itself (no validation,
# checkpoints or eval compile), arch steps from step ARCH_START.
CI_NODES, CI_BATCH, CI_STEPS, CI_ARCH_START = 2, 32, 12, 2
# Compile flags: without LLVM's expensive passes (bit-identical numbers here,
# float32 and bfloat16 alike) and at LLVM -O1, which cuts the two compiles
# (test 120 s -> ~95 s user CPU) while the 12 steps stay fast (-O0: 144 s, the
# steps far slower). Figures at -O1 (measured): bfloat16 vs float32 TV 3.9e-4
# .. 8.3e-4, between float32 seeds 1.6e-3 .. 2.4e-3, as in the ranges above.
FAST_COMPILE = compile_options.RUN_SOME_LEAN


def fidelity_config(dtype: str, nodes: int = 4):
  """The digits search, small: C 4, 3 cells (cell 0 normal, cells 1 and 2
  reduction, so both cell types get arch gradients), `nodes` nodes per cell,
  3 seeds."""
  config = digits_search.get_config()
  config.model.dtype = dtype
  config.model.init_channels = 4
  config.model.layers = 3
  config.model.steps = nodes
  config.model.multiplier = nodes
  config.search.num_seeds = NUM_SEEDS
  return config


def _tv_bound(config, arch_steps: int) -> float:
  """0.25 lr T: the bound on the max-over-edges TV (module docstring)."""
  return 0.25 * config.search.arch_learning_rate * arch_steps


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def max_tv(a, b) -> float:
  """The max over edges of the TV distance between softmax(a) and softmax(b)."""
  p, q = _softmax(np.asarray(a, np.float64)), _softmax(np.asarray(b, np.float64))
  return float(0.5 * np.abs(p - q).sum(-1).max())


def _edges(arch, nodes):
  return {kind: set(map(tuple, e)) for kind, e in
          space.genotype_edges(genotypes.derive_genotype(arch, steps=nodes)).items()}


def edge_agreement(edges_a, edges_b) -> dict:
  """Per cell type: kept edges of the two genotypes with the same (node, input)
  and with the same (node, input, op)."""
  return {kind: {'inputs': len({e[:2] for e in edges_a[kind]} & {e[:2] for e in edges_b[kind]}),
                 'ops': len(edges_a[kind] & edges_b[kind])} for kind in KINDS}


def compare(arch_of, genotype_edges_of, nodes: int) -> dict:
  """Figures of a float32 / bfloat16 pair of N-seed runs: `arch_of[dtype][i]`
  seed i's arch values, `genotype_edges_of[dtype][i]` its kept edges."""
  kept = 2 * nodes
  per_seed = []
  for i in range(NUM_SEEDS):
    a, b = arch_of['float32'][i], arch_of['bfloat16'][i]
    per_seed.append({
        'tv': {kind: max_tv(a[f'alphas_{kind}'], b[f'alphas_{kind}']) for kind in KINDS},
        'agreement': edge_agreement(genotype_edges_of['float32'][i],
                                    genotype_edges_of['bfloat16'][i])})
  pairs = []
  for i, j in itertools.combinations(range(NUM_SEEDS), 2):
    a, b = arch_of['float32'][i], arch_of['float32'][j]
    pairs.append({
        'seeds': (i, j),
        'tv': {kind: max_tv(a[f'alphas_{kind}'], b[f'alphas_{kind}']) for kind in KINDS},
        'agreement': edge_agreement(genotype_edges_of['float32'][i],
                                    genotype_edges_of['float32'][j])})
  return {'kept_edges_per_cell': kept, 'per_seed': per_seed, 'float32_pairs': pairs}


def _ops_total(row) -> int:
  return sum(row['agreement'][kind]['ops'] for kind in KINDS)


def check(figures: dict, bound: float):
  """The fidelity assertions (module docstring), after printing the figures."""
  kept = figures['kept_edges_per_cell']
  for i, row in enumerate(figures['per_seed']):
    print(f'seed {i}: bfloat16 vs float32 max-edge TV ' +
          ', '.join(f'{k} {row["tv"][k]:.2e}' for k in KINDS) + '; genotype agreement ' +
          ', '.join(f'{k} {row["agreement"][k]["inputs"]}/{kept} inputs '
                    f'{row["agreement"][k]["ops"]}/{kept} ops' for k in KINDS))
  for row in figures['float32_pairs']:
    print(f'float32 seeds {row["seeds"]}: max-edge TV ' +
          ', '.join(f'{k} {row["tv"][k]:.2e}' for k in KINDS) + '; genotype agreement ' +
          ', '.join(f'{k} {row["agreement"][k]["ops"]}/{kept} ops' for k in KINDS))
  print(f'bound {bound:.2e}')
  for kind in KINDS:
    spread = min(row['tv'][kind] for row in figures['float32_pairs'])
    for i, row in enumerate(figures['per_seed']):
      assert row['tv'][kind] < bound, (i, kind, row['tv'][kind], bound)
      assert row['tv'][kind] < spread, (i, kind, row['tv'][kind], spread)
  best_pair = max(_ops_total(row) for row in figures['float32_pairs'])
  for i, row in enumerate(figures['per_seed']):
    assert _ops_total(row) >= best_pair, (i, row['agreement'], best_pair)
  assert sum(map(_ops_total, figures['per_seed'])) > NUM_SEEDS * best_pair


# --------------------------------------------------------------------------
# CI variant: the vmapped search step, 12 steps.


def _step_runs():
  """Both dtypes' 3-seed runs of CI_STEPS search steps (seeds.vmap_step over
  the search's bilevel step, as search.search runs it), from one initial seeds
  state (params, arch and statistics are float32 under either dtype), the same
  batches and the same per-seed step keys."""
  configs = {dtype: fidelity_config(dtype, CI_NODES) for dtype in DTYPES}
  for config in configs.values():
    config.search.batch_size = CI_BATCH
  base = configs['float32']
  train_set, arch_set = data.search_splits(base.data)
  steps_per_epoch = CI_STEPS  # One epoch: the learning rate stays near its base.
  weight_tx, arch_tx = optim.weight_optimizer(base, steps_per_epoch), optim.arch_optimizer(base)
  sample = data.normalize(train_set.images[:1], base.data.mean, base.data.std)
  init_rngs, step_keys, _ = seeds.seed_keys(base)
  model = supernet.build_supernet(base)
  state0 = seeds.create_states(
      lambda rng: loop.create_search_state(model, base, rng, sample, weight_tx, arch_tx),
      init_rngs)
  train_iter = data.EpochIterator(train_set, CI_BATCH, seed=0)
  arch_iter = data.EpochIterator(arch_set, CI_BATCH, seed=1)
  batches = [(next(train_iter), next(arch_iter)) for _ in range(CI_STEPS)]
  arch_of, times = {}, {}
  for dtype, config in configs.items():
    start = time.time()
    step = jax.jit(seeds.vmap_step(loop.make_bilevel_step(
        supernet.build_supernet(config), config, steps_per_epoch, weight_tx, arch_tx,
        arch_start_step=CI_ARCH_START)), compiler_options=FAST_COMPILE)
    state = state0
    compiled = step.lower(state, *batches[0], seeds.fold_in(step_keys, 0)).compile()
    compiled_at = time.time()
    for t, (train, arch) in enumerate(batches):
      state, _ = compiled(state, train, arch, seeds.fold_in(step_keys, t))
    arch = jax.device_get(state.arch)
    times[dtype] = {'compile_s': compiled_at - start, 'steps_s': time.time() - compiled_at}
    arch_of[dtype] = [{k: np.asarray(v[i]) for k, v in arch.items()} for i in range(NUM_SEEDS)]
  print('wall times', times)
  return base, arch_of


def test_bfloat16_steps_stay_within_the_bound_and_agree_on_genotypes():
  config, arch_of = _step_runs()
  edges = {dtype: [_edges(a, CI_NODES) for a in arch_of[dtype]] for dtype in DTYPES}
  check(compare(arch_of, edges, CI_NODES), _tv_bound(config, CI_STEPS - CI_ARCH_START))


# --------------------------------------------------------------------------
# The search itself (slow): search.search, 3 epochs, 4-node cells.

SEARCH_EPOCHS = 3


@pytest.mark.slow  # ~4 min on a contended 2-core CPU (two compiles of step and eval).
def test_bfloat16_search_stays_within_the_bound_and_agrees_on_genotypes(tmp_path):
  arch_of, edges, times = {}, {}, {}
  for dtype in DTYPES:
    config = fidelity_config(dtype)
    config.search.epochs = SEARCH_EPOCHS
    config.search.arch_start_epoch = 1
    config.checkpoint.every_steps = 0
    config.monitor.tensorboard = False
    config.monitor.pictures = False
    config.monitor.progress = 'lines'
    workdir = str(tmp_path / dtype)
    start = time.time()
    loop.search(config, workdir)
    times[dtype] = time.time() - start
    arch_of[dtype], edges[dtype] = [], []
    for i in range(NUM_SEEDS):
      seed_dir = seeds.seed_dir(workdir, i)
      with np.load(os.path.join(seed_dir, 'arch.npz')) as f:
        arch_of[dtype].append({k: f[k] for k in f.files})
      genotype = genotypes.load_genotype(os.path.join(seed_dir, 'genotype.json'))
      edges[dtype].append({k: set(map(tuple, e))
                           for k, e in space.genotype_edges(genotype).items()})
  print('wall times (s)', times)
  # An epoch is a pass over the weight subset in whole batches (750 // 64 = 11 steps).
  steps_per_epoch = len(data.search_splits(config.data)[0].images) // config.search.batch_size
  arch_steps = (SEARCH_EPOCHS - 1) * steps_per_epoch
  check(compare(arch_of, edges, config.model.steps), _tv_bound(config, arch_steps))
