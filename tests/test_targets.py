"""The score targets against the exact scores of random Gaussian fields (MATH.md section 3).

Monte Carlo tests draw (i, z0) exactly from p(i, z0 | z_t) (identity 5) and compare sample means with
exact values through z-scores: |mean - exact| / (sample std / sqrt(N)). The threshold is the
Bonferroni-corrected normal quantile for a family-wise false-alarm rate of 1e-4 (conftest.z_threshold),
so a correct formula fails with probability < 1e-4 (and the seeds are fixed), while a wrong one is
off by many standard errors; each test also shows that it can fail (a negative control).
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from cgdiff import schedules
from cgdiff import targets as T
from conftest import as_batch, field_moments, random_field, z_threshold

LATENT = (2, 2, 1)  # an NHWC latent with D = 4 elements
NUM_DRAWS = 20_000
NUM_POINTS = 8
SCHEDULES = {"cosine": schedules.cosine(), "ou": schedules.ou()}


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


def field_draws(schedule, field, seed=0):
  """At NUM_POINTS times uniform in log-SNR over the whole range (both ends included), one z_t ~ p_t each
  and NUM_DRAWS exact draws of (i, z0) given it. Returns a list of dicts of float64 arrays."""
  means, logvars, log_weights = field
  key = jax.random.PRNGKey(seed)
  out = []
  for t in np.asarray(schedules.time_grid(schedule, NUM_POINTS - 1)):
    key, k_field, k_eps, k_post = jax.random.split(key, 4)
    alpha, sigma = schedule.alpha(t), schedule.sigma(t)
    _, z0 = T.sample_gaussian_field(k_field, means, logvars, log_weights, 1)
    z_t = T.diffuse(z0, jax.random.normal(k_eps, z0.shape), alpha, sigma)
    z_rep = as_batch(z_t[0], NUM_DRAWS)
    idx, z0s = T.sample_gaussian_field_posterior(k_post, z_rep, means, logvars, log_weights, alpha, sigma)
    out.append(dict(t=t, alpha=alpha, sigma=sigma, z_t=z_t, z_rep=z_rep, idx=idx, z0=z0s,
                    mean=jnp.asarray(means)[idx], logvar=jnp.asarray(logvars)[idx],
                    exact=T.gaussian_field_score(z_t, means, logvars, log_weights, alpha, sigma)[0]))
  return out


def per_particle_targets(d):
  return {
      "tweedie": T.tweedie_score(d["z0"], d["z_rep"], d["alpha"], d["sigma"]),
      "csem": T.csem_score(d["z0"], d["mean"], d["logvar"], d["alpha"]),
      "lsi": T.lsi_score(d["z_rep"], d["mean"], d["logvar"], d["alpha"], d["sigma"]),
  }


def z_scores(samples, exact):
  samples = np.asarray(samples)
  return (samples.mean(0) - np.asarray(exact)) / (samples.std(0, ddof=1) / np.sqrt(samples.shape[0]))


@pytest.fixture(scope="module", params=list(SCHEDULES))
def draws(request):
  with jax.enable_x64(True):
    field = random_field(0, 5, LATENT)
    return request.param, field, field_draws(SCHEDULES[request.param], field)


# --- identity 1: unbiasedness --------------------------------------------------------------------
def test_tweedie_csem_and_lsi_are_unbiased_for_the_marginal_score(draws):
  _, _, points = draws
  thr = z_threshold(NUM_POINTS * 3 * int(np.prod(LATENT)))
  for d in points:
    for name, samples in per_particle_targets(d).items():
      z = z_scores(samples, d["exact"])
      assert np.max(np.abs(z)) < thr, f"{name} biased at t={d['t']:.4g}: z-scores {z.ravel()}"


def test_the_documents_csem_sign_is_detected_as_biased(draws):
  """Negative control (MATH.md errata 1): +(z0 - mu)/(alpha v), as 000 and 001 write it, fails."""
  _, _, points = draws
  thr = z_threshold(NUM_POINTS * int(np.prod(LATENT)))
  worst = max(np.max(np.abs(z_scores(-T.csem_score(d["z0"], d["mean"], d["logvar"], d["alpha"]),
                                     d["exact"]))) for d in points)
  assert worst > 10 * thr


def test_prior_csem_is_biased_on_a_non_gaussian_field(draws):
  """001's global-Gaussian CSEM (errata 4): its conditional mean misses the score by many standard errors."""
  _, field, points = draws
  prior_mean, prior_var = field_moments(*field)
  thr = z_threshold(NUM_POINTS * int(np.prod(LATENT)))
  biased_points = 0
  for d in points:
    samples = T.prior_csem_score(d["z0"], prior_mean, np.log(prior_var), d["alpha"])
    biased_points += np.max(np.abs(z_scores(samples, d["exact"]))) > thr
  assert biased_points >= NUM_POINTS // 2, f"bias detected at only {biased_points} of {NUM_POINTS} points"


