"""The relaxations of the arch parameters (softmax, Dirichlet, Gumbel, GDAS) and the
Dirichlet KL regulariser, against independent computations."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy import stats

from configs import cifar10_search
from configs import nb201_cifar10_search
from configs import nb201_digits_search
from pcdarts_jax.search import validation as config_validation
from pcdarts_jax.spaces import relaxation


def test_dirichlet_pathwise_gradient_matches_the_analytic_mean():
  """d/d beta E[f(w)], w ~ Dir(elu(beta) + 1), by averaging pathwise gradients of
  single samples, against the gradient of E[f] in closed form:
  f(w) = sum_i c_i w_i + w_0^2 with E[w_i] = a_i / A and
  E[w_0^2] = a_0 (a_0 + 1) / (A (A + 1))."""
  beta = jnp.array([[0.3, -0.5, 1.2, 0.0]])
  c = jnp.array([1.0, -2.0, 0.5, 3.0])

  def f(w):
    return jnp.sum(c * w) + w[..., 0] ** 2

  def sampled(beta, key):
    return jnp.sum(f(relaxation.mixing_weights('dirichlet', beta, key)))

  keys = jax.random.split(jax.random.PRNGKey(0), 40_000)
  estimate = jnp.mean(jax.vmap(jax.grad(sampled), (None, 0))(beta, keys), axis=0)

  def expected(beta):
    a = relaxation.concentration(beta)[0]
    total = jnp.sum(a)
    return jnp.sum(c * a / total) + a[0] * (a[0] + 1) / (total * (total + 1))

  exact = jax.grad(expected)(beta)
  # Monte Carlo error of 40k samples: a few 1e-3 here.
  np.testing.assert_allclose(estimate, exact, atol=0.02)
  assert float(jnp.max(jnp.abs(exact))) > 0.1  # A non-trivial gradient.


def test_kl_closed_form_against_scipy_entropy():
  """KL(Dir(a) || Dir(1)) = -H(Dir(a)) - ln Gamma(K): Dir(1) has density
  Gamma(K) on the simplex (scipy computes the entropy independently)."""
  rng = np.random.default_rng(0)
  for _ in range(5):
    alpha = rng.uniform(0.05, 6.0, size=7)
    expected = -stats.dirichlet(alpha).entropy() - math.lgamma(7)
    got = float(relaxation.dirichlet_kl_to_uniform(jnp.asarray(alpha, jnp.float32)))
    np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-4)
  assert float(relaxation.dirichlet_kl_to_uniform(jnp.ones(7))) == pytest.approx(0.0, abs=1e-5)


def test_arch_penalty_sums_kl_over_op_parameters_only():
  config = ml_collections.ConfigDict({'search': {'arch_regularizer': 'kl',
                                                 'arch_regularizer_scale': 0.5}})
  arch = {'alphas_normal': jnp.full((3, 4), 0.7), 'betas_normal': jnp.ones(3) * 5}
  per_edge = relaxation.dirichlet_kl_to_uniform(relaxation.concentration(jnp.full(4, 0.7)))
  assert float(relaxation.arch_penalty(config, arch)) == pytest.approx(
      0.5 * 3 * float(per_edge), rel=1e-5)
  config.search.arch_regularizer = 'l2'
  assert float(relaxation.arch_penalty(config, arch)) == 0.0


@pytest.mark.parametrize('kind', relaxation.RELAXATIONS)
def test_weights_are_distributions_and_masked_ops_get_zero(kind):
  param = jax.random.normal(jax.random.PRNGKey(1), (5, 7))
  mask = jnp.array([[1, 0, 1, 1, 0, 0, 1]] * 5, jnp.float32)
  for rng in (None, jax.random.PRNGKey(2)):
    w = relaxation.mixing_weights(kind, param, rng, temperature=0.7, mask=mask)
    np.testing.assert_allclose(jnp.sum(w, -1), 1.0, rtol=1e-5)
    assert float(jnp.max(jnp.abs(w * (1 - mask)))) == 0.0
    assert float(jnp.min(w)) >= 0.0


def test_dirichlet_samples_are_fresh_and_average_to_the_mean():
  beta = jnp.array([[0.5, 0.0, -0.3]])
  a = relaxation.concentration(beta)
  keys = jax.random.split(jax.random.PRNGKey(3), 20_000)
  samples = jax.vmap(lambda k: relaxation.mixing_weights('dirichlet', beta, k))(keys)
  assert not np.allclose(samples[0], samples[1])
  np.testing.assert_allclose(jnp.mean(samples, 0), a / jnp.sum(a), atol=5e-3)
  # Without an rng (initialisation): the mean itself.
  np.testing.assert_allclose(relaxation.mixing_weights('dirichlet', beta), a / jnp.sum(a),
                             rtol=1e-6)


def test_gumbel_temperature_schedule_and_sharpness():
  s = ml_collections.ConfigDict({'epochs': 11, 'gumbel_tau_max': 10.0, 'gumbel_tau_min': 0.1})
  assert float(relaxation.gumbel_temperature(s, 0)) == pytest.approx(10.0)
  assert float(relaxation.gumbel_temperature(s, 5)) == pytest.approx(1.0, rel=1e-5)
  assert float(relaxation.gumbel_temperature(s, 10)) == pytest.approx(0.1, rel=1e-5)
  param = jnp.array([[0.0, 3.0, 0.0]])
  cold = relaxation.mixing_weights('gumbel', param, jax.random.PRNGKey(0), temperature=0.01)
  assert float(jnp.max(cold)) > 0.99  # Nearly one-hot.


def test_linear_temperature_schedule_is_drnas():
  """DrNAS' SNAS/GDAS baselines: tau 10 at the first epoch, lowered by
  (10 - 1) / epochs after each epoch: 10, 9.1, ..., 1.9 at the last of 10."""
  s = ml_collections.ConfigDict({'epochs': 10, 'gumbel_tau_max': 10.0, 'gumbel_tau_min': 1.0,
                                 'gumbel_tau_schedule': 'linear'})
  taus = [float(relaxation.gumbel_temperature(s, e)) for e in range(10)]
  np.testing.assert_allclose(taus, [10.0 - 0.9 * e for e in range(10)], rtol=1e-6)
  assert taus[-1] == pytest.approx(1.9)
  nb201 = nb201_cifar10_search.get_config().search  # DrNAS' NB-201 defaults.
  assert (nb201.gumbel_tau_schedule, nb201.gumbel_tau_max, nb201.gumbel_tau_min) == (
      'linear', 10.0, 1.0)
  darts = cifar10_search.get_config().search
  assert (darts.gumbel_tau_schedule, darts.gumbel_tau_max, darts.gumbel_tau_min) == (
      'exponential', 10.0, 0.1)


def test_gdas_is_the_hard_sample_with_the_soft_gradient():
  """Forward: one-hot at the argmax of the Gumbel sample; backward: the soft
  Gumbel-softmax's gradient (straight-through)."""
  param = jnp.array([[0.0, 3.0, 0.0], [1.0, 0.0, -1.0]])
  key = jax.random.PRNGKey(5)
  soft = relaxation.mixing_weights('gumbel', param, key, temperature=2.0)
  hard = relaxation.mixing_weights('gdas', param, key, temperature=2.0)
  np.testing.assert_array_equal(hard, jax.nn.one_hot(jnp.argmax(soft, -1), 3))
  # Without an rng: the one-hot argmax of the parameter itself.
  np.testing.assert_array_equal(relaxation.mixing_weights('gdas', param),
                                [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
  c = jnp.array([1.0, -2.0, 0.5])
  grad = lambda kind: jax.grad(lambda p: jnp.sum(
      c * relaxation.mixing_weights(kind, p, key, temperature=2.0)))(param)
  np.testing.assert_allclose(grad('gdas'), grad('gumbel'), rtol=1e-6)
  assert float(jnp.max(jnp.abs(grad('gdas')))) > 0.01


def test_temperature_schedule_field_is_validated():
  config = nb201_digits_search.get_config()
  config.model.relaxation = 'gdas'
  config_validation.validate_search_config(config)
  config.search.gumbel_tau_schedule = 'cosine'
  with pytest.raises(config_validation.ConfigError,
                     match=r"search.gumbel_tau_schedule='cosine' is not one of"):
    config_validation.validate_search_config(config)


def test_unknown_relaxation_names_the_field():
  with pytest.raises(ValueError, match=r"model.relaxation='sparsemax' is not one of"):
    relaxation.mixing_weights('sparsemax', jnp.zeros((1, 2)))
