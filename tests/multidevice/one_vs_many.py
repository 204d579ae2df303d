"""1 device vs N devices on the same global batch (run in its own process:
XLA_FLAGS=--xla_force_host_platform_device_count=N must precede jax's start).

  python tests/multidevice/one_vs_many.py ARCHITECT STEPS

Prints one JSON line: the max abs differences of the arch values, weights and
BatchNorm statistics after STEPS bilevel steps, and both derived genotypes.
"""

import json
import sys

import jax
import numpy as np

from configs import digits_search
from pcdarts_jax import data
from pcdarts_jax import genotypes
from pcdarts_jax import loop
from pcdarts_jax import optim
from pcdarts_jax import parallel
from pcdarts_jax import supernet


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
  train_set, arch_set = data.search_splits(config.data)
  model = supernet.build_supernet(config)
  step_model = supernet.build_supernet(config, axis_name=parallel.AXIS)
  weight_tx = optim.weight_optimizer(config, 100)
  arch_tx = optim.arch_optimizer(config)
  sample = data.normalize(train_set.images[:1], config.data.mean, config.data.std)
  state = loop.create_search_state(model, config, jax.random.PRNGKey(0), sample,
                                   weight_tx, arch_tx)
  step = parallel.pmap_step(
      loop.make_bilevel_step(step_model, config, 100, weight_tx, arch_tx, parallel.AXIS),
      in_axes=(0, 0, 0, None), devices=devices)
  state = parallel.replicate(state, devices)
  b = config.search.batch_size
  metrics = []
  for i in range(steps):
    batch = lambda s: parallel.shard(
        {'image': s.images[i * b:(i + 1) * b], 'label': s.labels[i * b:(i + 1) * b]},
        len(devices))
    state, m = step(state, batch(train_set), batch(arch_set), jax.random.PRNGKey(i))
    metrics.append({k: float(v[0]) for k, v in m.items()})
  state = jax.device_get(parallel.unreplicate(state))
  genotype = genotypes.derive_genotype(loop.arch_numpy(state), model.primitives, model.steps)
  return state, metrics, genotype


def max_diff(a, b) -> float:
  return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def main():
  architect, steps = sys.argv[1], int(sys.argv[2])
  config = tiny_config(architect)
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
