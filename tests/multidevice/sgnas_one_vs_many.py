"""SGNAS steps on 1 device vs N devices, same global batch (own process: the forced
host device count must precede jax's start).

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/multidevice/sgnas_one_vs_many.py

Prints one JSON line: max abs differences of the supernet weights and BatchNorm
statistics after 2 supernet steps (4 paths each), and of the generator weights
after 2 generator steps on the trained supernet.
"""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax

from configs import sgnas_digits_search
from pcdarts_jax.data import datasets as data
from pcdarts_jax.run import parallel
from pcdarts_jax.sgnas import flops as flops_lib
from pcdarts_jax.sgnas import generator as generator_lib
from pcdarts_jax.sgnas import layout as layout_lib
from pcdarts_jax.sgnas import sampling
from pcdarts_jax.sgnas import search
from pcdarts_jax.sgnas import supernet as supernet_lib

STEPS = 2


def smooth_relu6(x):
  """ReLU6 with rounded corners (softplus, sharpness 8: within 0.09 of ReLU6).

  ReLU6's gradient jumps where an activation crosses 0 or 6, and 1-device and
  N-device steps round differently (1e-7): measured on this config, one
  activation 2e-7 from 0 flipped side under a 1e-7 input perturbation and moved
  first_dw's gradient by 2.8e-3, so with ReLU6 the comparison would test which
  side of a kink the rounding lands on. With a smooth activation it tests what
  it is for: gradient averaging, global-batch BatchNorm statistics and
  per-example randomness across devices."""
  sharp = 8.0
  return (jax.nn.softplus(sharp * x) - jax.nn.softplus(sharp * (x - 6.0))) / sharp


# Read at trace time by every SGNAS module (jax.nn.relu6(...)): set before any trace.
jax.nn.relu6 = smooth_relu6


def small_layout(config) -> layout_lib.Layout:
  """The config's digits layout cut to its first 3 layers (8 -> 8 twice, with
  the residual, then 8 -> 12 at stride 2): every kind of layer, half the
  layers to compile (this test: 155 s -> 83 s of CPU). What is compared (gradient averaging,
  global-batch BatchNorm statistics, per-example randomness across devices) does
  not depend on the depth. Its MFLOPs range (0.059..0.497) still holds the
  config's targets and prior keys."""
  lay = layout_lib.layout_of_config(config)
  return dataclasses.replace(lay, layers=lay.layers[:3])


def run(config, devices):
  train_set, held_out = data.search_splits(config.data)
  lay = small_layout(config)
  table = flops_lib.lookup_table(lay)
  model = supernet_lib.Supernet(lay, depthwise_impl='dense')
  step_model = supernet_lib.Supernet(lay, parallel.AXIS, 'dense')
  sample = data.normalize(train_set.images[:1], config.data.mean, config.data.std)
  # Jitted, as search.py does: eager init dispatches every op alone (38 s here).
  variables = jax.jit(lambda rng: model.init(rng, sample, supernet_lib.init_arch(lay)))(
      jax.random.PRNGKey(0))
  tx = search.supernet_optimizer(config, 100)
  state = search.SupernetState(jnp.zeros((), jnp.int32), variables['params'],
                               variables['batch_stats'], tx.init(variables['params']))
  step = parallel.pmap_step(search.make_supernet_step(step_model, config, tx, parallel.AXIS),
                            in_axes=(0, 0, None, None), devices=devices)
  state = parallel.replicate(state, devices)
  b = config.search.batch_size
  batch = lambda s, i: parallel.shard({'image': s.images[i * b:(i + 1) * b],
                                       'label': s.labels[i * b:(i + 1) * b]}, len(devices))
  for i in range(STEPS):
    paths = sampling.sample_paths(0, i, config.search.num_paths, lay.num_layers)
    state, _ = step(state, batch(train_set, i), paths, jax.random.PRNGKey(i))
  host = jax.device_get(parallel.unreplicate(state))

  grid_values = search.targets(config)
  keys = flops_lib.pool_keys(config.generator.flops_low, config.generator.flops_high, 2)
  prior, _ = flops_lib.sample_prior_pool(lay, table, keys, config.generator.pool_bias, 0)
  grid = search.Targets(grid_values.astype(np.float32), layout_lib.one_hot(prior),
                        float(grid_values[0]), float(grid_values[-1]), keys)
  gen = generator_lib.Generator(8, 1)
  gen_params = gen.init(jax.random.PRNGKey(1), grid.prior[:1], jnp.zeros((1,)))
  gtx = search.generator_optimizer(config)
  gstate = search.GeneratorState(jnp.zeros((), jnp.int32), gen_params, gtx.init(gen_params))
  gstep = parallel.pmap_step(
      search.make_generator_step(step_model, gen, config, table, grid, gtx, parallel.AXIS),
      in_axes=(0, 0, 0, None, None), devices=devices)
  frozen = parallel.replicate({'params': host.params, 'batch_stats': host.batch_stats},
                              devices)
  gstate = parallel.replicate(gstate, devices)
  # The raw generator gradient (SGD, lr 1: the update is -gradient). Adam's
  # updates are ~lr·sign(g) for gradients at rounding level, so they are compared
  # with a looser bound.
  sgd = optax.sgd(1.0)
  grad_step = parallel.pmap_step(
      search.make_generator_step(step_model, gen, config, table, grid, sgd, parallel.AXIS),
      in_axes=(0, 0, 0, None, None), devices=devices)
  start = search.GeneratorState(jnp.zeros((), jnp.int32), gen_params, sgd.init(gen_params))
  after, _ = grad_step(parallel.replicate(start, devices), frozen, batch(held_out, 0),
                       jax.random.PRNGKey(10), jnp.float32(5.0))
  gradient = jax.tree.map(lambda a, b: a - b, gen_params,
                          jax.device_get(parallel.unreplicate(after)).params)
  for i in range(STEPS):
    gstate, sums = gstep(gstate, frozen, batch(held_out, i), jax.random.PRNGKey(10 + i),
                         jnp.float32(5.0))
  sums = {k: float(v) for k, v in jax.device_get(parallel.unreplicate(sums)).items()}
  return host, jax.device_get(parallel.unreplicate(gstate)).params, gradient, sums


def max_diff(a, b) -> float:
  return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def main():
  config = sgnas_digits_search.get_config()
  config.search.batch_size = 16
  devices = jax.local_devices()
  one, gen_one, grad_one, sums_one = run(config, devices[:1])
  many, gen_many, grad_many, sums_many = run(config, devices)
  print(json.dumps({
      'devices': len(devices),
      'params': max_diff(one.params, many.params),
      'batch_stats': max_diff(one.batch_stats, many.batch_stats),
      'generator': max_diff(gen_one, gen_many),
      'generator_gradient': max_diff(grad_one, grad_many),
      'generator_gradient_scale': max_diff(grad_one, jax.tree.map(np.zeros_like, grad_one)),
      'generator_moved': max_diff(gen_one, jax.tree.map(np.zeros_like, gen_one)),
      'sums': max(abs(sums_one[k] - sums_many[k]) for k in sums_one),
      'steps': sums_many['steps'],
  }))


if __name__ == '__main__':
  main()
