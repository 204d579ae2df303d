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


def weight_learning_rate(config, steps_per_epoch: int):
  """Cosine annealing stepped once per epoch (piecewise constant within an epoch):
  epoch e (from 0) runs at lr(e + `search.lr_schedule_offset`), where
  lr(t) = lr_min + (lr - lr_min) (1 + cos(pi t / epochs)) / 2; with
  `search.warmup_epochs` = W > 0, epochs e < W run at (e + 1) / W times
  `search.learning_rate` (`search.warmup_lr='base'`, the references' ImageNet
  warm-up) or times lr(e + offset) ('cosine'). The second-order architect's
  virtual step takes its lr from this same function."""
  s = config.search
  warmup = s.get('warmup_epochs', 0)
  warmup_base = s.get('warmup_lr', 'cosine') == 'base'
  # A config without the field (older than it) runs at lr(e), as before.
  offset = s.get('lr_schedule_offset', 0)

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
                nesterov=s.get('nesterov', False)))


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
  clip = s.get('arch_grad_clip', 0.0)
  # DrNAS: the KL regulariser replaces the L2 decay (relaxation.arch_penalty).
  decay = 0.0 if config_fields.arch_regularizer(s) == 'kl' else s.arch_weight_decay
  # The reference clips the raw arch gradient, then Adam adds the decay.
  return optax.chain(
      optax.clip_by_global_norm(clip) if clip else optax.identity(),
      optax.add_decayed_weights(decay),
      optax.adam(s.arch_learning_rate, b1=s.arch_beta1, b2=s.arch_beta2, eps=1e-8))
