"""cgdiff.diagnostics.posterior_target_profile against the closed-form conditional variances of
Gaussian posteriors (MATH.md identities 2-4)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cgdiff import diagnostics, schedules, targets

B, D = 512, 16  # posteriors and latent elements per posterior
Z = 5.0  # standard errors allowed: a two-sided family error below 1e-4 over the ~20 comparisons here


def _posteriors():
  rng = np.random.default_rng(0)
  mean = rng.normal(size=(B, D)).astype(np.float32)
  logvar = rng.uniform(-3.0, 0.0, size=(B, D)).astype(np.float32)
  return mean, logvar


def _mean_and_standard_error(per_element_variance):
  """Each (eps_x - eps_lsi)^2 is v_e chi^2_1: mean v_e, variance 2 v_e^2; the batch-and-element mean
  of M = B D independent such terms has standard error sqrt(2 sum v_e^2) / M."""
  v = np.asarray(per_element_variance, np.float64)
  return v.mean(), np.sqrt(2.0 * np.sum(v**2)) / v.size


def test_excess_variances_match_identity_4():
  mean, logvar = _posteriors()
  schedule = schedules.cosine()
  times = jnp.array([0.02, 0.3, 0.7, 0.95])
  profile = diagnostics.posterior_target_profile(jax.random.PRNGKey(1), mean, logvar, schedule, times)
  for i, t in enumerate(np.asarray(times)):
    alpha, sigma = schedule.alpha(t), schedule.sigma(t)
    var_tweedie, var_csem = targets.conditional_target_variances(logvar, alpha, sigma)
    # In eps space (eps = -sigma s) the variances scale by sigma^2.
    for name, var in (("tweedie", var_tweedie), ("csem", var_csem)):
      expected, se = _mean_and_standard_error(sigma**2 * np.asarray(var))
      assert abs(float(profile[f"excess_{name}"][i]) - expected) < Z * se, (name, t)


def test_oracle_gate_blend_has_no_excess_and_residuals_see_the_network():
  mean, logvar = _posteriors()
  schedule = schedules.cosine()
  times = jnp.array([0.05, 0.5, 0.9])

  def oracle_gate_fn(z_t, t):  # g* of identity 3 makes the blend LSI itself
    return targets.oracle_gate(jnp.asarray(logvar), schedule.alpha(t)[:, None], schedule.sigma(t)[:, None])

  zero_net = lambda z_t, t: jnp.zeros_like(z_t)
  profile = diagnostics.posterior_target_profile(jax.random.PRNGKey(2), mean, logvar, schedule, times,
                                                 eps_fn=zero_net, gate_fn=oracle_gate_fn)
  assert profile["gate"].shape == (3, B, D)
  # float32 round-off: the blend and LSI agree to ~1e-6 relative per element, so the squared excess is
  # ~1e-12 of the targets' scale; 1e-8 of Tweedie's excess leaves a wide margin and still fails any
  # real difference.
  np.testing.assert_array_less(np.asarray(profile["excess_blend"]), 1e-8 * np.asarray(profile["excess_tweedie"]) + 1e-12)
  # Against a zero network the residual of Tweedie is E[eps^2] = 1 (standard error sqrt(2 / (B D))).
  np.testing.assert_allclose(np.asarray(profile["residual_tweedie"]), 1.0, atol=Z * np.sqrt(2.0 / (B * D)))
  assert set(profile) == {"gate", "excess_tweedie", "excess_csem", "excess_blend", "residual_tweedie",
                          "residual_csem", "residual_lsi", "residual_blend"}
