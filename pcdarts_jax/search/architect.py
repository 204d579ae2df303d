"""Architecture-gradient strategies; the search loop picks one by name.

`make_architect(name, config, loss_fn, lr_fn, axis_name=None)` returns a pure,
jittable

  arch_grad(state, arch_images, arch_labels, train_images, train_labels, rng)
      -> (arch_grads, batch_stats, loss, logits)

where `loss_fn(params, arch, batch_stats, images, labels, rng)` ->
(loss, (batch_stats, logits)) runs the supernet in train mode (`rng` feeds the
random channel sampling, if any) and `lr_fn(step)` is the weight learning rate.
`loss` and `logits` are those of the arch batch at the weights the gradient is
taken at (w for first order, the virtual w' for second order). Under pmap,
`axis_name` names the device axis: every gradient (the virtual step's, the
perturbed passes', the final one) is averaged over it, so N devices holding
B/N images each compute the global-batch gradient.

Strategies (DARTS, Liu et al. ICLR 2019, github.com/quark0/darts `architect.py`):
- `first_order`: grad_alpha L_val(w, alpha).
- `second_order`: DARTS' unrolled step with the finite-difference
  Hessian-vector product, as the reference computes it.
- `second_order_exact`: the same objective, alpha -> L_val(w'(alpha), alpha),
  differentiated through the virtual SGD step by JAX (no finite difference).

BatchNorm statistics. Every pass runs in train mode (batch statistics), so the
running statistics never change a gradient; they only feed evaluation. The
strategies keep the statistics of one pass of the real network:
- first order: the arch-batch pass at w (as the reference's arch step does);
- second order (both): the train-batch pass at w that the virtual step
  differentiates. The reference also updates the real network's running
  statistics in its two perturbed passes at w +- eps v (the same train batch,
  at weights 0.01 away); those and the virtual network's arch-batch pass (the
  reference's throw-away copy) are dropped here.
"""

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from pcdarts_jax.run import config_fields
from pcdarts_jax.run import parallel
from pcdarts_jax.search import optim

FINITE_DIFFERENCE_R = 0.01  # eps = r / ||v|| (the reference's hessian_vector_product).


def with_penalty(loss_fn: Callable, penalty: Optional[Callable]) -> Callable:
  """loss_fn plus `penalty(arch)` (an arch regulariser such as DrNAS' KL term)."""
  if penalty is None:
    return loss_fn

  def penalised(params, arch, *args):
    loss, aux = loss_fn(params, arch, *args)
    return loss + penalty(arch), aux
  return penalised


def global_norm(tree) -> jax.Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def virtual_step(params, grads, momentum_buffer, lr, momentum: float, weight_decay: float):
  """The reference's unrolled SGD step, w' = w - lr (momentum * m + g + wd * w).

  The fresh gradient is not clipped (the reference unrolls without clipping);
  `momentum_buffer` is the weight optimizer's buffer m (zeros before the first
  weight step).
  """
  return jax.tree.map(
      lambda w, g, m: w - lr * (momentum * m + g + weight_decay * w),
      params, grads, momentum_buffer)


def _split(rng):
  """(train-batch key, arch-batch key) for the channel sampling of the passes."""
  if rng is None:
    return None, None
  return tuple(jax.random.split(rng))


def first_order(config, loss_fn, lr_fn, axis_name=None, penalty=None) -> Callable:
  """DARTS first order: gradient of the arch-batch loss at the current weights."""
  del config, lr_fn
  loss_fn = with_penalty(loss_fn, penalty)

  def arch_grad(state, arch_images, arch_labels, train_images, train_labels, rng=None):
    del train_images, train_labels
    (loss, (batch_stats, logits)), grads = parallel.value_and_grad(
        loss_fn, axis_name, argnums=1, has_aux=True)(
            state.params, state.arch, state.batch_stats, arch_images, arch_labels, rng)
    return grads, batch_stats, loss, logits

  return arch_grad


def _unrolled(config, loss_fn, lr_fn, state, arch, train_images, train_labels, train_rng,
              axis_name):
  """w'(alpha) and the train pass's BatchNorm statistics."""
  s = config.search
  (_, (batch_stats, _)), grads = parallel.value_and_grad(
      loss_fn, axis_name, argnums=0, has_aux=True)(
      state.params, arch, state.batch_stats, train_images, train_labels, train_rng)
  buffer = optim.momentum_buffer(state.weight_opt_state, state.params)
  lr = lr_fn(state.step)
  return virtual_step(state.params, grads, buffer, lr, s.momentum, s.weight_decay), batch_stats