def test_prior_csem_is_unbiased_when_the_field_is_one_gaussian():
  schedule = SCHEDULES["cosine"]
  field = random_field(1, 1, LATENT)
  prior_mean, prior_var = field_moments(*field)
  thr = z_threshold(NUM_POINTS * int(np.prod(LATENT)))
  for d in field_draws(schedule, field, seed=1):
    samples = T.prior_csem_score(d["z0"], prior_mean, np.log(prior_var), d["alpha"])
    assert np.max(np.abs(z_scores(samples, d["exact"]))) < thr


# --- identities 2 and 4: Rao-Blackwell and the conditional variances ------------------------------
def test_given_the_component_tweedie_and_csem_average_to_lsi_with_the_stated_variances(draws):
  """l = E[b | z_t, x] = E[a | z_t, x]; Var(b | z_t, x) = alpha^2 P / sigma^4, Var(a | z_t, x) = P / (alpha^2 v^2).

  Given x, b and a are affine in the Gaussian z0 | z_t, x, so the sample variance s^2 has standard error
  var * sqrt(2 / (N - 1)) (chi-square); the means are z-tested as above.
  """
  _, field, points = draws
  means, logvars, log_weights = field
  thr = z_threshold(NUM_POINTS * 4 * int(np.prod(LATENT)))
  for d in points:
    i = int(np.argmax(np.bincount(np.asarray(d["idx"]))))  # the most probable component at z_t
    one = (means[i:i + 1], logvars[i:i + 1], np.zeros(1))
    _, z0 = T.sample_gaussian_field_posterior(jax.random.PRNGKey(i), d["z_rep"], *one, d["alpha"], d["sigma"])
    mu, lv = as_batch(means[i], NUM_DRAWS), as_batch(logvars[i], NUM_DRAWS)
    b = np.asarray(T.tweedie_score(z0, d["z_rep"], d["alpha"], d["sigma"]))
    a = np.asarray(T.csem_score(z0, mu, lv, d["alpha"]))
    lsi = T.lsi_score(d["z_t"][0], means[i], logvars[i], d["alpha"], d["sigma"])
    var_b, var_a = T.conditional_target_variances(logvars[i], d["alpha"], d["sigma"])
    se = np.sqrt(2.0 / (NUM_DRAWS - 1))
    for name, samples, var in (("tweedie", b, var_b), ("csem", a, var_a)):
      assert np.max(np.abs(z_scores(samples, lsi))) < thr, (name, d["t"])
      rel = samples.var(0, ddof=1) / np.asarray(var) - 1.0
      assert np.max(np.abs(rel)) < thr * se, (name, d["t"], rel)


