"""How arch parameters become op-mixing weights: the continuous relaxation.

Shared by every search space (the DARTS cell, NAS-Bench-201). `mixing_weights`
maps a (edges, ops) arch parameter to (edges, ops) weights that sum to 1 per
edge:

- `softmax` (DARTS, PC-DARTS): softmax(alpha), deterministic.
- `dirichlet` (DrNAS, Chen et al. ICLR 2021, github.com/xiangning-chen/DrNAS):
  concentration
  a = elu(beta) + 1, clamped below at MIN_CONCENTRATION; a fresh sample
  w_e ~ Dir(a_e) on every forward pass, differentiated pathwise
  (`jax.random.dirichlet` reparameterises its Gamma sampler implicitly).
- `gumbel` (SNAS-style): soft Gumbel-softmax, softmax((alpha + g) / tau) with
  g ~ Gumbel(0, 1) fresh per forward pass, tau from `gumbel_temperature`.
- `gdas` (GDAS, Dong & Yang CVPR 2019, as DrNAS' NB-201 baseline runs it): the
  same sample made hard, one-hot at its argmax in the forward pass, with the
  soft sample's gradient (straight-through). Every op is still computed; the
  reference computes only the chosen one and gives the others' weights the
  gradient of a constant-1 output instead of their op's.

The stochastic relaxations draw from the Flax rng stream RELAX_RNG; without it
(initialisation) they return their mean (Dirichlet), the plain tempered softmax
(gumbel) or its one-hot argmax (gdas).
`mask` (1 = op kept) zeroes pruned ops and renormalises (DrNAS progressive
learning).

Regularisers (`arch_penalty`): `kl` adds scale * sum_e KL(Dir(a_e) || Dir(1)) to
the arch loss only; `l2` is Adam weight decay on the arch parameters (optim.py),
not a loss term.
"""

from typing import Optional

import jax
import jax.numpy as jnp
from jax.scipy import special

from pcdarts_jax.run import config_fields

RELAXATIONS = ('softmax', 'dirichlet', 'gumbel', 'gdas')
TEMPERED = ('gumbel', 'gdas')  # The relaxations with a temperature schedule.
# exponential: ours, tau_max (tau_min / tau_max)^(e / (E - 1)), tau_min at the last
# epoch; linear: DrNAS' SNAS/GDAS baselines, tau_max - (tau_max - tau_min) e / E
# (tau lowered after each epoch, so the last epoch runs one step above tau_min).
GUMBEL_TAU_SCHEDULES = ('exponential', 'linear')
REGULARIZERS = ('l2', 'kl')
RELAX_RNG = 'relax'  # Flax rng stream of the stochastic relaxations.
MIN_CONCENTRATION = 1e-3  # Gamma sampling (and its gradient) break down near 0.


def validate(config):
  """model.relaxation and the search fields it reads: the arch regulariser
  (`kl` needs the Dirichlet relaxation) and the Gumbel temperature schedule."""
  m, s = config.model, config.search
  require = config_fields.require
  relax = m.relaxation
  require(relax in RELAXATIONS, f'model.relaxation={relax!r} is not one of {RELAXATIONS}.')
  regularizer = config_fields.arch_regularizer(s)
  require(regularizer in REGULARIZERS,
          f'search.arch_regularizer={regularizer!r} is not one of {REGULARIZERS}.')
  require(regularizer != 'kl' or relax == 'dirichlet',
          f"search.arch_regularizer='kl' is the Dirichlet KL term and needs "
          f"model.relaxation='dirichlet', not {relax!r}.")
  if regularizer == 'kl':
    config_fields.require_number(config, 'search', 'arch_regularizer_scale', allow_zero=True)
  if relax in TEMPERED:
    for field in ('gumbel_tau_max', 'gumbel_tau_min'):
      config_fields.require_number(config, 'search', field)
    schedule = s.gumbel_tau_schedule
    require(schedule in GUMBEL_TAU_SCHEDULES,
            f'search.gumbel_tau_schedule={schedule!r} is not one of {GUMBEL_TAU_SCHEDULES}.')
    require(s.gumbel_tau_min <= s.gumbel_tau_max,
            f'search.gumbel_tau_min={s.gumbel_tau_min} exceeds search.gumbel_tau_max='
            f'{s.gumbel_tau_max}.')


