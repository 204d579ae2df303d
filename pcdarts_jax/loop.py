"""The one search loop: state, the jitted bilevel step, evaluation, and `search`.

Steps are pure functions of (state, batches, rng). Side effects (logs, files)
happen only here in the loop.
"""

import json
import os
import time
from typing import Any, Callable, Dict, Tuple

from absl import logging
import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from pcdarts_jax import architect
from pcdarts_jax import config_validation
from pcdarts_jax import data
from pcdarts_jax import genotypes
from pcdarts_jax import initializers
from pcdarts_jax import optim
from pcdarts_jax import supernet


@flax.struct.dataclass
class SearchState:
  step: jax.Array
  params: Any
  batch_stats: Any
  arch: Any
  weight_opt_state: Any
  arch_opt_state: Any


def create_search_state(model, config, rng, sample_images, weight_tx, arch_tx) -> SearchState:
  variables = initializers.init_variables(model, rng, sample_images)
  return SearchState(
      step=jnp.zeros((), jnp.int32),
      params=variables['params'],
      batch_stats=variables['batch_stats'],
      arch=variables['arch'],
      weight_opt_state=weight_tx.init(variables['params']),
      arch_opt_state=arch_tx.init(variables['arch']))


def _metrics(loss, logits, labels) -> Dict[str, jax.Array]:
  """Sums over the batch, so that metrics accumulate exactly across steps."""
  n = labels.shape[0]
  correct = jnp.sum(jnp.argmax(logits, -1) == labels)
  return {'loss_sum': loss * n, 'correct': correct.astype(jnp.float32),
          'count': jnp.asarray(n, jnp.float32)}


def make_loss_fn(model):
  def loss_fn(params, arch, batch_stats, images, labels):
    logits, new_state = model.apply(
        {'params': params, 'arch': arch, 'batch_stats': batch_stats},
        images, train=True, mutable=['batch_stats'])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, (new_state['batch_stats'], logits)
  return loss_fn