def test_lsi_has_the_smallest_variance_given_z_t(draws):
  """Rao-Blackwell: Var(l | z_t) <= Var(target | z_t) for tweedie, csem and blends with g = g(z_t, t).

  By the law of total variance the exact Var(b | z_t) = Var(l | z_t) + E[Var(b | z_t, x) | z_t]; the Monte
  Carlo variance is checked against that value (standard error sqrt((m4 - s^4) / N)), then the ordering.
  """
  _, field, points = draws
  means, logvars, log_weights = field
  thr = z_threshold(NUM_POINTS * 2 * int(np.prod(LATENT)))
  for d in points:
    targets = per_particle_targets(d)
    w = np.exp(np.asarray(T.gaussian_field_component_log_posterior(
        d["z_t"], means, logvars, log_weights, d["alpha"], d["sigma"]))[0])
    w = w.reshape((-1,) + (1,) * len(LATENT))
    l_i = np.asarray(T.lsi_score(as_batch(d["z_t"][0], len(means)), means, logvars, d["alpha"], d["sigma"]))
    var_l = np.sum(w * (l_i - np.asarray(d["exact"])) ** 2, axis=0)
    var_b_x, var_a_x = map(np.asarray, T.conditional_target_variances(logvars, d["alpha"], d["sigma"]))
    for name, cond in (("tweedie", var_b_x), ("csem", var_a_x)):
      samples = np.asarray(targets[name])
      exact_total = var_l + np.sum(w * cond, axis=0)
      centred = samples - samples.mean(0)
      se = np.sqrt((np.mean(centred**4, 0) - np.var(samples, 0) ** 2) / NUM_DRAWS)
      assert np.max(np.abs(samples.var(0) - exact_total) / se) < thr, (name, d["t"])
      assert np.all(var_l <= exact_total)
    mc_var = {name: np.asarray(s).var(0) for name, s in targets.items()}
    for g in (0.25, 0.75):
      mc_var[f"blend{g}"] = np.asarray(T.blend(targets["csem"], targets["tweedie"], g)).var(0)
    for name, v in mc_var.items():
      assert np.all(mc_var["lsi"] <= v), (name, d["t"])


# --- identity 3: the oracle gate --------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_oracle_gate_blend_is_lsi_exactly(dtype):
  """(1 - g*) a + g* b == l algebraically; in floating point, to rounding. Forward error analysis: the
  differences z0 - mu, z_t - alpha z0 and z_t - alpha mu carry absolute errors of eps times their operands'
  magnitudes, scaled by the products and quotients after them; g* = sigmoid(x) and 1 - g* carry absolute
  errors of eps (1 + g (1 - g) |x|), multiplied by |a| and |b|. So |blend - l| <= 16 eps [
  (1 - g)(|z0| + |mu|)/(alpha v) + g (|z_t| + alpha |z0|)/sigma^2 + (|z_t| + alpha |mu|)/(alpha^2 v + sigma^2)
  + (|a| + |b|)(1 + |x| / 4)], 16 being a generous count of the roundings on each path."""
  rng = np.random.default_rng(0)
  schedule = SCHEDULES["cosine"]
  t = np.asarray(schedules.time_grid(schedule, 31))[:, None, None, None]
  shape = (32, 4, 4, 2)
  mean = rng.standard_normal(shape).astype(dtype)
  logvar = rng.uniform(-8, 1, shape).astype(dtype)
  z0 = (mean + np.exp(logvar / 2) * rng.standard_normal(shape)).astype(dtype)
  with jax.enable_x64(dtype == np.float64):
    alpha, sigma = schedule.alpha(t.astype(dtype)), schedule.sigma(t.astype(dtype))
    z_t = T.diffuse(z0, rng.standard_normal(shape).astype(dtype), alpha, sigma)
    a, b = T.csem_score(z0, mean, logvar, alpha), T.tweedie_score(z0, z_t, alpha, sigma)
    g = T.oracle_gate(logvar, alpha, sigma)
    blended, lsi = T.blend(a, b, g), T.lsi_score(z_t, mean, logvar, alpha, sigma)
    assert blended.dtype == dtype
    v = np.exp(logvar)
    scale = ((1 - g) * (np.abs(z0) + np.abs(mean)) / (alpha * v) + g * (np.abs(z_t) + alpha * np.abs(z0)) / sigma**2
             + (np.abs(z_t) + alpha * np.abs(mean)) / (alpha**2 * v + sigma**2)
             + (np.abs(a) + np.abs(b)) * (1 + np.abs(2 * np.log(sigma) - 2 * np.log(alpha) - logvar) / 4))
    assert np.all(np.abs(blended - lsi) <= 16 * np.finfo(dtype).eps * scale)
    # Negative control: the 001 convention g a + (1 - g) b with the same g is far from lsi.
    assert np.max(np.abs(T.blend(b, a, g) - lsi) / scale) > 1e-2
    # 000's limits: g* -> 0 as sigma -> 0 and g* -> 1 as alpha -> 0.
    assert float(np.max(g[0])) > 0.99 and float(np.min(g[-1])) < 0.01


