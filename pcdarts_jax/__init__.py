"""pcdarts-jax: differentiable architecture search (PC-DARTS and relatives) in JAX/Flax."""

from pcdarts_jax.spaces.darts import genotypes
from pcdarts_jax.spaces.darts.supernet import build_supernet

__all__ = ['build_supernet', 'genotypes']
