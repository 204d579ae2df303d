"""Per-example augmentation that does not depend on how a batch is split over devices."""

from typing import Callable, Optional

import jax

from pcdarts_jax.run import parallel


def augment_examples(augment: Callable, rng: jax.Array, images: jax.Array,
                     axis_name: Optional[str] = None) -> jax.Array:
  """`augment` per example with the key fold_in(rng, position in the global
  batch): the crops and flips do not depend on how the batch is split over
  devices."""
  index = parallel.global_index(images.shape[0], axis_name)
  keys = jax.vmap(jax.random.fold_in, (None, 0))(rng, index)
  return jax.vmap(lambda key, image: augment(key, image[None])[0])(keys, images)