def make_bilevel_step(model, config, steps_per_epoch: int, weight_tx, arch_tx) -> Callable:
  """One search step: an arch step on the arch batch (from `arch_start_epoch` on),
  then a weight step on the train batch, both in train mode.

  The warm-up switch is a traced comparison on `state.step`, so the step compiles
  once; `lax.cond` skips the arch pass's compute during warm-up.
  """
  d, s = config.data, config.search
  loss_fn = make_loss_fn(model)
  arch_grad_fn = architect.ARCHITECTS[s.architect]
  arch_start_step = s.arch_start_epoch * steps_per_epoch
  augment = lambda rng, images: data.augment(rng, images, d.mean, d.std,
                                             d.crop_padding, d.random_flip)

  def step(state: SearchState, train_batch, arch_batch, rng) -> Tuple[SearchState, Dict]:
    train_rng, arch_rng = jax.random.split(rng)

    def arch_update(state):
      images = augment(arch_rng, arch_batch['image'])
      grads, batch_stats, loss, logits = arch_grad_fn(loss_fn, state, images,
                                                      arch_batch['label'])
      updates, arch_opt_state = arch_tx.update(grads, state.arch_opt_state, state.arch)
      state = state.replace(arch=optax.apply_updates(state.arch, updates),
                            arch_opt_state=arch_opt_state, batch_stats=batch_stats)
      return state, _metrics(loss, logits, arch_batch['label'])

    def no_arch_update(state):
      zero = jnp.zeros((), jnp.float32)
      return state, {'loss_sum': zero, 'correct': zero, 'count': zero}

    state, arch_metrics = jax.lax.cond(state.step >= arch_start_step,
                                       arch_update, no_arch_update, state)

    images = augment(train_rng, train_batch['image'])
    (loss, (batch_stats, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, state.arch, state.batch_stats, images, train_batch['label'])
    updates, weight_opt_state = weight_tx.update(grads, state.weight_opt_state, state.params)
    state = state.replace(step=state.step + 1,
                          params=optax.apply_updates(state.params, updates),
                          batch_stats=batch_stats, weight_opt_state=weight_opt_state)
    metrics = {'train_' + k: v for k, v in _metrics(loss, logits, train_batch['label']).items()}
    metrics.update({'arch_' + k: v for k, v in arch_metrics.items()})
    return state, metrics

  return step


def make_eval_step(model, config) -> Callable:
  """Masked loss/accuracy sums with BatchNorm running statistics (eval mode)."""
  d = config.data

  def eval_step(state: SearchState, batch) -> Dict[str, jax.Array]:
    images = data.normalize(batch['image'], d.mean, d.std)
    logits = model.apply({'params': state.params, 'arch': state.arch,
                          'batch_stats': state.batch_stats}, images, train=False)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label'])
    mask = batch['mask']
    correct = (jnp.argmax(logits, -1) == batch['label']).astype(jnp.float32)
    return {'loss_sum': jnp.sum(losses * mask), 'correct': jnp.sum(correct * mask),
            'count': jnp.sum(mask)}

  return eval_step


def _accumulate(totals, metrics):
  """Adds metric sums on device (no host sync)."""
  return metrics if totals is None else jax.tree.map(jnp.add, totals, metrics)


def evaluate(eval_step, state, dataset: data.ArraySet, batch_size: int) -> Dict[str, float]:
  totals = None
  for batch in data.eval_batches(dataset, batch_size):
    totals = _accumulate(totals, eval_step(state, batch))
  return _summarise(jax.device_get(totals))


def _summarise(sums: Dict[str, Any], prefix: str = '') -> Dict[str, float]:
  count = float(sums[prefix + 'count'])
  if count == 0:
    return {}
  return {'loss': float(sums[prefix + 'loss_sum']) / count,
          'accuracy': float(sums[prefix + 'correct']) / count}


def arch_numpy(state: SearchState) -> Dict[str, np.ndarray]:
  return {k: np.asarray(v) for k, v in jax.device_get(state.arch).items()}


def _write_atomic(path: str, text: str):
  tmp = f'{path}.tmp-{os.getpid()}'
  with open(tmp, 'w') as f:
    f.write(text)
  os.replace(tmp, path)


def _prepare_workdir(workdir: str):
  existing = os.path.join(workdir, 'genotypes.jsonl')
  if os.path.exists(existing):
    raise config_validation.ConfigError(
        f'--workdir={workdir!r} already holds a search ({existing}); choose a new '
        f'workdir or remove it; nothing was changed.')
  os.makedirs(workdir, exist_ok=True)


def search(config, workdir: str) -> genotypes.Genotype:
  """Runs the architecture search described by `config`; returns the final genotype.

  Writes WORKDIR/genotypes.jsonl (one line per epoch), WORKDIR/genotype.json and
  WORKDIR/arch.npz (final arch values).
  """
  config_validation.validate_search_config(config, num_devices=1)
  train_set, arch_set = data.search_splits(config.data)
  config_validation.validate_batch_fits(config, len(train_set), len(arch_set))
  _prepare_workdir(workdir)  # Only after every check passed.

  s = config.search
  train_iter = data.EpochIterator(train_set, s.batch_size, seed=config.seed)
  arch_iter = data.EpochIterator(arch_set, s.batch_size, seed=config.seed + 1)
  steps_per_epoch = train_iter.steps_per_epoch

  model = supernet.build_supernet(config)
  weight_tx = optim.weight_optimizer(config, steps_per_epoch)
  arch_tx = optim.arch_optimizer(config)
  rng = jax.random.PRNGKey(config.seed)
  init_rng, step_rng = jax.random.split(rng)
  sample = data.normalize(train_set.images[:1], config.data.mean, config.data.std)
  state = create_search_state(model, config, init_rng, sample, weight_tx, arch_tx)
  n_params = sum(x.size for x in jax.tree.leaves(state.params))
  logging.info('supernet: %d weights; %d steps per epoch', n_params, steps_per_epoch)
  print(f'supernet: {n_params:,} weights, {steps_per_epoch} steps/epoch, '
        f'{s.epochs} epochs, arch steps from epoch {s.arch_start_epoch}', flush=True)

  bilevel_step = jax.jit(make_bilevel_step(model, config, steps_per_epoch, weight_tx, arch_tx),
                         donate_argnums=0)
  eval_step = jax.jit(make_eval_step(model, config))
  lr_fn = optim.weight_learning_rate(config, steps_per_epoch)

  jsonl_path = os.path.join(workdir, 'genotypes.jsonl')
  start_time = time.time()
  genotype = None
  for epoch in range(s.epochs):
    epoch_start = time.time()
    sums = None
    for i in range(steps_per_epoch):
      step_rng, rng_now = jax.random.split(step_rng)
      # Metrics are summed on device: no host sync inside the epoch but the log.
      state, metrics = bilevel_step(state, next(train_iter), next(arch_iter), rng_now)
      sums = _accumulate(sums, metrics)
      step_number = epoch * steps_per_epoch + i + 1  # Host count: no device read.
      if s.log_every_steps and step_number % s.log_every_steps == 0:
        logging.info('step %d: %s', step_number, _summarise(jax.device_get(sums), 'train_'))
    sums = jax.device_get(sums)
    train = _summarise(sums, 'train_')
    arch = _summarise(sums, 'arch_')
    valid = evaluate(eval_step, state, arch_set, s.eval_batch_size)
    arch_values = arch_numpy(state)
    genotype = genotypes.derive_genotype(arch_values, model.primitives, model.steps)
    record = {
        'epoch': epoch, 'step': int(state.step),
        'lr': float(lr_fn(epoch * steps_per_epoch)),
        'train': train, 'arch': arch, 'valid': valid,
        'seconds': time.time() - epoch_start,
        'genotype': genotypes.to_dict(genotype),
    }
    with open(jsonl_path, 'a') as f:
      f.write(json.dumps(record) + '\n')
    arch_text = (f" arch_loss {arch['loss']:.4f} arch_acc {arch['accuracy']:.4f}"
                 if arch else ' (arch warm-up)')
    print(f"epoch {epoch + 1}/{s.epochs} lr {record['lr']:.5f} train_loss "
          f"{train['loss']:.4f} train_acc {train['accuracy']:.4f}{arch_text} valid_loss "
          f"{valid['loss']:.4f} valid_acc {valid['accuracy']:.4f} "
          f"({record['seconds']:.1f}s)\n  genotype = {genotype}", flush=True)

  _write_atomic(os.path.join(workdir, 'genotype.json'), genotypes.to_json(genotype) + '\n')
  arch_path = os.path.join(workdir, 'arch.npz')
  np.savez(arch_path + '.tmp.npz', **arch_numpy(state))
  os.replace(arch_path + '.tmp.npz', arch_path)
  print(f'search done in {time.time() - start_time:.1f}s; genotype written to '
        f'{os.path.join(workdir, "genotype.json")}', flush=True)
  return genotype
