"""The two optimizers of the bilevel search, one per variable collection."""

import jax
import jax.numpy as jnp
import optax

from pcdarts_jax.run import config_fields


# search.lr_schedule_offset: which cosine value epoch e runs at, lr(e + offset).
# 1: DARTS and PC-DARTS step the scheduler at the start of each epoch (the first
# epoch already runs below lr, the last at lr_min); 0: DrNAS steps it at the end.
LR_SCHEDULE_OFFSETS = (0, 1)
# search.warmup_lr: what a warm-up epoch e < W scales by (e + 1) / W. base: the
# initial lr (PC-DARTS' and DrNAS' ImageNet searches overwrite the scheduled lr
# with it); cosine: the schedule's value at e.
WARMUP_LRS = ('base', 'cosine')


def validate(config):
  """The search fields of the two optimizers and the weight lr schedule."""
  s = config.search
  require, number = config_fields.require, config_fields.require_number
  for field in ('learning_rate', 'arch_learning_rate', 'grad_clip'):
    number(config, 'search', field)
  for field in ('learning_rate_min', 'weight_decay', 'arch_weight_decay', 'momentum',
                'warmup_epochs', 'arch_grad_clip'):
    number(config, 'search', field, allow_zero=True)
  require(config_fields.is_int(s.warmup_epochs),
          f'search.warmup_epochs={s.warmup_epochs!r} must be an integer.')
  require(s.warmup_lr in WARMUP_LRS,
          f'search.warmup_lr={s.warmup_lr!r} is not one of {WARMUP_LRS}.')
  offset = s.lr_schedule_offset
  require(config_fields.is_int(offset) and offset in LR_SCHEDULE_OFFSETS,
          f'search.lr_schedule_offset={offset!r} is not one of {LR_SCHEDULE_OFFSETS} '
          f'(1: epoch e runs at the cosine lr(e + 1), as DARTS and PC-DARTS; 0: at lr(e), '
          f'as DrNAS).')
  require(s.learning_rate_min <= s.learning_rate,
          f'search.learning_rate_min={s.learning_rate_min} exceeds '
          f'search.learning_rate={s.learning_rate}.')
  for field in ('arch_beta1', 'arch_beta2'):
    require(0.0 <= s[field] < 1.0, f'search.{field}={s[field]!r} must be in [0, 1).')
  config_fields.require_bool(s.nesterov, 'search.nesterov')


def weight_learning_rate(config, steps_per_epoch: int):
  """Cosine annealing stepped once per epoch (piecewise constant within an epoch):
  epoch e (from 0) runs at lr(e + `search.lr_schedule_offset`), where
  lr(t) = lr_min + (lr - lr_min) (1 + cos(pi t / epochs)) / 2; with
  `search.warmup_epochs` = W > 0, epochs e < W run at (e + 1) / W times
  `search.learning_rate` (`search.warmup_lr='base'`, the references' ImageNet
  warm-up) or times lr(e + offset) ('cosine'). The second-order architect's
  virtual step takes its lr from this same function."""
  s = config.search
  warmup, warmup_base, offset = s.warmup_epochs, s.warmup_lr == 'base', s.lr_schedule_offset

  def schedule(count):
    epoch = count // steps_per_epoch
    lr = s.learning_rate_min + 0.5 * (s.learning_rate - s.learning_rate_min) * (
        1.0 + jnp.cos(jnp.pi * (epoch + offset) / s.epochs))
    if warmup:
      start = s.learning_rate if warmup_base else lr
      lr = jnp.where(epoch < warmup, start * (epoch + 1) / warmup, lr)
    return lr
  return schedule


def weight_optimizer(config, steps_per_epoch: int) -> optax.GradientTransformation:
  """PyTorch order: clip the raw gradient, add L2 (weight decay), SGD momentum
  (Nesterov's with `search.nesterov`, as PyTorch's: g + momentum * buffer). The
  second-order virtual step uses plain momentum either way, as the references'."""
  s = config.search
  return optax.chain(
      optax.clip_by_global_norm(s.grad_clip),
      optax.add_decayed_weights(s.weight_decay),
      optax.sgd(weight_learning_rate(config, steps_per_epoch), momentum=s.momentum,
                nesterov=s.nesterov))


def momentum_buffer(weight_opt_state, params):
  """The SGD momentum buffer (optax `trace`) inside the weight optimizer's state,
  shaped like `params`; zeros if the optimizer keeps none. Before the first
  weight step it is zeros, like the reference's missing PyTorch buffer."""
  is_trace = lambda node: isinstance(node, optax.TraceState)
  traces = [node.trace for node in jax.tree.leaves(weight_opt_state, is_leaf=is_trace)
            if is_trace(node)]
  if len(traces) > 1:
    raise ValueError(f'the weight optimizer has {len(traces)} momentum buffers; expected one.')
  if not traces:
    return jax.tree.map(jnp.zeros_like, params)
  return traces[0]


def arch_optimizer(config) -> optax.GradientTransformation:
  """Adam with L2 added to the gradient (PyTorch Adam weight_decay, not AdamW),
  after an optional clip of the gradient norm (`search.arch_grad_clip`)."""
  s = config.search
  clip = s.arch_grad_clip
  # DrNAS: the KL regulariser replaces the L2 decay (relaxation.arch_penalty).
  decay = 0.0 if config_fields.arch_regularizer(s) == 'kl' else s.arch_weight_decay
  # The reference clips the raw arch gradient, then Adam adds the decay.
  return optax.chain(
      optax.clip_by_global_norm(clip) if clip else optax.identity(),
      optax.add_decayed_weights(decay),
      optax.adam(s.arch_learning_rate, b1=s.arch_beta1, b2=s.arch_beta2, eps=1e-8))
