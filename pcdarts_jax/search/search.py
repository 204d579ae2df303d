"""The gradient-based search (DARTS, PC-DARTS, DrNAS and their variants, on the
darts and nb201 spaces): its state, the jitted bilevel and eval steps, and
`search(config, workdir)`.

Steps are pure functions of (state, batches, rng). The epochs run on the run
driver (pcdarts_jax.run.driver); `search` supplies the step, the progressive
stage changes and the end-of-epoch work (evaluation, genotype, record).
"""

import json
import os
import time
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

from absl import logging
import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from pcdarts_jax.search import architect
from pcdarts_jax.run import checkpoint
from pcdarts_jax.run import config_fields
from pcdarts_jax.run import driver
from pcdarts_jax.search import validation as config_validation
from pcdarts_jax.data import augment as augment_lib
from pcdarts_jax.data import datasets as data
from pcdarts_jax.nn import initializers
from pcdarts_jax.data import pipeline as input_pipeline
from pcdarts_jax.data import sources
from pcdarts_jax.run import metrics as metrics_lib
from pcdarts_jax.run import monitor
from pcdarts_jax.search import optim
from pcdarts_jax.run import rundir
from pcdarts_jax import spaces
from pcdarts_jax.spaces.nb201 import table as nb201_table
from pcdarts_jax.run import parallel
from pcdarts_jax.search import progressive
from pcdarts_jax.search import seeds
from pcdarts_jax.spaces import relaxation
from pcdarts_jax.spaces.darts import supernet


@flax.struct.dataclass
class SearchState:
  step: jax.Array
  params: Any
  batch_stats: Any
  arch: Any
  weight_opt_state: Any
  arch_opt_state: Any
  # Non-finite guard (see `guard_nonfinite`): steps whose update was not applied,
  # the first such step (-1: none) and its (train, arch) losses.
  nonfinite_steps: jax.Array = None
  first_nonfinite_step: jax.Array = None
  first_nonfinite_losses: jax.Array = None


def create_search_state(model, config, rng, sample_images, weight_tx, arch_tx) -> SearchState:
  variables = initializers.init_variables(model, rng, sample_images)
  return SearchState(
      step=jnp.zeros((), jnp.int32),
      params=variables['params'],
      batch_stats=variables['batch_stats'],
      arch=variables['arch'],
      weight_opt_state=weight_tx.init(variables['params']),
      arch_opt_state=arch_tx.init(variables['arch']),
      nonfinite_steps=jnp.zeros((), jnp.int32),
      first_nonfinite_step=jnp.full((), -1, jnp.int32),
      first_nonfinite_losses=jnp.zeros((2,), jnp.float32))


def _all_finite(tree) -> jax.Array:
  # One flat vector, one reduction: thousands of per-leaf reductions (per-edge
  # supernets of progressive learning) make XLA:CPU's compile crawl.
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  if not leaves:
    return jnp.bool_(True)
  flat = jnp.concatenate([jnp.ravel(x).astype(jnp.float32) for x in leaves])
  return jnp.all(jnp.isfinite(flat))


def guard_nonfinite(step_fn: Callable, skip: bool) -> Callable:
  """Wraps a step so that a non-finite loss or update never reaches the state.

  A step is bad when its train or arch loss, or any updated weight, BatchNorm
  statistic or arch value, is not finite. Its update is dropped and it is
  recorded in the state (`nonfinite_steps`, `first_nonfinite_step`, losses).
  skip=True: the run goes on (the step counter still advances, the batch is
  consumed). skip=False: the state freezes at the last good values, so that the
  host, which reads the summed `nonfinite` metric only at its log, checkpoint
  and epoch points, stops with the state exactly as it was before the bad step.
  Adds a `nonfinite` metric (0/1).
  """
  def guarded(state: SearchState, *args):
    new_state, metrics = step_fn(state, *args)
    losses = jnp.stack([metrics['train_loss_sum'] / jnp.maximum(metrics['train_count'], 1),
                        metrics['arch_loss_sum'] / jnp.maximum(metrics['arch_count'], 1)])
    finite = jnp.all(jnp.isfinite(losses)) & _all_finite(
        (new_state.params, new_state.batch_stats, new_state.arch))
    halted = jnp.bool_(False) if skip else state.nonfinite_steps > 0
    apply = finite & ~halted
    bad = ~finite & ~halted
    first = state.first_nonfinite_step < 0
    # One conditional instead of a select per leaf (same reason as _all_finite).
    out = jax.lax.cond(apply, lambda: new_state, lambda: state)
    out = out.replace(
        step=jnp.where(apply | (skip & bad), state.step + 1, state.step),
        nonfinite_steps=state.nonfinite_steps + bad.astype(jnp.int32),
        first_nonfinite_step=jnp.where(bad & first, state.step, state.first_nonfinite_step),
        first_nonfinite_losses=jnp.where(bad & first, losses, state.first_nonfinite_losses))
    metrics = {k: jnp.where(apply, v, jnp.zeros_like(v)) for k, v in metrics.items()}
    metrics['nonfinite'] = bad.astype(jnp.float32)
    return out, metrics

  return guarded


