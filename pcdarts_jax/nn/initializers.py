"""PyTorch-default parameter initialisation, and a fast way to initialise big supernets.

The reference networks use PyTorch's default init: conv and linear weights
U(-b, b) with b = 1/sqrt(fan_in) (kaiming_uniform with a=sqrt(5)), linear bias the
same, BatchNorm scale 1 and shift 0. The modules use these initialisers.

`init_variables` draws every parameter from those same distributions in a single
batched draw. Flax's `model.init` derives one key per parameter through a chain of
threefry fold-ins; for a supernet with thousands of parameters that program takes
minutes to compile on CPU, while `init_variables` takes seconds.
"""

import math
from typing import Any, Dict, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np

kernel_init = jax.nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')


def bias_init_for(fan_in: int):
  bound = 1.0 / math.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(
      key, shape, dtype, -bound, bound)


# Scopes whose parameters stack one module's parameters per edge on a leading
# axis (the search cell's edge groups, cell_parts.edge_groups): not part of the fan-in.
STACKED_SCOPES = ('input_edges', 'node_edges')


def _fan_in(path: Tuple[str, ...], shape, kernel_shapes) -> int:
  """Fan-in of a kernel (all axes but the last) or of the kernel beside a bias;
  the edge axis of a stacked kernel does not count."""
  if path[-1] != 'kernel':
    path, shape = path[:-1] + ('kernel',), kernel_shapes[path[:-1]]
  if any(scope in STACKED_SCOPES for scope in path):
    shape = shape[1:]
  return int(np.prod(shape[:-1]))


def init_variables(model, rng: jax.Array, sample_input: jax.Array,
                   arch_scale: float = 1e-3, **kwargs) -> Dict[str, Any]:
  """Variables with the structure of `model.init(rng, sample_input, **kwargs)`.

  params: kernels and Dense biases U(+-1/sqrt(fan_in)), BN scale 1 and bias 0;
  batch_stats: mean 0, var 1; arch: arch_scale * N(0, 1).
  """
  kwargs.setdefault('train', False)
  shapes = jax.eval_shape(lambda r, x: model.init(r, x, **kwargs), rng, sample_input)
  shapes = flax.core.unfreeze(shapes)
  param_rng, arch_rng = jax.random.split(rng)
  out = {}
  flat = flax.traverse_util.flatten_dict(shapes.get('params', {}))
  kernel_shapes = {p[:-1]: s.shape for p, s in flat.items() if p[-1] == 'kernel'}
  random_leaves = [p for p in flat if p[-1] == 'kernel' or
                   (p[-1] == 'bias' and p[:-1] in kernel_shapes)]
  total = sum(int(np.prod(flat[p].shape)) for p in random_leaves)
  draws = np.asarray(jax.random.uniform(param_rng, (max(total, 1),), jnp.float32, -1.0, 1.0))
  params, offset = {}, 0
  for path, leaf in flat.items():
    if path in random_leaves:
      size = int(np.prod(leaf.shape))
      bound = 1.0 / math.sqrt(_fan_in(path, leaf.shape, kernel_shapes))
      value = draws[offset:offset + size].reshape(leaf.shape) * bound
      offset += size
    elif path[-1] == 'scale':
      value = np.ones(leaf.shape, leaf.dtype)
    else:
      value = np.zeros(leaf.shape, leaf.dtype)
    params[path] = jnp.asarray(value, leaf.dtype)
  out['params'] = flax.traverse_util.unflatten_dict(params)
  if 'batch_stats' in shapes:
    out['batch_stats'] = jax.tree_util.tree_map_with_path(
        lambda p, s: jnp.ones(s.shape, s.dtype) if p[-1].key == 'var'
        else jnp.zeros(s.shape, s.dtype), shapes['batch_stats'])
  if 'arch' in shapes:
    leaves, treedef = jax.tree.flatten(shapes['arch'])
    keys = jax.random.split(arch_rng, len(leaves))
    out['arch'] = jax.tree.unflatten(treedef, [
        arch_scale * jax.random.normal(k, s.shape, s.dtype) for k, s in zip(keys, leaves)])
  for name in shapes:
    if name not in out:
      raise ValueError(f'init_variables does not know how to initialise collection {name!r}.')
  return out
