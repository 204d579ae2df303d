"""Data parallelism: one step body, run under `jax.pmap` over the local devices.

The state is replicated (a leading device axis of the local device count),
batches are sharded on their leading axis, and inside the step:

- gradients come from `value_and_grad` / `grad` here, which average them over
  the device axis (`pmean`): every gradient (first or second order, finite
  differences included) is that of the global-batch loss.
- BatchNorm modules carry the same axis name, so their batch statistics are
  those of the global batch.
- metric sums are `psum`-reduced on device.

So N devices with B/N images each compute what one device computes with B.
With `axis_name=None` every helper is the identity (jit-only code paths, such
as the benchmark's single-device timings).

Multi-host: `initialize_distributed` wraps `jax.distributed.initialize`; each
process feeds its own slice of the global batch (`host_slice`) to its local
devices, and pmap spans every device of every process.
"""

from typing import Any, Callable, Iterator, Optional

import jax
import jax.numpy as jnp
import numpy as np

AXIS = 'devices'  # The named device axis of every pmapped step.


def device_count() -> int:
  """Devices of all processes (the data-parallel width)."""
  return jax.device_count()


def local_device_count() -> int:
  return jax.local_device_count()


def is_main_process() -> bool:
  """Only process 0 writes files (checkpoints, logs, pictures)."""
  return jax.process_index() == 0


def value_and_grad(fun: Callable, axis_name: Optional[str], argnums=0, has_aux=False):
  """`jax.value_and_grad` whose gradients are averaged over `axis_name`: the
  gradient of the global-batch loss when each device holds a slice of the batch.
  The pmean is explicit (not hidden in a custom_vjp) so that differentiating
  through it again, as the exact second-order architect does, stays correct."""
  inner = jax.value_and_grad(fun, argnums=argnums, has_aux=has_aux)

  def wrapped(*args, **kwargs):
    value, grads = inner(*args, **kwargs)
    return value, pmean(grads, axis_name)
  return wrapped


def grad(fun: Callable, axis_name: Optional[str], argnums=0, has_aux=False):
  """`jax.grad` averaged over `axis_name` (see `value_and_grad`)."""
  inner = value_and_grad(fun, axis_name, argnums=argnums, has_aux=has_aux)

  def wrapped(*args, **kwargs):
    value, grads = inner(*args, **kwargs)
    return (grads, value[1]) if has_aux else grads
  return wrapped


def psum(tree, axis_name: Optional[str]):
  return tree if axis_name is None else jax.lax.psum(tree, axis_name)


def pmean(tree, axis_name: Optional[str]):
  return tree if axis_name is None else jax.lax.pmean(tree, axis_name)


def global_index(local_size: int, axis_name: Optional[str]) -> jax.Array:
  """Positions of this device's examples within the global batch (0..B-1), so
  that per-example randomness does not depend on how the batch was split."""
  offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * local_size
  return offset + jnp.arange(local_size)


def _local_sharding(devices=None) -> jax.sharding.NamedSharding:
  """Leading axis split over `devices` (default: this process's, in pmap's order)."""
  mesh = jax.sharding.Mesh(np.array(devices or jax.local_devices()), (AXIS,))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(AXIS))


def replicate(tree, devices=None) -> Any:
  """Host pytree -> one copy per device (leading axis); default: the local devices."""
  devices = devices or jax.local_devices()
  n, sharding = len(devices), _local_sharding(devices)
  return jax.tree.map(
      lambda x: jax.device_put(np.broadcast_to(np.asarray(x), (n,) + np.shape(x)), sharding),
      tree)


def unreplicate(tree) -> Any:
  """This process's first copy (all copies are equal after a synced step). With
  several processes a pmapped output spans devices this process cannot read, so
  the copy comes from a local shard."""
  def first(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      local = x.addressable_data(0)
      return local[0] if local.ndim == x.ndim else local
    return x[0]
  return jax.tree.map(first, tree)


def check_divisible(batch_size: int, field: str, devices: Optional[int] = None):
  """Raises ValueError naming `field` when the global batch does not split evenly."""
  devices = device_count() if devices is None else devices
  if batch_size % devices:
    allowed = f'multiples of {devices}'
    raise ValueError(f'{field}={batch_size} is not divisible by the {devices} devices '
                     f'(allowed: {allowed}).')


def host_slice(batch, process_index: Optional[int] = None,
               process_count: Optional[int] = None):
  """This process's contiguous slice of a global host batch (leading axis)."""
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  if count == 1:
    return batch

  def cut(x):
    per = x.shape[0] // count
    return x[index * per:(index + 1) * per]
  return jax.tree.map(cut, batch)


def shard(batch, devices: Optional[int] = None):
  """Host batch (B, ...) -> (devices, B / devices, ...) for pmap's leading axis."""
  devices = local_device_count() if devices is None else devices

  def split(x):
    x = np.asarray(x)
    if x.shape[0] % devices:
      raise ValueError(f'a batch of {x.shape[0]} does not split over {devices} devices.')
    return x.reshape((devices, x.shape[0] // devices) + x.shape[1:])
  return jax.tree.map(split, batch)


def put_sharded(batch) -> Any:
  """Host batch (B, ...) -> device arrays (local devices, B / devices, ...)."""
  return jax.device_put(shard(batch, local_device_count()), _local_sharding())


def prefetch_to_device(iterator: Iterator, size: int = 2) -> Iterator:
  """Shards host batches and copies them to the local devices `size` steps
  ahead, so the transfer overlaps the running step."""
  queue = []
  for batch in iterator:
    queue.append(put_sharded(batch))
    if len(queue) > size:
      yield queue.pop(0)
  while queue:
    yield queue.pop(0)


def pmap_step(step_fn: Callable, in_axes, donate_state: bool = True, devices=None):
  """`step_fn` pmapped over AXIS. `in_axes` as for pmap: 0 for the replicated
  state and the sharded batches, None for an argument every device gets whole
  (the step rng: the same key everywhere, per-example randomness comes from
  `global_index`). Argument 0, the state, is donated. `devices`: a subset of
  the local devices (tests); default all."""
  return jax.pmap(step_fn, axis_name=AXIS, in_axes=in_axes, devices=devices,
                  donate_argnums=(0,) if donate_state else ())


def initialize_distributed(coordinator_address: Optional[str], num_processes: Optional[int],
                           process_id: Optional[int], local_device_ids=None):
  """`jax.distributed.initialize` for a multi-host run; no-op when
  `coordinator_address` is empty (single host)."""
  if not coordinator_address:
    return
  if num_processes is None or process_id is None:
    raise ValueError('--coordinator_address needs --num_processes and --process_id.')
  if not 0 <= process_id < num_processes:
    raise ValueError(f'--process_id={process_id} must be in [0, {num_processes}).')
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id,
                             local_device_ids=local_device_ids)