def _rngs(rng):
  """The supernet's rng streams from one key: random channel sampling and the
  stochastic relaxations (each model ignores the streams it does not use)."""
  if rng is None:
    return None
  return {supernet.CHANNEL_RNG: rng,
          relaxation.RELAX_RNG: jax.random.fold_in(rng, 0x7e1a)}


def make_loss_fn(model, temperature=None):
  """loss_fn(params, arch, batch_stats, images, labels, rng=None) -> (loss,
  (batch_stats, logits)), train mode. `rng` feeds the random channel sampling
  and the Dirichlet/Gumbel samples; the default supernet ignores it.
  `temperature`: the Gumbel-softmax tau (gumbel relaxation only; may be traced)."""
  extra = {} if temperature is None else {'temperature': temperature}

  def loss_fn(params, arch, batch_stats, images, labels, rng=None):
    logits, new_state = model.apply(
        {'params': params, 'arch': arch, 'batch_stats': batch_stats},
        images, train=True, mutable=['batch_stats'], rngs=_rngs(rng), **extra)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, (new_state['batch_stats'], logits)
  return loss_fn


class Updates(NamedTuple):
  """The updates one search step is made of (`make_updates`): the bilevel step
  composes them, and the benchmark times each alone. `images` are augmented
  (`augment`); `channels` keys draw the random channel sampling."""
  augment: Callable  # (rng, uint8 images) -> per-example augmented, normalised images
  weight: Callable   # (state, images, labels, channels) -> (state, train sums); step + 1
  # (state, arch images, arch labels, train images, train labels, channels)
  # -> (state, arch sums): the `search.architect` update of the arch values.
  arch: Callable
  # (state, images, labels, channels, arch_on) -> (state, train sums, arch sums):
  # single-level, both gradients from one train-batch pass.
  single: Callable


def step_keys(rng: jax.Array) -> Tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """(train, arch, train channels, arch channels): the keys of a step's rng. The
  channel keys feed the random channel sampling (unused with
  model.channel_sampling=first)."""
  train_rng, arch_rng = jax.random.split(rng)
  train_channels, arch_channels = jax.random.split(jax.random.fold_in(rng, 1))
  return train_rng, arch_rng, train_channels, arch_channels