def second_order(config, loss_fn, lr_fn, axis_name=None, penalty=None,
                 r: float = FINITE_DIFFERENCE_R) -> Callable:
  """DARTS second order (unrolled), with the reference's finite differences.

  grad = grad_alpha L_val(w', alpha) - lr * (grad_alpha L_train(w+, alpha) -
  grad_alpha L_train(w-, alpha)) / (2 eps), with v = grad_w' L_val(w', alpha),
  w+- = w +- eps v and eps = 0.01 / ||v|| (global norm over all weights).
  Both perturbed passes use the train batch and the same channel sample as the
  virtual step, so the difference measures the weights alone. `r` is the
  reference's 0.01 (tests use smaller values to check convergence).
  """
  def arch_grad(state, arch_images, arch_labels, train_images, train_labels, rng=None):
    train_rng, arch_rng = _split(rng)
    unrolled, batch_stats = _unrolled(config, loss_fn, lr_fn, state, state.arch,
                                      train_images, train_labels, train_rng, axis_name)
    (loss, (_, logits)), (v, grads) = parallel.value_and_grad(
        with_penalty(loss_fn, penalty), axis_name, argnums=(0, 1), has_aux=True)(unrolled, state.arch, state.batch_stats,
                                               arch_images, arch_labels, arch_rng)
    eps = r / jnp.maximum(global_norm(v), 1e-12)
    # w+ and w- stacked on a leading axis and run by one lax.map: one compiled
    # gradient body instead of two.
    perturbed = jax.tree.map(lambda w, d: jnp.stack([w + eps * d, w - eps * d]),
                             state.params, v)
    train_arch_grad = lambda w: parallel.grad(loss_fn, axis_name, argnums=1, has_aux=True)(
        w, state.arch, state.batch_stats, train_images, train_labels, train_rng)[0]
    plus_minus = jax.lax.map(train_arch_grad, perturbed)
    lr = lr_fn(state.step)
    grads = jax.tree.map(lambda g, pm: g - lr * (pm[0] - pm[1]) / (2.0 * eps),
                         grads, plus_minus)
    return grads, batch_stats, loss, logits

  return arch_grad


def second_order_exact(config, loss_fn, lr_fn, axis_name=None, penalty=None) -> Callable:
  """The gradient of alpha -> L_val(w'(alpha), alpha) by autodiff through the
  virtual step (a second-order reverse pass; no finite difference)."""
  def arch_grad(state, arch_images, arch_labels, train_images, train_labels, rng=None):
    train_rng, arch_rng = _split(rng)

    def unrolled_loss(arch):
      unrolled, batch_stats = _unrolled(config, loss_fn, lr_fn, state, arch,
                                        train_images, train_labels, train_rng, axis_name)
      loss, (_, logits) = with_penalty(loss_fn, penalty)(
          unrolled, arch, state.batch_stats, arch_images, arch_labels, arch_rng)
      return loss, (batch_stats, logits)

    (loss, (batch_stats, logits)), grads = parallel.value_and_grad(
        unrolled_loss, axis_name, has_aux=True)(state.arch)
    return grads, batch_stats, loss, logits

  return arch_grad


ARCHITECTS = {
    'first_order': first_order,
    'second_order': second_order,
    'second_order_exact': second_order_exact,
}

# Architects that differentiate a gradient (a second reverse pass through the net).
SECOND_REVERSE_ARCHITECTS = ('second_order_exact',)
# depthwise_impl values whose custom VJPs fail when differentiated again inside
# the search cell's edge scan (a ValueError from their backward pass, where the
# same ops outside a scan pass; cause not isolated yet).
SINGLE_REVERSE_IMPLS = ('shifted', 'fused')


# search.bilevel_phases: the arch and weight phases of a step in sequence, or as
# the two iterations of one loop (search.make_bilevel_step).
BILEVEL_PHASES = ('sequence', 'loop')


def validate(config):
  """How the search gets its arch gradient: search.architect (and the depthwise
  form it can differentiate), or single-level (no architect); the step's phases."""
  s, m = config.search, config.model
  require = config_fields.require
  architects = tuple(ARCHITECTS)
  require(s.architect in architects,
          f'search.architect={s.architect!r} is not one of {architects}.')
  require(s.architect not in SECOND_REVERSE_ARCHITECTS
          or m.depthwise_impl not in SINGLE_REVERSE_IMPLS,
          f'search.architect={s.architect!r} differentiates a gradient, which '
          f'model.depthwise_impl={m.depthwise_impl!r} does not support in the search '
          f"cell; use 'auto' (= 'conv' for this architect), 'conv' or 'dense'.")
  single_level = s.single_level
  config_fields.require_bool(single_level, 'search.single_level')
  phases = config_fields.bilevel_phases(s)
  require(phases in BILEVEL_PHASES,
          f'search.bilevel_phases={phases!r} is not one of {BILEVEL_PHASES}.')
  require(not single_level or s.architect == 'first_order',
          f'search.single_level=True updates the architecture on the train batch and '
          f'takes no architect; search.architect={s.architect!r} must be \'first_order\'.')


def depthwise_impl(config) -> str:
  """The depthwise form the search builds its supernet with (build_supernet's
  `depthwise_impl`): model.depthwise_impl, except that `auto` means `conv`
  under an architect that differentiates a gradient (see SINGLE_REVERSE_IMPLS)."""
  impl = config_fields.field(config.model, 'depthwise_impl', 'auto')
  if impl == 'auto' and config.search.architect in SECOND_REVERSE_ARCHITECTS:
    return 'conv'
  return impl


def make_architect(name: str, config, loss_fn, lr_fn, axis_name=None,
                   penalty: Optional[Callable] = None) -> Callable:
  """The arch-gradient function of strategy `name` (one of ARCHITECTS), with
  gradients averaged over the device axis `axis_name` (None: one device).
  `penalty(arch)` is added to the arch-batch loss (not to the train-batch passes
  of the second-order strategies)."""
  if name not in ARCHITECTS:
    raise ValueError(f'search.architect={name!r} is not one of {tuple(ARCHITECTS)}.')
  return ARCHITECTS[name](config, loss_fn, lr_fn, axis_name, penalty)
