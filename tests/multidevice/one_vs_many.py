"""1 device vs N devices on the same global batch (run in its own process:
XLA_FLAGS=--xla_force_host_platform_device_count=N must precede jax's start).

  python tests/multidevice/one_vs_many.py ARCHITECT STEPS
  python tests/multidevice/one_vs_many.py ARCHITECT STEPS --save=OUT.npz \
      [--coordinator_address=localhost:PORT --num_processes=2 --process_id=I]

The first form prints one JSON line: the max abs differences of the arch values,
weights and BatchNorm statistics after STEPS bilevel steps, and both derived
genotypes. The second runs only the all-devices (all-processes) path and saves
the final arch and weights (process 0), for the multi-host test.
"""

import json
import sys

import jax
import numpy as np

from configs import digits_search
from pcdarts_jax.data import datasets as data
from pcdarts_jax.search import architect
from pcdarts_jax.spaces.darts import genotypes
from pcdarts_jax.search import search as loop
from pcdarts_jax.search import optim
from pcdarts_jax.run import parallel
from pcdarts_jax.spaces.darts import supernet


def tiny_config(architect: str):
  config = digits_search.get_config()
  config.model.init_channels = 4
  config.model.layers = 2
  config.model.partial_channels = 2
  config.search.batch_size = 16
  config.search.arch_start_epoch = 0  # Arch steps on from the first step.
  config.search.architect = architect
  return config


def run(config, devices, steps: int):
  """STEPS bilevel steps over `devices` (None: every device of every process)."""
  train_set, arch_set = data.search_splits(config.data)
  impl = architect.depthwise_impl(config)  # As the search builds them.
  model = supernet.build_supernet(config, depthwise_impl=impl)
  step_model = supernet.build_supernet(config, axis_name=parallel.AXIS, depthwise_impl=impl)
  weight_tx = optim.weight_optimizer(config, 100)
  arch_tx = optim.arch_optimizer(config)
  sample = data.normalize(train_set.images[:1], config.data.mean, config.data.std)
  state = loop.create_search_state(model, config, jax.random.PRNGKey(0), sample,
                                   weight_tx, arch_tx)
  step = parallel.pmap_step(
      loop.make_bilevel_step(step_model, config, 100, weight_tx, arch_tx, parallel.AXIS),
      in_axes=(0, 0, 0, None), devices=devices)
  local = devices or jax.local_devices()
  state = parallel.replicate(state, local)
  b = config.search.batch_size
  metrics = []
  for i in range(steps):
    batch = lambda s: parallel.shard(parallel.host_slice(
        {'image': s.images[i * b:(i + 1) * b], 'label': s.labels[i * b:(i + 1) * b]}),
        len(local))
    state, m = step(state, batch(train_set), batch(arch_set), jax.random.PRNGKey(i))
    metrics.append({k: float(v) for k, v in jax.device_get(parallel.unreplicate(m)).items()})
  state = jax.device_get(parallel.unreplicate(state))
  genotype = genotypes.derive_genotype(loop.arch_numpy(state), model.primitives, model.steps)
  return state, metrics, genotype


def max_diff(a, b) -> float:
  return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def main():
  architect, steps = sys.argv[1], int(sys.argv[2])
  options = dict(arg[2:].split('=', 1) for arg in sys.argv[3:])
  config = tiny_config(architect)
  if 'save' in options:
    parallel.initialize_distributed(
        options.get('coordinator_address'), int(options.get('num_processes', 1)),
        int(options.get('process_id', 0)))
    state, metrics, genotype = run(config, None, steps)
    if parallel.is_main_process():
      np.savez(options['save'], **{f'arch/{k}': v for k, v in state.arch.items()},
               **{'params/' + '/'.join(str(p.key) for p in path): leaf
                  for path, leaf in jax.tree_util.tree_leaves_with_path(state.params)},
               loss=np.array([m['train_loss_sum'] for m in metrics]),
               devices=jax.device_count(), processes=jax.process_count())
    return
  devices = jax.local_devices()
  one, m1, g1 = run(config, devices[:1], steps)
  many, mn, gn = run(config, devices, steps)
  print(json.dumps({
      'devices': len(devices),
      'arch': max_diff(one.arch, many.arch),
      'params': max_diff(one.params, many.params),
      'batch_stats': max_diff(one.batch_stats, many.batch_stats),
      'arch_moved': max_diff(one.arch, jax.tree.map(np.zeros_like, one.arch)),
      'loss': max(abs(a[k] - b[k]) for a, b in zip(m1, mn) for k in a),
      'genotype_one': genotypes.to_dict(g1), 'genotype_many': genotypes.to_dict(gn),
  }))


if __name__ == '__main__':
  main()