# --- the exact field score -----------------------------------------------------------------------
@pytest.mark.parametrize("flat_means", [False, True])
def test_gaussian_field_score_is_the_gradient_of_the_log_density(flat_means):
  """Autodiff of log p_t (an independent computation) agrees with the closed form to float64 rounding."""
  means, logvars, log_weights = random_field(2, 7, LATENT)
  if flat_means:
    means, logvars = means.reshape(7, -1), logvars.reshape(7, -1)
  schedule = SCHEDULES["cosine"]
  z_t = np.random.default_rng(3).standard_normal((16,) + LATENT)
  for t in np.asarray(schedules.time_grid(schedule, 5)):
    alpha, sigma = schedule.alpha(t), schedule.sigma(t)
    log_p = lambda z: jnp.sum(T.gaussian_field_log_density(z, means, logvars, log_weights, alpha, sigma))
    score = T.gaussian_field_score(z_t, means, logvars, log_weights, alpha, sigma)
    assert score.shape == z_t.shape
    np.testing.assert_allclose(score, jax.grad(log_p)(z_t), rtol=1e-9, atol=1e-9)


def test_one_component_field_score_is_lsi():
  means, logvars, _ = random_field(4, 1, LATENT)
  z_t = np.random.default_rng(5).standard_normal((3,) + LATENT)
  alpha, sigma = 0.6, 0.8
  np.testing.assert_allclose(
      T.gaussian_field_score(z_t, means, logvars, np.zeros(1), alpha, sigma),
      T.lsi_score(z_t, as_batch(means[0], 3), as_batch(logvars[0], 3), alpha, sigma), rtol=1e-12)


def test_per_example_alpha_and_sigma():
  means, logvars, log_weights = random_field(6, 3, LATENT)
  z_t = np.random.default_rng(7).standard_normal((4,) + LATENT)
  alpha = np.array([0.9, 0.5, 0.3, 0.1]).reshape(4, 1, 1, 1)
  sigma = np.sqrt(1 - alpha**2)
  batched = T.gaussian_field_score(z_t, means, logvars, log_weights, alpha, sigma)
  for b in range(4):
    one = T.gaussian_field_score(z_t[b:b + 1], means, logvars, log_weights, alpha[b], sigma[b])
    np.testing.assert_allclose(batched[b:b + 1], one, rtol=1e-12)


def test_sample_posterior_moments():
  rng = np.random.default_rng(8)
  mean, logvar = rng.standard_normal(LATENT), rng.uniform(-3, 1, LATENT)
  z0 = T.sample_posterior(jax.random.PRNGKey(0), as_batch(mean, NUM_DRAWS), as_batch(logvar, NUM_DRAWS))
  thr = z_threshold(2 * int(np.prod(LATENT)))
  assert np.max(np.abs(z_scores(z0, mean))) < thr
  rel = np.var(np.asarray(z0), 0, ddof=1) / np.exp(logvar) - 1
  assert np.max(np.abs(rel)) < thr * np.sqrt(2 / (NUM_DRAWS - 1))


