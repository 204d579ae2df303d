"""Train steps on 1 device vs N devices, same global batches (run in its own
process: XLA_FLAGS=--xla_force_host_platform_device_count=N precedes jax's start).

  python tests/multidevice/train_one_vs_many.py STEPS

Prints one JSON line: the max abs differences of the weights, BatchNorm
statistics and metric sums after STEPS steps with crop, cutout and drop-path
on, and those of a test-split evaluation.
"""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from configs import digits_train
from pcdarts_jax.data import datasets as data
from pcdarts_jax.spaces.darts import network
from pcdarts_jax.run import parallel
from pcdarts_jax.train import train as trainer


def tiny_config():
  config = digits_train.get_config()
  config.model.init_channels, config.model.layers = 4, 2
  config.model.drop_path_prob = 0.5
  config.train.batch_size = 16
  config.train.cutout_length = 4
  return config


def run(config, devices, steps: int):
  train_set = data.load_split(config.data, 'train')
  model = network.build_network(config, parallel.AXIS)
  state = trainer.create_train_state(model, config, jax.random.PRNGKey(0), 100)
  step = parallel.pmap_step(
      trainer.make_train_step(model, config, trainer.optimizer(config, 100), parallel.AXIS),
      in_axes=(0, 0, None, None), devices=devices)
  evaluate = parallel.pmap_step(trainer.make_eval_step(model, config, parallel.AXIS),
                                in_axes=(0, 0), donate_state=False, devices=devices)
  state = parallel.replicate(state, devices)
  b = config.train.batch_size
  sums = []
  for i in range(steps):
    batch = parallel.shard({'image': train_set.images[i * b:(i + 1) * b],
                            'label': train_set.labels[i * b:(i + 1) * b]}, len(devices))
    state, m = step(state, batch, jax.random.PRNGKey(i), jnp.float32(0.5))
    sums.append(jax.device_get(parallel.unreplicate(m)))
  test = data.load_split(config.data, 'test')
  batch = next(data.eval_batches(test, 32))
  test_sums = jax.device_get(parallel.unreplicate(
      evaluate(state, parallel.shard(batch, len(devices)))))
  return jax.device_get(parallel.unreplicate(state)), sums, test_sums


def max_diff(a, b) -> float:
  return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def main():
  steps = int(sys.argv[1])
  config = tiny_config()
  devices = jax.local_devices()
  one = run(config, devices[:1], steps)
  many = run(config, devices, steps)
  moved = max_diff(one[0].params, trainer.create_train_state(
      network.build_network(config), config, jax.random.PRNGKey(0), 100).params)
  print(json.dumps({
      'devices': len(devices), 'moved': moved,
      'params': max_diff(one[0].params, many[0].params),
      'batch_stats': max_diff(one[0].batch_stats, many[0].batch_stats),
      'metrics': max_diff(one[1], many[1]), 'test': max_diff(one[2], many[2])}))


if __name__ == '__main__':
  main()