def concentration(beta: jax.Array) -> jax.Array:
  """DrNAS' Dirichlet concentration elu(beta) + 1, clamped away from 0."""
  return jnp.maximum(jax.nn.elu(beta) + 1.0, MIN_CONCENTRATION)


def gumbel_temperature(search_config, epoch) -> jax.Array:
  """tau at `epoch` (from 0; may be traced: one compile) from `gumbel_tau_max` at
  the first epoch, by `search.gumbel_tau_schedule` (GUMBEL_TAU_SCHEDULES;
  exponential when the field is absent)."""
  s = search_config
  if s.get('gumbel_tau_schedule', 'exponential') == 'linear':
    frac = jnp.clip(epoch / s.epochs, 0.0, 1.0)
    return s.gumbel_tau_max - (s.gumbel_tau_max - s.gumbel_tau_min) * frac
  frac = jnp.clip(epoch / jnp.maximum(s.epochs - 1, 1), 0.0, 1.0)
  return s.gumbel_tau_max * (s.gumbel_tau_min / s.gumbel_tau_max) ** frac


def _masked_normalise(weights: jax.Array, mask: Optional[jax.Array]) -> jax.Array:
  if mask is None:
    return weights
  weights = weights * mask
  return weights / jnp.maximum(jnp.sum(weights, axis=-1, keepdims=True), 1e-12)


def mixing_weights(kind: str, param: jax.Array, rng: Optional[jax.Array] = None,
                   temperature: float = 1.0, mask: Optional[jax.Array] = None) -> jax.Array:
  """(edges, ops) mixing weights of relaxation `kind` (see the module docstring)."""
  param = param.astype(jnp.promote_types(param.dtype, jnp.float32))  # float64 stays
  if kind == 'softmax':
    return _masked_normalise(jax.nn.softmax(param, axis=-1), mask)
  if kind == 'dirichlet':
    alpha = concentration(param)
    if mask is not None:  # Pruned ops: no mass (tiny concentration, zeroed below).
      alpha = jnp.where(mask > 0, alpha, MIN_CONCENTRATION)
    if rng is None:
      weights = alpha / jnp.sum(alpha, axis=-1, keepdims=True)
    else:
      weights = jax.random.dirichlet(rng, alpha)
    return _masked_normalise(weights, mask)
  if kind in TEMPERED:
    logits = param
    if rng is not None:
      logits = logits + jax.random.gumbel(rng, param.shape)
    if mask is not None:
      logits = jnp.where(mask > 0, logits, -jnp.inf)
    soft = jax.nn.softmax(logits / temperature, axis=-1)
    if kind == 'gumbel':
      return soft
    hard = jax.nn.one_hot(jnp.argmax(soft, axis=-1), soft.shape[-1], dtype=soft.dtype)
    # Exactly hard's values (soft - soft is 0), soft's gradient.
    return hard + (soft - jax.lax.stop_gradient(soft))
  raise ValueError(f'model.relaxation={kind!r} is not one of {RELAXATIONS}.')


def dirichlet_kl_to_uniform(alpha: jax.Array) -> jax.Array:
  """KL(Dir(alpha) || Dir(1, ..., 1)) per row (closed form with lnGamma, digamma)."""
  total = jnp.sum(alpha, axis=-1)
  k = alpha.shape[-1]
  return (special.gammaln(total) - jnp.sum(special.gammaln(alpha), axis=-1)
          - special.gammaln(jnp.asarray(k, alpha.dtype))
          + jnp.sum((alpha - 1.0) * (special.digamma(alpha) - special.digamma(total)[..., None]),
                    axis=-1))


def arch_penalty(config, arch) -> jax.Array:
  """The term added to the arch loss: scale * sum of per-edge KL(Dir(a) || Dir(1))
  over every relaxed arch parameter for `search.arch_regularizer='kl'`
  (Dirichlet relaxation), else 0 (`l2` acts through Adam's weight decay)."""
  s = config.search
  if config_fields.arch_regularizer(s) != 'kl':
    return jnp.zeros((), jnp.float32)
  total = jnp.zeros((), jnp.float32)
  for name, value in arch.items():
    if value.ndim == 2:  # Op parameters (edges, ops); edge betas are not relaxed.
      total = total + jnp.sum(dirichlet_kl_to_uniform(concentration(value)))
  return s.arch_regularizer_scale * total