def test_noise_and_score_parameterisations():
  """eps = -sigma s; an eps-space squared error is the sigma^2-weighted score error (MATH.md section 2)."""
  rng = np.random.default_rng(9)
  s1, s2 = rng.standard_normal((2, 5) + LATENT)
  sigma = rng.uniform(0.01, 1, (5, 1, 1, 1))
  np.testing.assert_allclose(T.eps_to_score(T.score_to_eps(s1, sigma), sigma), s1, rtol=1e-12)
  np.testing.assert_allclose(np.sum((T.score_to_eps(s1, sigma) - T.score_to_eps(s2, sigma)) ** 2, (1, 2, 3)),
                             sigma.ravel() ** 2 * np.sum((s1 - s2) ** 2, (1, 2, 3)), rtol=1e-12)
  z0, eps = rng.standard_normal((2, 5) + LATENT)
  alpha = np.sqrt(1 - sigma**2)
  b = T.tweedie_score(z0, T.diffuse(z0, eps, alpha, sigma), alpha, sigma)
  np.testing.assert_allclose(T.score_to_eps(b, sigma), eps, rtol=1e-9, atol=1e-12)


# --- transformations, float32, errors --------------------------------------------------------------
def _inputs(rng, batch=6):
  mean = rng.standard_normal((batch,) + LATENT)
  logvar = rng.uniform(-4, 0, (batch,) + LATENT)
  z0 = mean + np.exp(logvar / 2) * rng.standard_normal(mean.shape)
  alpha = rng.uniform(0.05, 0.99, (batch, 1, 1, 1))
  sigma = np.sqrt(1 - alpha**2)
  z_t = alpha * z0 + sigma * rng.standard_normal(mean.shape)
  return z0, z_t, mean, logvar, alpha, sigma


TARGET_FNS = {
    "tweedie": lambda z0, z_t, m, lv, a, s: T.tweedie_score(z0, z_t, a, s),
    "csem": lambda z0, z_t, m, lv, a, s: T.csem_score(z0, m, lv, a),
    "lsi": lambda z0, z_t, m, lv, a, s: T.lsi_score(z_t, m, lv, a, s),
    "oracle_blend": lambda z0, z_t, m, lv, a, s: T.blend(T.csem_score(z0, m, lv, a),
                                                         T.tweedie_score(z0, z_t, a, s), T.oracle_gate(lv, a, s)),
    "field": lambda z0, z_t, m, lv, a, s: T.gaussian_field_score(z_t, m, lv, jnp.zeros(m.shape[0]), a, s),
}


class TestTransforms(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_jit_matches_closed_forms(self):
    z0, z_t, m, lv, a, s = _inputs(np.random.default_rng(10))
    v = np.exp(lv)
    expected = {"tweedie": -(z_t - a * z0) / s**2, "csem": -(z0 - m) / (a * v),
                "lsi": -(z_t - a * m) / (a**2 * v + s**2)}
    expected["oracle_blend"] = expected["lsi"]
    for name, fn in TARGET_FNS.items():
      out = self.variant(fn)(z0, z_t, m, lv, a, s)
      if name in expected:
        np.testing.assert_allclose(out, expected[name], rtol=1e-10, err_msg=name)
      assert np.all(np.isfinite(out)), name

  def test_vmap_over_examples_matches_the_batch(self):
    args = _inputs(np.random.default_rng(11))
    for name, fn in TARGET_FNS.items():
      if name == "field":
        continue  # the field score is batched by design
      np.testing.assert_allclose(jax.vmap(fn)(*args), fn(*args), rtol=1e-12, err_msg=name)

  def test_gradients_match_finite_differences(self):
    z0, z_t, m, lv, a, s = _inputs(np.random.default_rng(12), batch=2)
    check_grads(lambda z_t, m, lv: T.lsi_score(z_t, m, lv, a, s), (z_t, m, lv), order=2, modes=("rev",))
    check_grads(lambda z0, m, lv: T.csem_score(z0, m, lv, a), (z0, m, lv), order=2, modes=("rev",))
    check_grads(lambda lv: T.oracle_gate(lv, a, s), (lv,), order=1, modes=("rev", "fwd"))
    check_grads(lambda z: T.gaussian_field_score(z, m, lv, jnp.zeros(2), a, s), (z_t,), order=1, modes=("rev",))


@pytest.mark.parametrize("name", list(SCHEDULES) + ["linear"])
def test_float32_targets_are_finite_over_the_whole_time_range(name):
  """At both ends of the range, with posterior variances down to a floor of exp(-10) (errata 7)."""
  schedule = schedules.linear() if name == "linear" else SCHEDULES[name]
  rng = np.random.default_rng(13)
  with jax.enable_x64(False):
    t = np.asarray(schedules.time_grid(schedule, 63), np.float32).reshape(-1, 1, 1, 1)
    z0, _, m, lv, _, _ = (x.astype(np.float32) for x in _inputs(rng, batch=64))
    lv = T.floor_logvar(lv - 6.0, -10.0)
    alpha, sigma = schedule.alpha(t), schedule.sigma(t)
    z_t = T.diffuse(z0, rng.standard_normal(z0.shape).astype(np.float32), alpha, sigma)
    for fn_name, fn in TARGET_FNS.items():
      out = fn(z0, z_t, m, lv, alpha, sigma)
      assert out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out))), fn_name


