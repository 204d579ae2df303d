"""Architecture-gradient strategies; the search loop picks one by name.

A strategy maps (loss_fn, state, images, labels) to the arch gradient, the
BatchNorm statistics after its forward pass, the loss and the logits, where
loss_fn(params, arch, batch_stats, images, labels) -> (loss, (batch_stats, logits)).
"""

import jax


def first_order(loss_fn, state, images, labels):
  """DARTS first order: gradient of the arch-batch loss at the current weights."""
  (loss, (batch_stats, logits)), grads = jax.value_and_grad(
      loss_fn, argnums=1, has_aux=True)(state.params, state.arch, state.batch_stats,
                                        images, labels)
  return grads, batch_stats, loss, logits


ARCHITECTS = {'first_order': first_order}
