"""Samplers with the exact score of Gaussian fields (MATH.md section 5)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cgdiff import samplers, schedules
from cgdiff import targets as T
from cgdiff.metrics import sw2
from conftest import random_field, z_threshold


def field_score_fn(schedule, field):
  means, logvars, log_weights = field

  def score_fn(z, t):
    shape = (-1,) + (1,) * (z.ndim - 1)
    return T.gaussian_field_score(z, means, logvars, log_weights, schedule.alpha(t).reshape(shape),
                                  schedule.sigma(t).reshape(shape))

  return score_fn


def test_score_from_eps_is_minus_eps_over_sigma():
  schedule = schedules.cosine()
  z = jax.random.normal(jax.random.PRNGKey(0), (3, 4, 4, 2))
  t = jnp.array([0.01, 0.5, 0.9])
  score = samplers.score_from_eps(lambda params, zz, tt: params * zz, 0.3, schedule)(z, t)
  np.testing.assert_allclose(score, -0.3 * z / schedule.sigma(t)[:, None, None, None], rtol=1e-6)


FIELD_2D = random_field(3, 8, (2,), mean_scale=1.5, logvar_range=(-5.0, -1.0))


# --- the samplers reproduce the field ----------------------------------------------------------------
NUM_SAMPLES = 16_384
NUM_NULL = 30
# Steps at which the discretisation error is below what NUM_SAMPLES samples resolve (measured).
STEPS = {"euler_maruyama": 400, "heun_pc": 100, "heun_pc_seed": 200, "euler_ode": 200, "heun_ode": 50,
         "rk4": 20, "ddim": 200}
DISCRETE_STEPS = {"ddim": 200, "ddpm": 500}  # samplers.sample_discrete on 001's table


@pytest.fixture(scope="module")
def field_reference():
  """Exact samples and the null distribution of SW2^2 between two exact sample sets of the same size."""
  means, logvars, log_weights = FIELD_2D
  bank = sw2.projection_bank(2, 128, seed=0)
  exact = jax.jit(lambda k: T.sample_gaussian_field(k, means, logvars, log_weights, NUM_SAMPLES)[1])
  null = [sw2.sliced_wasserstein2(exact(jax.random.PRNGKey(2 * i)), exact(jax.random.PRNGKey(2 * i + 1)), bank)
          for i in range(NUM_NULL)]
  return exact(jax.random.PRNGKey(10_000)), np.array(null), bank


@pytest.mark.parametrize("method", list(STEPS) + [f"discrete_{m}" for m in DISCRETE_STEPS])
def test_samplers_reproduce_the_field(method, field_reference):
  """Sample mean, covariance and SW2^2 against exact samples of the field.

  Mean and covariance entries: z-scores with the standard error of a difference of two independent
  estimates (covariance entry (i, j) has variance E[(x_i x_j - c_ij)^2] / N), Bonferroni threshold at 1e-4.
  SW2^2: below the null mean + 6 null standard deviations over NUM_NULL exact-vs-exact pairs.
  """
  reference, null, bank = field_reference
  schedule = schedules.cosine()
  score_fn = field_score_fn(schedule, FIELD_2D)
  key = jax.random.PRNGKey(1)
  if method.startswith("discrete_"):
    method = method[len("discrete_"):]
    table = schedules.cosine_table()
    run = lambda k: samplers.sample_discrete(score_fn, table, k, (NUM_SAMPLES, 2), method=method,
                                             num_steps=DISCRETE_STEPS[method], t_max=schedule.t_max)
  else:
    run = lambda k: samplers.sample(score_fn, schedule, k, (NUM_SAMPLES, 2), method=method,
                                    num_steps=STEPS[method])
  z = np.asarray(jax.jit(run)(key), np.float64)
  ref = np.asarray(reference, np.float64)
  assert np.all(np.isfinite(z))
  thr = z_threshold(2 + 3)

  def se_mean(x):
    return x.var(0) / len(x)

  z_mean = (z.mean(0) - ref.mean(0)) / np.sqrt(se_mean(z) + se_mean(ref))
  assert np.max(np.abs(z_mean)) < thr, z_mean

  def cov_terms(x):
    c = x - x.mean(0)
    prods = np.stack([c[:, 0] ** 2, c[:, 1] ** 2, c[:, 0] * c[:, 1]], 1)
    return prods.mean(0), prods.var(0) / len(x)

  (c_z, v_z), (c_r, v_r) = cov_terms(z), cov_terms(ref)
  z_cov = (c_z - c_r) / np.sqrt(v_z + v_r)
  assert np.max(np.abs(z_cov)) < thr, z_cov
  distance = sw2.sliced_wasserstein2(z, ref, bank)
  assert distance < null.mean() + 6 * null.std(), (distance, null.mean(), null.std())


# --- convergence orders of the probability-flow ODE solvers -------------------------------------------
@pytest.mark.parametrize("method, order, steps", [("euler_ode", 1, (256, 512, 1024)),
                                                  ("ddim", 1, (256, 512, 1024)),
                                                  ("heun_ode", 2, (64, 128, 256)),
                                                  ("rk4", 4, (64, 128, 256))])
@pytest.mark.parametrize("schedule_name", ["cosine", "ou"])
def test_ode_convergence_order(method, order, steps, schedule_name):
  """Max error against a 4096-step RK4 solution from the same start, in float64; the slope of log error
  against log step count over the three step counts is the order. These step counts are in the
  asymptotic regime (measured: the per-particle slopes agree to 0.1); neighbouring orders differ by 1,
  so a tolerance of 0.25 identifies the order."""
  schedule = schedules.cosine() if schedule_name == "cosine" else schedules.ou()
  with jax.enable_x64(True):
    field = random_field(0, 6, (2,), logvar_range=(-3.0, -1.0))
    score_fn = field_score_fn(schedule, field)
    z_init = jax.random.normal(jax.random.PRNGKey(0), (64, 2))
    run = jax.jit(lambda z, m, n: samplers.sample(score_fn, schedule, jax.random.PRNGKey(1), z.shape,
                                                  method=m, num_steps=n, z_init=z), static_argnums=(1, 2))
    reference = run(z_init, "rk4", 4096)
    errors = [float(jnp.max(jnp.abs(run(z_init, method, n) - reference))) for n in steps]
  slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
  assert abs(slope - order) < 0.25, (errors, slope)


# --- Heun-PC: one Brownian increment for both stages (MATH.md errata 3) ------------------------------
def test_heun_pc_shared_increment_is_more_accurate_than_fresh_noise():
  """On a one-component field p_t = N(0, alpha^2 v + sigma^2) the final variance is known. The shared
  increment gives a weak second-order method; 001's fresh corrector noise does not. Standard error of
  the relative variance is sqrt(2 / N) = 0.0022; the measured gaps are larger by far."""
  schedule = schedules.cosine()
  v = 0.05
  field = (np.zeros((1, 1)), np.log(np.full((1, 1), v)), np.zeros(1))
  score_fn = field_score_fn(schedule, field)
  n = 400_000
  target = v * float(schedule.alpha(schedule.t_min)) ** 2 + float(schedule.sigma(schedule.t_min)) ** 2
  error = {}
  for method in ("heun_pc", "heun_pc_seed"):
    for steps in (20, 40):
      run = jax.jit(lambda k: samplers.sample(score_fn, schedule, k, (n, 1), method=method, num_steps=steps))
      error[method, steps] = abs(float(jnp.var(run(jax.random.PRNGKey(steps)))) / target - 1)
  for steps in (20, 40):
    assert error["heun_pc", steps] < error["heun_pc_seed", steps] / 3, error
  # Second order: halving the step divides the error by about 4 (by at least 2.5 with the MC noise).
  assert error["heun_pc", 40] < error["heun_pc", 20] / 2.5, error


def test_ddim_is_exact_in_one_step_for_a_point_mass():
  """For data at one point m, eps_hat = (z - alpha m) / sigma is constant along the probability-flow path
  z_t = alpha_t m + sigma_t u, so DDIM's one step from t_max to t_min lands on it (v = 1e-12 stands in
  for 0; float64, so the error is round-off)."""
  schedule = schedules.cosine()
  with jax.enable_x64(True):
    m, logvar = jnp.array([[0.7, -1.2]]), jnp.full((1, 2), np.log(1e-12))

    def score_fn(z, t):
      shape = (-1,) + (1,) * (z.ndim - 1)
      return T.lsi_score(z, jnp.broadcast_to(m, z.shape), jnp.broadcast_to(logvar, z.shape),
                         schedule.alpha(t).reshape(shape), schedule.sigma(t).reshape(shape))

    u = jax.random.normal(jax.random.PRNGKey(0), (16, 2), jnp.float64)
    z_max = schedule.alpha(schedule.t_max) * m + schedule.sigma(schedule.t_max) * u
    z = samplers.sample(score_fn, schedule, jax.random.PRNGKey(1), u.shape, method="ddim", num_steps=1, z_init=z_max)
    exact = schedule.alpha(schedule.t_min) * m + schedule.sigma(schedule.t_min) * u
    np.testing.assert_allclose(z, exact, atol=1e-9)


# --- stability on the default grid -------------------------------------------------------------------
@pytest.mark.parametrize("schedule_name", ["cosine", "ou", "linear"])
def test_every_method_is_stable_at_ten_steps_on_a_stiff_field(schedule_name):
  """Posterior variances down to 1e-4 make the score stiff at small t; on the log-SNR grid every method
  stays bounded from 10 steps (schedules.time_grid gives the bound). Samples stay within the field's
  support give or take a few standard deviations of the prior."""
  schedule = {"cosine": schedules.cosine(), "ou": schedules.ou(), "linear": schedules.linear()}[schedule_name]
  field = random_field(5, 4, (2,), logvar_range=(-9.2, -6.0))
  score_fn = field_score_fn(schedule, field)
  bound = np.abs(field[0]).max() + 10.0
  for method in samplers.METHODS:
    z = samplers.sample(score_fn, schedule, jax.random.PRNGKey(0), (512, 2), method=method, num_steps=10)
    assert bool(jnp.all(jnp.isfinite(z))) and float(jnp.max(jnp.abs(z))) < bound, method


# --- bookkeeping: NFE, z_init, determinism, transformations, errors -------------------------------------
@pytest.mark.parametrize("method", list(samplers.METHODS))
@pytest.mark.parametrize("denoise", [False, True])
def test_nfe_counts_the_score_calls(method, denoise):
  calls = []

  def counting_score(z, t):
    jax.debug.callback(lambda: calls.append(1))
    return -z

  samplers.sample(counting_score, schedules.cosine(), jax.random.PRNGKey(0), (4, 2), method=method,
                  num_steps=7, denoise=denoise)
  jax.effects_barrier()
  assert len(calls) == samplers.nfe(method, 7, denoise=denoise)
  assert samplers.nfe("rk4", 10) == 40  # 002's RK4@10


def test_discrete_samplers_call_the_score_once_per_step():
  calls = []

  def counting_score(z, t):
    jax.debug.callback(lambda: calls.append(1))
    return -z

  table = schedules.cosine_table()
  for method in ("ddim", "ddpm"):
    calls.clear()
    samplers.sample_discrete(counting_score, table, jax.random.PRNGKey(0), (4, 2), method=method,
                             num_steps=25, t_max=0.995)
    jax.effects_barrier()
    assert len(calls) == len(samplers.discrete_steps(table, 25, 0.995)) == 25


def test_discrete_steps_respect_t_max():
  table = schedules.cosine_table(1000)
  steps = samplers.discrete_steps(table, 50, 0.995)
  assert steps[0] == 994 and steps[-1] == 0 and np.all(np.diff(steps) < 0)
  assert (steps[0] + 1) / 1000 <= 0.995 < (steps[0] + 2) / 1000


def test_ode_methods_are_deterministic_given_z_init():
  schedule = schedules.cosine()
  score_fn = field_score_fn(schedule, FIELD_2D)
  z_init = jax.random.normal(jax.random.PRNGKey(3), (8, 2))
  for method in ("euler_ode", "heun_ode", "rk4"):
    a = samplers.sample(score_fn, schedule, jax.random.PRNGKey(0), (8, 2), method=method, num_steps=5, z_init=z_init)
    b = samplers.sample(score_fn, schedule, jax.random.PRNGKey(1), (8, 2), method=method, num_steps=5, z_init=z_init)
    np.testing.assert_array_equal(a, b)


def test_denoise_is_the_tweedie_mean_at_t_min():
  schedule = schedules.cosine()
  score_fn = field_score_fn(schedule, FIELD_2D)
  key = jax.random.PRNGKey(4)
  z = samplers.sample(score_fn, schedule, key, (8, 2), method="rk4", num_steps=5)
  z0 = samplers.sample(score_fn, schedule, key, (8, 2), method="rk4", num_steps=5, denoise=True)
  alpha, sigma = schedule.alpha(schedule.t_min), schedule.sigma(schedule.t_min)
  t = jnp.full((8,), schedule.t_min)
  np.testing.assert_allclose(z0, (z + sigma**2 * score_fn(z, t)) / alpha, rtol=1e-5)


class TestTransforms(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_jit_matches_eager(self):
    """Same key, same result, up to float32 rounding that differs between the fused (jit) and unfused
    programs (1e-7) amplified by the stiff field over the steps (Lipschitz constant up to 1/min v = e^5)."""
    schedule = schedules.cosine()
    score_fn = field_score_fn(schedule, FIELD_2D)
    for method in samplers.METHODS:
      fn = self.variant(lambda key: samplers.sample(score_fn, schedule, key, (16, 2), method=method, num_steps=6))
      np.testing.assert_allclose(fn(jax.random.PRNGKey(0)),
                                 samplers.sample(score_fn, schedule, jax.random.PRNGKey(0), (16, 2),
                                                 method=method, num_steps=6), rtol=1e-4, atol=1e-4)

  def test_vmap_over_keys_and_grad_through_the_sampler(self):
    schedule = schedules.cosine()
    score_fn = field_score_fn(schedule, FIELD_2D)
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    out = jax.vmap(lambda k: samplers.sample(score_fn, schedule, k, (4, 2), method="heun_pc", num_steps=5))(keys)
    chex.assert_shape(out, (3, 4, 2))
    # Gradient of a sample with respect to its start (e.g. for adjoint studies) is finite.
    grad = jax.grad(lambda z: jnp.sum(samplers.sample(score_fn, schedule, keys[0], (4, 2), method="rk4",
                                                      num_steps=5, z_init=z)))(jnp.ones((4, 2)))
    assert bool(jnp.all(jnp.isfinite(grad)))

  def test_nhwc_latents(self):
    schedule = schedules.cosine()
    means, logvars, log_weights = random_field(6, 3, (4, 4, 2))
    score_fn = field_score_fn(schedule, (means, logvars, log_weights))
    z = samplers.sample(score_fn, schedule, jax.random.PRNGKey(0), (5, 4, 4, 2), method="heun_pc", num_steps=10)
    chex.assert_shape(z, (5, 4, 4, 2))
    chex.assert_tree_all_finite(z)


def test_invalid_arguments_are_clear_errors():
  schedule = schedules.cosine()
  score_fn = field_score_fn(schedule, FIELD_2D)
  key = jax.random.PRNGKey(0)
  with pytest.raises(ValueError, match="unknown sampler method 'heun'"):
    samplers.sample(score_fn, schedule, key, (4, 2), method="heun", num_steps=5)
  with pytest.raises(ValueError, match=r"t_max must lie in \[0.001, 0.995\]"):
    samplers.sample(score_fn, schedule, key, (4, 2), method="rk4", num_steps=5, t_max=1.0)
  with pytest.raises(ValueError, match="z_init has shape"):
    samplers.sample(score_fn, schedule, key, (4, 2), method="rk4", num_steps=5, z_init=jnp.zeros((3, 2)))
  with pytest.raises(ValueError, match="z_init has 1 non-finite"):
    samplers.sample(score_fn, schedule, key, (1, 2), method="rk4", num_steps=5, z_init=jnp.array([[0.0, jnp.nan]]))
  with pytest.raises(ValueError, match="score_fn returned shape"):
    samplers.sample(lambda z, t: z[:, :1], schedule, key, (4, 2), method="rk4", num_steps=5)
  with pytest.raises(ValueError, match="num_steps"):
    samplers.sample(score_fn, schedule, key, (4, 2), method="rk4", num_steps=0)
  with pytest.raises(ValueError, match="unknown discrete method"):
    samplers.sample_discrete(score_fn, schedules.cosine_table(), key, (4, 2), method="plms", num_steps=5, t_max=0.995)


@pytest.mark.parametrize("num_steps", [0, -3, 2.5, 10.0, True, "10"])
def test_step_counts_must_be_positive_integers(num_steps):
  """nfe("rk4", 0) was 0 and nfe("rk4", -3) was -12; num_steps=2.5 failed with a bare TypeError."""
  score_fn = field_score_fn(schedules.cosine(), FIELD_2D)
  key, match = jax.random.PRNGKey(0), "num_steps must be an integer >= 1, got "
  with pytest.raises(ValueError, match=match):
    samplers.nfe("rk4", num_steps)
  with pytest.raises(ValueError, match=match):
    samplers.sample(score_fn, schedules.cosine(), key, (4, 2), method="euler_ode", num_steps=num_steps)
  with pytest.raises(ValueError, match=match):
    samplers.sample_discrete(score_fn, schedules.cosine_table(), key, (4, 2), method="ddim",
                             num_steps=num_steps, t_max=0.995)


def test_numpy_integer_step_counts_are_accepted():
  assert samplers.nfe("rk4", np.int64(10)) == 40
  z = samplers.sample(lambda z, t: -z, schedules.cosine(), jax.random.PRNGKey(0), (4, 2), method="rk4",
                      num_steps=np.int32(3))
  chex.assert_shape(z, (4, 2))