def test_invalid_inputs_are_clear_errors():
  z0, z_t, m, lv, a, s = _inputs(np.random.default_rng(14))
  with pytest.raises(ValueError, match="shape mismatch"):
    T.lsi_score(z_t, m[:3], lv, a, s)
  with pytest.raises(ValueError, match="alpha of shape"):
    T.tweedie_score(z0, z_t, np.ones(6), s)  # (6,) broadcasts along channels, not examples
  bad = lv.copy()
  bad[0, 0, 0, 0] = np.nan
  with pytest.raises(ValueError, match="logvar has 1 non-finite"):
    T.csem_score(z0, m, bad, a)
  with pytest.raises(ValueError, match="logvar has 1 non-finite"):
    T.lsi_score(z_t, m, np.where(bad == bad, lv, np.inf), a, s)
  with pytest.raises(ValueError, match="sigma must be > 0"):
    T.tweedie_score(z0, z_t, a, 0.0)
  with pytest.raises(ValueError, match="means must have shape"):
    T.gaussian_field_score(z_t, m[:, :1], lv[:, :1], np.zeros(6), a, s)
  with pytest.raises(ValueError, match="log_weights must have shape"):
    T.gaussian_field_score(z_t, m, lv, np.zeros(5), a, s)
  # Under jit only shapes are known: the shape error is still raised at trace time.
  with pytest.raises(ValueError, match="shape mismatch"):
    jax.jit(T.lsi_score)(z_t, m[:3], lv, a, s)


@pytest.mark.parametrize("fn", [T.diffused_variance, T.conditional_target_variances])
def test_variances_check_concrete_inputs_and_still_trace(fn):
  """Both passed NaN logvar (and NaN or zero coefficients) through to NaN output; traced inputs,
  which have no values to check, must still work under jit and grad."""
  _, _, _, lv, a, s = _inputs(np.random.default_rng(15))
  bad = lv.copy()
  bad[1, 0, 0, 0] = np.nan
  with pytest.raises(ValueError, match="logvar has 1 non-finite"):
    fn(bad, a, s)
  with pytest.raises(ValueError, match="alpha has 1 non-finite"):
    fn(lv, np.nan, s)
  with pytest.raises(ValueError, match="sigma must be > 0"):
    fn(lv, a, 0.0)
  expected = fn(lv, a, s)
  chex.assert_trees_all_close(jax.jit(fn)(lv, a, s), expected, rtol=1e-6)
  grad = jax.grad(lambda x: jnp.sum(jax.tree.leaves(fn(x, a, s))[0]))(jnp.asarray(lv))
  assert bool(jnp.all(jnp.isfinite(grad)))


def test_sample_gaussian_field_needs_a_positive_integer_count():
  means, logvars, log_weights = random_field(16, 3, (2,))
  with pytest.raises(ValueError, match="num_samples must be an integer >= 1, got 2.5"):
    T.sample_gaussian_field(jax.random.PRNGKey(0), means, logvars, log_weights, 2.5)