def make_updates(model, config, steps_per_epoch: int, weight_tx, arch_tx,
                 axis_name: Optional[str] = None) -> Updates:
  """The weight, arch and single-level updates of the search step, in train
  mode, with gradients averaged over `axis_name` (see make_bilevel_step).

  The arch gradient comes from the `search.architect` strategy (architect.py);
  second-order strategies also see the train batch, the weight lr and the
  momentum buffer. The loss and arch-gradient functions are built inside each
  update: the Gumbel temperature follows the (traced) epoch of `state.step`."""
  s = config.search
  lr_fn = optim.weight_learning_rate(config, steps_per_epoch)
  gumbel = config.model.relaxation in relaxation.TEMPERED
  penalty = lambda arch: relaxation.arch_penalty(config, arch)
  train_augment = data.train_augment(config.data)

  def functions(state):
    temperature = (relaxation.gumbel_temperature(s, state.step // steps_per_epoch)
                   if gumbel else None)
    loss_fn = make_loss_fn(model, temperature)
    return loss_fn, architect.make_architect(s.architect, config, loss_fn, lr_fn, axis_name,
                                             penalty)

  def augment(rng, images):
    return augment_lib.augment_examples(train_augment, rng, images, axis_name)

  def apply_arch_grads(state, grads):
    updates, arch_opt_state = arch_tx.update(grads, state.arch_opt_state, state.arch)
    return state.replace(arch=optax.apply_updates(state.arch, updates),
                         arch_opt_state=arch_opt_state)

  def apply_weight_grads(state, grads, batch_stats):
    updates, weight_opt_state = weight_tx.update(grads, state.weight_opt_state, state.params)
    return state.replace(step=state.step + 1,
                         params=optax.apply_updates(state.params, updates),
                         batch_stats=batch_stats, weight_opt_state=weight_opt_state)

  def weight(state, images, labels, channels):
    loss_fn = functions(state)[0]
    (loss, (batch_stats, logits)), grads = parallel.value_and_grad(
        loss_fn, axis_name, has_aux=True)(
            state.params, state.arch, state.batch_stats, images, labels, channels)
    return (apply_weight_grads(state, grads, batch_stats),
            metrics_lib.batch_sums(loss, logits, labels))

  def arch(state, arch_images, arch_labels, images, labels, channels):
    grads, batch_stats, loss, logits = functions(state)[1](
        state, arch_images, arch_labels, images, labels, channels)
    state = apply_arch_grads(state, grads).replace(batch_stats=batch_stats)
    return state, metrics_lib.batch_sums(loss, logits, arch_labels)

  def single(state, images, labels, channels, arch_on):
    """Single-level (Single-DARTS); the arch regulariser, if any, added (it does
    not depend on the weights)."""
    loss_fn = architect.with_penalty(functions(state)[0], penalty)
    (loss, (batch_stats, logits)), (grads, arch_grads) = parallel.value_and_grad(
        loss_fn, axis_name, argnums=(0, 1), has_aux=True)(
            state.params, state.arch, state.batch_stats, images, labels, channels)
    state = jax.lax.cond(arch_on, apply_arch_grads, lambda st, _: st, state, arch_grads)
    # The arch metrics are those of the shared pass while the arch moves.
    train_metrics = metrics_lib.batch_sums(loss, logits, labels)
    arch_metrics = jax.tree.map(lambda m: m * arch_on, train_metrics)
    return apply_weight_grads(state, grads, batch_stats), train_metrics, arch_metrics

  return Updates(augment, weight, arch, single)


def make_bilevel_step(model, config, steps_per_epoch: int, weight_tx, arch_tx,
                      axis_name: Optional[str] = None,
                      arch_start_step: Optional[int] = None) -> Callable:
  """One search step: an arch step on the arch batch (from `arch_start_epoch` on),
  then a weight step on the train batch, both in train mode (`make_updates`).

  Under pmap, `axis_name` is the device axis (the model's BatchNorm modules must
  carry the same name): each device holds a slice of the global batch, every
  gradient is averaged over the axis and the metric sums are added over it, so
  the step computes what one device computes with the whole batch.

  With `search.single_level` there is one forward/backward on the train batch
  for weights and architecture together (arch batch unused).
  `search.bilevel_phases`: `sequence` runs the arch phase, then the weight phase;
  `loop` runs them as the two iterations of one loop (less memory, slower; see
  below). The warm-up switch is a traced comparison on `state.step`, so the step compiles
  once; `lax.cond` skips the arch pass's compute during warm-up. `arch_start_step`
  overrides `search.arch_start_epoch * steps_per_epoch` (a later stage of
  progressive learning warms up again).
  """
  s = config.search
  single_level = s.single_level
  bilevel_phases = config_fields.bilevel_phases(s)
  if bilevel_phases not in architect.BILEVEL_PHASES:
    raise ValueError(f'search.bilevel_phases={bilevel_phases!r} is not one of '
                     f'{architect.BILEVEL_PHASES}.')
  if arch_start_step is None:
    arch_start_step = s.arch_start_epoch * steps_per_epoch
  updates = make_updates(model, config, steps_per_epoch, weight_tx, arch_tx, axis_name)

  def bilevel(state, images, labels, arch_batch, arch_rng, train_channels, arch_channels):

    def arch_update(state):
      return updates.arch(state, updates.augment(arch_rng, arch_batch['image']),
                          arch_batch['label'], images, labels, arch_channels)

    def arch_phase(carry):
      state, _, train_metrics = carry
      state, arch_metrics = jax.lax.cond(state.step >= arch_start_step, arch_update,
                                         lambda st: (st, metrics_lib.zero_sums()), state)
      return state, arch_metrics, train_metrics

    def weight_phase(carry):
      state, arch_metrics, _ = carry
      state, train_metrics = updates.weight(state, images, labels, train_channels)
      return state, arch_metrics, train_metrics

    carry = (state, metrics_lib.zero_sums(), metrics_lib.zero_sums())
    if bilevel_phases == 'sequence':
      state, arch_metrics, train_metrics = weight_phase(arch_phase(carry))
    else:
      # `loop`: the two phases are the two iterations of one loop. XLA:CPU
      # reuses memory between the branches of a loop body, but not between two
      # loops in sequence (each phase runs the supernet's edge scans); it also
      # overlaps less work in them: slower, in less memory (docs/benchmarks.md).
      phases = lambda carry, phase: (jax.lax.switch(phase, [arch_phase, weight_phase], carry),
                                     None)
      (state, arch_metrics, train_metrics), _ = jax.lax.scan(phases, carry, jnp.arange(2))
    return state, train_metrics, arch_metrics

  def step(state: SearchState, train_batch, arch_batch, rng) -> Tuple[SearchState, Dict]:
    train_rng, arch_rng, train_channels, arch_channels = step_keys(rng)
    images = updates.augment(train_rng, train_batch['image'])
    labels = train_batch['label']
    if single_level:
      state, train_metrics, arch_metrics = updates.single(
          state, images, labels, train_channels, state.step >= arch_start_step)
    else:
      state, train_metrics, arch_metrics = bilevel(state, images, labels, arch_batch,
                                                   arch_rng, train_channels, arch_channels)
    metrics = {'train_' + k: v for k, v in train_metrics.items()}
    metrics.update({'arch_' + k: v for k, v in arch_metrics.items()})
    return state, parallel.psum(metrics, axis_name)

  return step


def make_eval_step(model, config, axis_name: Optional[str] = None,
                   steps_per_epoch: Optional[int] = None) -> Callable:
  """Masked loss/accuracy sums with BatchNorm running statistics (eval mode),
  added over the device axis `axis_name`. `rng` draws the Dirichlet/Gumbel
  mixing weights (DrNAS samples on every forward pass, validation included).
  Gumbel/GDAS with `steps_per_epoch`: the temperature of the epoch that ended at
  `state.step` (DrNAS validates before lowering tau); without it, tau 1."""
  d = config.data
  tempered = config.model.relaxation in relaxation.TEMPERED

  def eval_step(state: SearchState, batch, rng) -> Dict[str, jax.Array]:
    images = data.normalize(batch['image'], d.mean, d.std)
    extra = {}
    if tempered and steps_per_epoch:
      epoch = jnp.maximum(state.step - 1, 0) // steps_per_epoch
      extra['temperature'] = relaxation.gumbel_temperature(config.search, epoch)
    logits = model.apply({'params': state.params, 'arch': state.arch,
                          'batch_stats': state.batch_stats}, images, train=False,
                         rngs=_rngs(rng), **extra)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label'])
    return parallel.psum(metrics_lib.masked_sums(losses, logits, batch['label'], batch['mask']),
                         axis_name)

  return eval_step


def arch_numpy(state: SearchState) -> Dict[str, np.ndarray]:
  return {k: np.asarray(v) for k, v in jax.device_get(state.arch).items()}


# Fields that may differ between a run and its resumption: they do not change
# what is computed, only where data lives and how progress is reported.
RESUMABLE_CHANGES = ('checkpoint.', 'monitor.', 'search.log_every_steps', 'data.data_dir',
                     'data.download', 'data.manual_dir', 'data.subset_dir', 'data.cache_dir',
                     'data.archive')


LOG_NAME = rundir.SEARCH_LOG  # the per-epoch JSON-lines log in the workdir


def _check_layout(state, shapes):
  got = jax.tree.map(lambda x: tuple(np.shape(x)), (state.params, state.batch_stats))
  want = jax.tree.map(lambda x: tuple(x.shape), (shapes.params, shapes.batch_stats))
  if got != want:
    raise RuntimeError('progressive learning: the widened weights do not match the next '
                       "stage's supernet.")


# Fields a resumed run may raise (the run goes on to the new end).
EXTENDABLE = ('search.epochs',)


def _check_workdir(workdir: rundir.Workdir, config):
  """Refuses, before anything is written, a workdir this run must not touch."""
  rundir.check_resumable(workdir, config, RESUMABLE_CHANGES, 'search', EXTENDABLE)


def _epoch_pictures(workdir: rundir.Workdir, epoch: int, arch_values, genotype, model, writer,
                    space):
  """Cells (graphviz) and the arch heat-map of this epoch, under plots/."""
  prefix = os.path.join(workdir.plots, f'epoch_{epoch + 1:03d}')
  heatmap = space.heatmap(arch_values, model, prefix + '_arch.png', title=f'epoch {epoch + 1}')
  if heatmap:
    writer.image_png(epoch + 1, 'arch/heatmap', heatmap)
  for path in space.draw(genotype, prefix + '_cell'):
    if path.endswith('.png'):
      kind = next((k for k in ('normal', 'reduce') if f'_{k}.' in path), 'cell')
      writer.image_png(epoch + 1, f'cells/{kind}', path)


def _summary(workdir: rundir.Workdir, genotype, state, meta, n_params: int, ckpt_figures,
             space) -> Dict[str, Any]:
  records = []
  if os.path.exists(workdir.jsonl):
    with open(workdir.jsonl) as f:
      records = [json.loads(line) for line in f if line.strip()]
  with_valid = [r for r in records if r.get('valid')]
  best = max(with_valid, key=lambda r: r['valid']['accuracy']) if with_valid else None
  last = records[-1] if records else None
  return {
      'genotype': space.genotype_to_dict(genotype),
      'genotype_str': space.genotype_str(genotype),
      'best': best and {'epoch': best['epoch'], 'valid': best['valid'], 'train': best['train'],
                        'arch': best['arch']},
      'last': last and {k: last[k] for k in ('epoch', 'step', 'lr', 'train', 'arch', 'valid')},
      'epochs': len(records),
      'steps': int(state.step),
      'nonfinite_steps_skipped': int(state.nonfinite_steps),
      **driver.clock(meta),
      'supernet_weights': n_params,
      'resumed_from_steps': meta['resumed_from'],
      'checkpoint': ckpt_figures,
  }


class _Stages:
  """The supernet through DrNAS' progressive-learning stages (progressive.py;
  without them, one stage: the config's). Holds the current stage, its op masks
  (None before the first pruning), its model and its compiled steps; moves to
  the next stage at its first epoch (prune the ops, widen the weights, compile)."""

  def __init__(self, config, space, steps_per_epoch: int, sample, weight_tx, arch_tx,
               init_rng):
    self.config, self.space, self.steps_per_epoch = config, space, steps_per_epoch
    self.sample, self.weight_tx, self.arch_tx, self.init_rng = sample, weight_tx, arch_tx, init_rng
    self.stages = progressive.stages(config)
    self.num_seeds = seeds.num_seeds(config)
    # The form of the depthwise convs the architect can differentiate.
    self.depthwise_impl = architect.depthwise_impl(config)
    self.stage, self.masks = self.stages[0], None
    self.model = self.build(self.stage, self.masks)
    self.search_step = self.eval_step = None  # The current stage's, from `compile`.

  def build(self, stage, masks, axis_name=None):
    """The supernet of a stage: its K and, after pruning, its op masks."""
    return self.space.build_supernet(self.config, axis_name,
                                     partial_channels=stage.partial_channels,
                                     op_masks=masks, depthwise_impl=self.depthwise_impl)

  def new_state(self, model) -> SearchState:
    """N seeds: N states stacked on a seed axis, the step shared (seeds.py)."""
    create = lambda rng: create_search_state(model, self.config, rng, self.sample,
                                             self.weight_tx, self.arch_tx)
    return (create(self.init_rng) if self.num_seeds == 1
            else seeds.create_states(create, self.init_rng))

  def layout(self, meta, initial: SearchState):
    """The state's shapes at a checkpoint: its stage's layout (meta's op masks);
    in the first stage, the `initial` state's."""
    masks = meta.get('op_masks')
    if masks is None:
      return jax.eval_shape(lambda: initial)
    model = self.build(self.stages[meta.get('stage', 0)],
                       {k: np.asarray(v) for k, v in masks.items()})
    fresh = self.new_state(model)  # Initialised for real: its initializers leave JAX.
    return jax.eval_shape(lambda: fresh)

  def restore(self, meta):
    """Takes the stage of a checkpoint's meta (given the stage fields if it lacks them)."""
    meta.setdefault('stage', 0)
    meta.setdefault('op_masks', None)
    if meta['op_masks'] is not None:
      self.stage = self.stages[meta['stage']]
      self.masks = {k: np.asarray(v) for k, v in meta['op_masks'].items()}
      self.model = self.build(self.stage, self.masks)

  def compile(self):
    """The pmapped steps of the current stage (compiled once per stage). One code
    path for any device count: the state is replicated over the local devices,
    and this process's slice of each global batch is sharded over them.
    BatchNorm statistics over the global batch."""
    config, s, spe = self.config, self.config.search, self.steps_per_epoch
    step_model = self.build(self.stage, self.masks, parallel.AXIS)
    arch_start = (self.stage.start_epoch + s.arch_start_epoch) * spe
    step = guard_nonfinite(make_bilevel_step(step_model, config, spe, self.weight_tx,
                                             self.arch_tx, parallel.AXIS, arch_start),
                           skip=s.skip_nonfinite)
    evaluate = make_eval_step(step_model, config, parallel.AXIS, spe)
    if self.num_seeds > 1:  # One step vmapped over the seeds, inside the pmap.
      step = seeds.vmap_step(step, seeds.seed_data(config), flatten=True)
      evaluate = seeds.vmap_eval_step(evaluate)
    bilevel = parallel.pmap_step(step, in_axes=(0, 0, 0, None))
    evaluate_step = parallel.pmap_step(evaluate, in_axes=(0, 0, None), donate_state=False)
    which = f' of stage {self.stage.index + 1}' if len(self.stages) > 1 else ''
    self.search_step = monitor.announce_compile(bilevel, f'the search step{which}')
    self.eval_step = monitor.announce_compile(evaluate_step, f'the eval step{which}')

  def begin_epoch(self, epoch: int, state, meta):
    """At the first epoch of a stage: prunes and widens the (replicated) state,
    records the stage in `meta` and compiles its steps. Returns the state."""
    stage = progressive.stage_of_epoch(self.config, epoch)
    if stage.index != meta['stage']:
      state = self._next_stage(state, stage, meta)
      self.compile()
    return state

  def _next_stage(self, state, stage, meta):
    """Prunes and widens at a stage boundary (outside jit); returns the new state,
    replicated."""
    s = self.config.search
    host = jax.device_get(parallel.unreplicate(state))
    masks = self.space.prune_masks(arch_numpy(host), stage.ops_kept, self.masks)
    model, new_model = self.model, self.build(stage, masks)
    shapes = self.new_state(new_model)
    rng, index = np.random.default_rng([self.config.seed, stage.index]), {}
    move = lambda tree, like: progressive.transfer(tree, like, model, new_model, rng, index,
                                                   self.space, rule=s.widen)
    host = host.replace(
        params=move(host.params, shapes.params),
        batch_stats=move(host.batch_stats, shapes.batch_stats),
        weight_opt_state=progressive.transfer_opt_state(
            host.weight_opt_state, lambda t: move(t, shapes.params)))
    _check_layout(host, shapes)
    meta.update(stage=stage.index, op_masks={k: v.tolist() for k, v in masks.items()})
    kept = max(int(np.asarray(v).sum(-1).max()) for v in masks.values())
    print(f'stage {stage.index + 1}: ops pruned to {kept} per edge, partial '
          f'channels k={stage.partial_channels}; arch steps from epoch '
          f'{stage.start_epoch + s.arch_start_epoch + 1}', flush=True)
    self.stage, self.masks, self.model = stage, masks, new_model
    return parallel.replicate(host)


def _nonfinite_text(state, steps_per_epoch: int, num_seeds: int) -> str:
  """What went wrong, read from the state the guarded step froze at the last
  good values (guard_nonfinite); N seeds: the seed that went non-finite first."""
  record, which = parallel.unreplicate(state), ''
  if num_seeds > 1:
    index = seeds.first_nonfinite(jax.device_get(record))
    record, which = seeds.seed_state(record, index), f'seed {index}: '
  bad = int(record.first_nonfinite_step)
  train_loss, arch_loss = (float(x) for x in record.first_nonfinite_losses)
  return (f'{which}non-finite values at step {bad} (epoch {bad // steps_per_epoch + 1}): train '
          f'loss {train_loss}, arch loss {arch_loss} (0 during the arch warm-up), or a '
          f'non-finite weight/arch update; the update was not applied and the run stopped.')


def _epoch_report(config, space, table, paths: rundir.Workdir, model, epoch: int, lr: float,
                  sums, valid, arch_values) -> Tuple[Any, driver.Epoch]:
  """(genotype, the epoch's report) of one search from its host sums, its
  validation and its arch values: the JSON record, the scalars, the console
  text (with an NB-201 results `table`, the cell's benchmark accuracy) and the
  pictures."""
  train = metrics_lib.summarise(sums, 'train_')
  arch = metrics_lib.summarise(sums, 'arch_')
  genotype = space.derive(arch_values, model)
  record = {'lr': lr, 'train': train, 'arch': arch, 'valid': valid,
            'nonfinite_skipped': float(sums['nonfinite']),
            'genotype': space.genotype_to_dict(genotype)}
  scalars = {'lr': lr}
  for name, values in (('train', train), ('arch', arch), ('valid', valid)):
    scalars.update({f'{name}/{k}': v for k, v in values.items()})
  scalars.update(space.arch_scalars(arch_values, model))
  arch_text = (f" arch_loss {arch['loss']:.4f} arch_acc {arch['accuracy']:.4f}"
               if arch else ' (arch warm-up)')
  text = (f"lr {lr:.5f} train_loss {train['loss']:.4f} train_acc {train['accuracy']:.4f}"
          f"{arch_text} valid_loss {valid['loss']:.4f} valid_acc {valid['accuracy']:.4f}\n"
          f"  genotype = {space.genotype_str(genotype)}")
  if table is not None:  # The benchmark's accuracy of this epoch's cell.
    record['benchmark_accuracy'] = nb201_table.lookup(
        table, space.genotype_str(genotype), config.data.name)
    text += f"\n  NAS-Bench-201 accuracy: {record['benchmark_accuracy']}"
  pictures = lambda writer: _epoch_pictures(paths, epoch, arch_values, genotype, model, writer,
                                            space)
  return genotype, driver.Epoch(record, scalars, text, pictures)


def _write_outputs(config, paths: rundir.Workdir, space, model, seed_paths, host_state,
                   genotype, meta, n_params: int):
  """The final outputs (process 0): genotype.json, arch.npz and summary.json,
  written atomically. N seeds: every seed's outputs and seeds.json, and the
  run's are the chosen seed's. Returns the run's genotype."""
  if seeds.num_seeds(config) > 1:
    chosen, genotype = seeds.finish(config, paths.root, seed_paths, host_state, model, space)
    host_state = seeds.seed_state(host_state, chosen)
  rundir.write_atomic(paths.genotype, json.dumps(space.genotype_to_dict(genotype)) + '\n')
  np.savez(paths.arch + '.tmp.npz', **arch_numpy(host_state))
  os.replace(paths.arch + '.tmp.npz', paths.arch)
  summary = _summary(paths, genotype, host_state, meta, n_params, meta['checkpoint'], space)
  rundir.write_atomic(paths.summary, json.dumps(summary, indent=2) + '\n')
  print(f'search done ({driver.clock_text(summary)}); genotype written to {paths.genotype}',
        flush=True)
  return genotype


def search(config, workdir: str):
  """Runs (or resumes) the gradient-based search described by `config` (spaces
  darts and nb201; DARTS, PC-DARTS, DrNAS and their variants).

  Returns the final genotype. Writes, under `workdir`: genotypes.jsonl (one line
  per epoch), genotype.json, arch.npz, summary.json, config.json, checkpoints/,
  tensorboard/ and plots/. An existing workdir is resumed from its newest good
  checkpoint. Raises driver.Interrupted on SIGTERM/SIGINT (after checkpointing)
  and driver.NonFiniteError when a step goes non-finite. search.num_seeds = N > 1
  runs N searches as one vmapped program (seeds.py): seed_<i>/ per seed, and the
  run's outputs are the seed with the best final validation accuracy.
  """
  num_devices = parallel.device_count()
  config = sources.resolve_config(config, workdir)  # Own data: classes, mean / std.
  config_validation.validate_search_config(config, num_devices=num_devices)
  space = spaces.of_config(config)
  # An optional NAS-Bench-201 results table, looked up for each epoch's genotype.
  table = nb201_table.from_config(config) if config_fields.space(config.model) == 'nb201' else None
  paths = rundir.Workdir(workdir, LOG_NAME)
  num_seeds = seeds.num_seeds(config)
  seed_paths = [seeds.seed_workdir(workdir, i, LOG_NAME) for i in range(num_seeds)]
  _check_workdir(paths, config)  # Before the data (which may take long) and any write.
  inputs = input_pipeline.search_inputs(config)

  s = config.search
  # On the devices two steps ahead, sharded (positions stay exact for checkpoints).
  # search.seed_data='per_seed': one stream per seed (seeds.search_sources).
  train_source, arch_source = seeds.search_sources(config, inputs, input_pipeline.search_inputs)
  train_iter = input_pipeline.DevicePrefetch(train_source)
  arch_iter = input_pipeline.DevicePrefetch(arch_source)
  # An epoch is a pass over the weight subset; the arch iterator cycles on its own.
  steps_per_epoch = train_iter.steps_per_epoch
  main = parallel.is_main_process()  # Only process 0 writes files.
  weight_tx = optim.weight_optimizer(config, steps_per_epoch)
  arch_tx = optim.arch_optimizer(config)
  lr_fn = optim.weight_learning_rate(config, steps_per_epoch)
  # N seeds: one key of each kind per seed, those of seed config.seed + i.
  init_rng, step_key, eval_key = (seeds.run_keys(config.seed) if num_seeds == 1
                                  else seeds.seed_keys(config))
  sample = data.normalize(inputs.sample_image, config.data.mean, config.data.std)
  supernets = _Stages(config, space, steps_per_epoch, sample, weight_tx, arch_tx, init_rng)
  state = supernets.new_state(supernets.model)
  n_params = sum(x.size for x in jax.tree.leaves(state.params)) // num_seeds  # One search's.

  # --- resume.
  if main:
    os.makedirs(paths.root, exist_ok=True)
    sources.write_run_files(config, paths.root)  # classes.json, data_stats.json
  checkpoints = checkpoint.Checkpoints(paths.checkpoints, config.checkpoint.keep)
  meta = {'sums': None, 'resumed_from': [], 'stage': 0, 'op_masks': None}
  initial = state
  resumed = driver.resume(checkpoints, lambda meta: supernets.layout(meta, initial), paths,
                          'search', section='search', epochs=s.epochs,
                          total_steps=s.epochs * steps_per_epoch,
                          outputs=(paths.genotype, paths.arch, paths.summary),
                          finishing='the search had finished; writing its final outputs',
                          steps_per_epoch=steps_per_epoch)
  if resumed is not None:
    state, meta = resumed.state, resumed.meta
    supernets.restore(meta)
    if resumed.complete:
      if num_seeds > 1:  # The chosen seed's.
        with open(paths.genotype) as f:
          return space.genotype_from_dict(json.load(f))
      return space.derive(arch_numpy(state), supernets.model)
    train_iter.restore(meta['train_iter'])
    arch_iter.restore(meta['arch_iter'])
    if main and num_seeds > 1:  # The seeds' logs, as the driver keeps the run's.
      for seed_path in seed_paths:
        driver.keep_epochs(seed_path.jsonl, resumed.step // steps_per_epoch)

  logging.info('supernet: %d weights; %d steps per epoch', n_params, steps_per_epoch)
  print(f'supernet: {n_params:,} weights, {steps_per_epoch} steps/epoch, '
        f'{s.epochs} epochs, arch steps from epoch {s.arch_start_epoch + 1}; '
        f'{num_devices} device(s) in {jax.process_count()} process(es), '
        f'{s.batch_size // num_devices} images per device, '
        f'{config_fields.model_dtype(config.model)} activations', flush=True)
  supernets.compile()
  # Padded and masked anyway: rounded up to split evenly over the devices.
  eval_batch_size = -(-s.eval_batch_size // num_devices) * num_devices
  genotype = space.derive(arch_numpy(state if num_seeds == 1 else seeds.seed_state(state, 0)),
                          supernets.model)
  epoch_clock = [0.0]  # When this epoch began (the seeds' records).

  # --- what the driver runs.
  def begin_epoch(epoch, first, state):
    epoch_clock[0] = time.time()
    return supernets.begin_epoch(epoch, state, meta)

  def search_step(state, step):
    # The step's rng depends only on (seed, step): resumed runs draw the same.
    return supernets.search_step(state, next(train_iter), next(arch_iter),
                                 seeds.fold_in(step_key, step))

  def nonfinite(state, sums, step):
    """The guarded step froze the state at the last good values (see guard_nonfinite)."""
    if s.skip_nonfinite or not sums['nonfinite']:
      return None
    return _nonfinite_text(state, steps_per_epoch, num_seeds)

  def epoch_result(epoch, sums, valid, arch_values) -> Tuple[Any, driver.Epoch]:
    return _epoch_report(config, space, table, paths, supernets.model, epoch,
                         float(lr_fn(epoch * steps_per_epoch)), sums, valid, arch_values)

  def end_epoch(epoch, state, sums) -> driver.Epoch:
    nonlocal genotype
    rng = seeds.fold_in(eval_key, epoch)
    batches = inputs.eval_batches(eval_batch_size)
    if num_seeds == 1:
      valid = metrics_lib.summarise(metrics_lib.total(
          supernets.eval_step(state, parallel.shard(batch), jax.random.fold_in(rng, i))
          for i, batch in enumerate(batches)))
      genotype, result = epoch_result(epoch, sums, valid, arch_numpy(parallel.unreplicate(state)))
      return result
    # N seeds: every seed's epoch as a one-seed run reports it (seeds.combine_epoch).
    valids = seeds.evaluate(supernets.eval_step, state, batches, rng, parallel.shard)
    host = jax.device_get(parallel.unreplicate(state))
    results = [epoch_result(epoch, seed_sums, valid, arch_numpy(seeds.seed_state(host, i)))
               for i, (seed_sums, valid) in enumerate(zip(seeds.unflatten_sums(sums, num_seeds),
                                                          valids))]
    combined = seeds.combine_epoch(epoch, (epoch + 1) * steps_per_epoch,
                                   time.time() - epoch_clock[0], [r for _, r in results],
                                   seed_paths, main)
    genotype = results[combined.record['seed']][0]
    return combined

  with driver.session(config, paths) as run:
    phase = driver.Phase(
        'search', paths.jsonl, checkpoints, s.epochs, steps_per_epoch, s.batch_size,
        s.log_every_steps, search_step, end_epoch, begin_epoch=begin_epoch,
        save_meta=lambda: {'train_iter': train_iter.state(), 'arch_iter': arch_iter.state()},
        nonfinite=nonfinite, loss_keys=('train_loss_sum', 'train_count'),
        advice='Lower the learning rates, check the data, or set search.skip_nonfinite=True '
               'to skip such steps.')
    state, meta = driver.run_phase(run, phase, parallel.replicate(state), meta)
  checkpoints.close()

  # --- the final outputs.
  host_state = jax.device_get(parallel.unreplicate(state))
  if not main:
    return genotype
  return _write_outputs(config, paths, space, supernets.model, seed_paths, host_state, genotype,
                        meta, n_params)
