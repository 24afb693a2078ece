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
  np.testing.assert_array_less(np.asarray(profile["excess_blend"]),
                               1e-8 * np.asarray(profile["excess_tweedie"]) + 1e-12)
  # Against a zero network the residual of Tweedie is E[eps^2] = 1 (standard error sqrt(2 / (B D))).
  np.testing.assert_allclose(np.asarray(profile["residual_tweedie"]), 1.0, atol=Z * np.sqrt(2.0 / (B * D)))
  assert set(profile) == {"gate", "excess_tweedie", "excess_csem", "excess_blend", "residual_tweedie",
                          "residual_csem", "residual_lsi", "residual_blend"}


# --- gate_profile: the learned gate against g* and g_p, the critic against the diffused Gaussian ----------
def _shared_variance_posteriors(logvar_value=-1.5):
  """Posteriors with one variance v: g* = sigma^2 / (sigma^2 + alpha^2 v) is then a function of t alone,
  so a gate network can equal it exactly."""
  mean, _ = _posteriors()
  return mean, np.full_like(mean, logvar_value)


def test_gate_profile_is_zero_where_the_gate_and_critic_are_the_references():
  schedule = schedules.cosine()
  times = jnp.array([0.05, 0.3, 0.7])
  mean, logvar = _shared_variance_posteriors()
  prior = (jnp.asarray(mean.mean(axis=0)), jnp.full((D,), 0.4, jnp.float32))

  def at(t):
    return schedule.alpha(t)[:, None], schedule.sigma(t)[:, None]

  oracle_gate = lambda z, t: targets.oracle_gate(jnp.full(z.shape, -1.5), *at(t))
  prior_gate = lambda z, t: targets.oracle_gate(jnp.broadcast_to(prior[1], z.shape), *at(t))

  def gaussian_critic(z, t):  # eps of the diffused Gaussian fit: the degenerate zero-loss critic
    alpha, sigma = at(t)
    m, lv = (jnp.broadcast_to(x, z.shape) for x in prior)
    return targets.score_to_eps(targets.lsi_score(z, m, lv, alpha, sigma), sigma)

  at_oracle = diagnostics.gate_profile(jax.random.PRNGKey(0), mean, logvar, schedule, times,
                                       eps_fn=gaussian_critic, gate_fn=oracle_gate, prior=prior)
  np.testing.assert_allclose(at_oracle["gate_to_oracle"], 0.0, atol=1e-6)
  np.testing.assert_allclose(at_oracle["critic_vs_gaussian"], 0.0, atol=1e-10)
  # Means of equal values summed in different orders: float32 round-off over B D = 8192 terms.
  np.testing.assert_allclose(at_oracle["gate"], at_oracle["oracle_gate"], rtol=1e-5)
  assert np.all(np.asarray(at_oracle["critic_vs_lsi"]) > 0.0)
  degenerate = diagnostics.gate_profile(jax.random.PRNGKey(0), mean, logvar, schedule, times,
                                        eps_fn=gaussian_critic, gate_fn=prior_gate, prior=prior)
  np.testing.assert_allclose(degenerate["gate_to_prior"], 0.0, atol=1e-6)
  np.testing.assert_allclose(degenerate["gate"], degenerate["prior_gate"], rtol=1e-5)
  # v = e^-1.5 = 0.22 against v_agg = 0.4: the two gates differ at every time.
  assert np.all(np.asarray(degenerate["gate_to_oracle"]) > 1e-3)


def test_gate_profile_of_a_single_gaussian_has_lsi_equal_to_the_gaussian_score():
  schedule = schedules.cosine()
  mean = np.zeros((B, D), np.float32) + 0.3
  logvar = np.full((B, D), -1.0, np.float32)
  prior = (jnp.full((D,), 0.3), jnp.full((D,), -1.0))
  profile = diagnostics.gate_profile(jax.random.PRNGKey(1), mean, logvar, schedule, jnp.array([0.1, 0.6]),
                                     eps_fn=lambda z, t: jnp.zeros_like(z), prior=prior)
  np.testing.assert_allclose(profile["lsi_vs_gaussian"], 0.0, atol=1e-10)
  np.testing.assert_allclose(profile["prior_gate"], profile["oracle_gate"], rtol=1e-5)
  assert "gate" not in profile


def test_learned_blend_with_the_oracle_gate_has_the_variance_of_lsi():
  """Identity 3 on a field whose components share one variance: blend(a, b, g*) = l draw by draw, so
  Var(blend | z_t) = Var(l | z_t) (to float32 round-off in CSEM's cancellation)."""
  schedule = schedules.cosine()
  rng = np.random.default_rng(3)
  means = rng.normal(size=(16, 4)).astype(np.float32)
  logvars = np.full((16, 4), -1.0, np.float32)
  log_weights = np.full((16,), -np.log(16.0), np.float32)
  gate_fn = lambda z, t: targets.oracle_gate(jnp.full(z.shape, -1.0), schedule.alpha(t)[:, None],
                                             schedule.sigma(t)[:, None])
  profile = diagnostics.target_variance_profile(jax.random.PRNGKey(4), means, logvars, log_weights, schedule,
                                                jnp.array([0.2, 0.5, 0.8]), num_points=4, num_draws=256,
                                                gate_fn=gate_fn)
  np.testing.assert_allclose(profile["blend"], profile["lsi"], rtol=1e-3)
  assert np.all(np.asarray(profile["tweedie"]) > np.asarray(profile["lsi"]))


def test_learned_blend_of_the_prior_target_at_the_prior_gate_has_zero_variance():
  """Errata 4 on the field: the blend of 001's prior-CSEM target at g = g_p cancels z0, so its variance
  given z_t is 0 (to float32 round-off: 1e-6 of Tweedie's), while the posterior-CSEM blend at the same
  gate keeps a variance of the order of Tweedie's. The profile must blend the target it is told to."""
  schedule = schedules.cosine()
  rng = np.random.default_rng(5)
  means = rng.normal(size=(16, 4)).astype(np.float32)
  logvars = rng.uniform(-2.0, 0.0, size=(16, 4)).astype(np.float32)
  log_weights = np.full((16,), -np.log(16.0), np.float32)
  prior = (jnp.zeros((4,)), jnp.full((4,), 0.2))  # any Gaussian: g_p is its gate
  gate_fn = lambda z, t: targets.oracle_gate(jnp.full(z.shape, 0.2), schedule.alpha(t)[:, None],
                                             schedule.sigma(t)[:, None])
  profile = lambda target: diagnostics.target_variance_profile(
      jax.random.PRNGKey(6), means, logvars, log_weights, schedule, jnp.array([0.2, 0.5, 0.8]), num_points=4,
      num_draws=256, gate_fn=gate_fn, blend_target=target, prior=prior)
  prior_blend, posterior_blend = profile("critic_gate_prior"), profile("critic_gate")
  tweedie = np.asarray(prior_blend["tweedie"])
  np.testing.assert_array_less(np.asarray(prior_blend["blend"]), 1e-6 * tweedie)
  assert np.all(np.asarray(posterior_blend["blend"]) > 1e-2 * tweedie)
