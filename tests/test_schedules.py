"""Schedule identities (MATH.md section 1) in float64, float32 robustness, the discrete table, the grid."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cgdiff import schedules

SCHEDULES = {"ou": schedules.ou(), "cosine": schedules.cosine(), "linear": schedules.linear()}
# float64 identities hold to a few ulp (2.2e-16) times the condition of the expressions; 1e-10 leaves
# a wide margin for that and still fails at any formula error (which shows up at 1e-3 or more).
RTOL64 = 1e-10


def dense_times(s, n=401, dtype=np.float64):
  # Geometric near t_min, linear up to t_max: covers both ends of the range.
  t = np.concatenate([np.geomspace(s.t_min, s.t_max, n // 2), np.linspace(s.t_min, s.t_max, n - n // 2)])
  return np.sort(t).astype(dtype)


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


@pytest.mark.parametrize("name", SCHEDULES)
def test_alpha_squared_plus_sigma_squared_is_one(name):
  s = SCHEDULES[name]
  t = dense_times(s)
  np.testing.assert_allclose(s.alpha(t) ** 2 + s.sigma(t) ** 2, 1.0, rtol=RTOL64)


@pytest.mark.parametrize("name", SCHEDULES)
def test_beta_is_minus_twice_dlogalpha_dt(name):
  s = SCHEDULES[name]
  t = dense_times(s)
  by_autodiff = jax.vmap(jax.grad(lambda t: -2.0 * jnp.log(s.alpha(t))))(jnp.asarray(t))
  np.testing.assert_allclose(s.beta(t), by_autodiff, rtol=1e-9)


@pytest.mark.parametrize("name", SCHEDULES)
def test_ou_time_and_log_snr_follow_from_alpha(name):
  s = SCHEDULES[name]
  t = dense_times(s)
  alpha, sigma = s.alpha(t), s.sigma(t)
  np.testing.assert_allclose(s.ou_time(t), -np.log(alpha), rtol=RTOL64, atol=1e-15)
  np.testing.assert_allclose(s.log_snr(t), np.log(alpha**2 / sigma**2), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", SCHEDULES)
def test_time_inverses(name):
  s = SCHEDULES[name]
  t = dense_times(s)
  np.testing.assert_allclose(s.time_from_ou(s.ou_time(t)), t, rtol=1e-9)
  np.testing.assert_allclose(s.time_from_log_snr(s.log_snr(t)), t, rtol=1e-9)


def test_cosine_is_nichol_dhariwal():
  c = 0.008
  s = schedules.cosine(c=c)
  t = dense_times(s)
  f = lambda tau: np.cos(np.pi / 2 * (tau + c) / (1 + c)) ** 2
  np.testing.assert_allclose(s.alpha(t) ** 2, f(t) / f(0.0), rtol=1e-9)
  np.testing.assert_allclose(s.beta(t), np.pi / (1 + c) * np.tan(np.pi / 2 * (t + c) / (1 + c)), rtol=1e-12)


def test_ou_and_linear_closed_forms():
  s = schedules.ou()
  t = dense_times(s)
  np.testing.assert_allclose(s.alpha(t), np.exp(-t), rtol=1e-12)
  np.testing.assert_allclose(s.beta(t), 2.0, rtol=0)
  s = schedules.linear(beta_min=0.1, beta_max=20.0)
  t = dense_times(s)
  np.testing.assert_allclose(s.beta(t), 0.1 + t * 19.9, rtol=1e-12)
  np.testing.assert_allclose(s.alpha(t), np.exp(-0.5 * (0.1 * t + 0.5 * 19.9 * t**2)), rtol=1e-12)


@pytest.mark.parametrize("name", SCHEDULES)
def test_float32_is_finite_and_accurate_over_the_valid_range(name):
  s = SCHEDULES[name]
  t32 = dense_times(s, dtype=np.float32)
  with jax.enable_x64(False):
    values = {m: np.asarray(getattr(s, m)(t32)) for m in ("alpha", "sigma", "beta", "ou_time", "log_snr")}
  for method, v in values.items():
    assert v.dtype == np.float32, method
    assert np.all(np.isfinite(v)), method
    # float32 relative accuracy: ~1e-7 per op, a few tens of ops; 1e-5 relative to float64.
    np.testing.assert_allclose(v, getattr(s, method)(t32.astype(np.float64)), rtol=2e-5, atol=1e-6,
                               err_msg=method)
  assert np.all(values["sigma"] > 0) and np.all(values["alpha"] > 0)


class TestTransforms(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_jit_matches_eager(self):
    for s in SCHEDULES.values():
      t = jnp.asarray(dense_times(s, n=17))
      fn = self.variant(lambda t, s=s: (s.alpha(t), s.sigma(t), s.beta(t), s.log_snr(t)))
      chex.assert_trees_all_close(fn(t), (s.alpha(t), s.sigma(t), s.beta(t), s.log_snr(t)), rtol=1e-12)

  def test_vmap_and_grad(self):
    for s in SCHEDULES.values():
      t = jnp.asarray(dense_times(s, n=17))
      chex.assert_trees_all_close(jax.vmap(s.sigma)(t), s.sigma(t), rtol=1e-12)
      dsigma = jax.vmap(jax.grad(s.sigma))(t)
      # d sigma / dt = alpha^2 beta / (2 sigma), from sigma^2 = 1 - alpha^2 and d alpha/dt = -beta alpha / 2.
      np.testing.assert_allclose(dsigma, s.alpha(t) ** 2 * s.beta(t) / (2 * s.sigma(t)), rtol=1e-9)

  def test_schedule_is_a_static_jit_argument(self):
    f = jax.jit(lambda s, t: s.alpha(t), static_argnums=0)
    np.testing.assert_allclose(f(schedules.cosine(), 0.5), schedules.cosine().alpha(0.5))


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.0, float("nan")])
def test_time_outside_range_is_an_error(bad):
  s = schedules.cosine()
  with pytest.raises(ValueError, match="t must lie in|non-finite"):
    s.alpha(np.array([0.5, bad]))


def test_invalid_schedules_are_errors():
  with pytest.raises(ValueError, match="t_min < t_max"):
    schedules.cosine(t_min=0.5, t_max=0.4)
  with pytest.raises(ValueError, match="t_min < t_max"):
    schedules.ou(t_min=0.0)


@pytest.mark.parametrize("make, match", [
    # beta(1) is infinite: t_max = 1 used to be accepted and sampled NaN (MATH.md section 1).
    (lambda: schedules.cosine(t_max=1.0), "needs t_max < 1"),
    (lambda: schedules.cosine(t_max=1.5), "needs t_max < 1"),
    # c = -1 divided by zero; -1/2 < c < 0 gave abar > 1 near t = 0, so sigma was NaN there.
    (lambda: schedules.cosine(c=-1.0), "offset c must be >= 0"),
    (lambda: schedules.cosine(c=-0.2), "offset c must be >= 0"),
    (lambda: schedules.cosine(c=float("nan")), "c must be a finite number"),
    (lambda: schedules.cosine_table(c=-1.0), "offset c must be >= 0"),
    (lambda: schedules.cosine_table(max_beta=1.0), r"max_beta must lie in \(0, 1\)"),
    (lambda: schedules.cosine_table(2.5), "num_steps must be an integer >= 2, got 2.5"),
    (lambda: schedules.linear(beta_min=-1.0), "0 <= beta_min <= beta_max"),
    (lambda: schedules.linear(beta_min=5.0, beta_max=1.0), "0 <= beta_min <= beta_max"),
    (lambda: schedules.linear(beta_min=0.0, beta_max=0.0), "beta_max > 0"),
    (lambda: schedules.ou(t_max=float("inf")), "t_max must be a finite number"),
    (lambda: schedules.linear(t_min=float("nan")), "t_min must be a finite number"),
    (lambda: schedules.cosine(t_min="0.001"), "t_min must be a finite number"),
])
def test_parameters_that_would_give_nan_are_errors_at_construction(make, match):
  with pytest.raises(ValueError, match=match):
    make()


def _cosine_abar(c, t):
  """001's abar(t) = f(t)/f(0), f = cos^2(pi/2 (t + c)/(1 + c)), straight from the formula."""
  f = lambda tau: np.cos(np.pi / 2 * (tau + c) / (1 + c)) ** 2
  return f(t) / f(0.0), f(0.0)


@pytest.mark.parametrize("c", [-0.2, -0.45, -0.5, -0.6, -1.2, -1.5, -1.9])
def test_negative_cosine_offsets_are_no_vp_schedule(c):
  """The derivation behind check_cosine_offset, on 001's formula itself: for -2 < c < 0 (c != -1,
  which divides by zero), abar is no VP schedule on [0, 1): f(0) = 0, or abar exceeds 1 (sigma^2 < 0),
  or abar rises again after falling (u(t) has no inverse)."""
  t = np.linspace(0.0, 0.999, 10_001)
  abar, f0 = _cosine_abar(c, t)
  assert f0 < 1e-12 or np.max(abar) > 1.0 + 1e-6 or np.any(np.diff(abar) > 1e-12)


@pytest.mark.parametrize("c", [0.0, 0.008, 1.0])
def test_non_negative_cosine_offsets_are_vp_schedules_and_c_below_minus_two_only_mirrors_them(c):
  t = np.linspace(0.0, 0.999, 10_001)
  abar, _ = _cosine_abar(c, t)
  assert abar[0] == 1.0 and np.all(abar > 0) and np.all(np.diff(abar) <= 0)
  # cos^2 is symmetric about pi/2: c' = -2 - c <= -2 gives the same abar, a second spelling of c.
  np.testing.assert_allclose(_cosine_abar(-2.0 - c, t)[0], abar, atol=1e-12)


def test_boundary_parameters_are_accepted_and_finite():
  """c = 0 (the plain cosine), beta_min = 0 and t_max just below 1 are valid: finite everywhere."""
  for s in (schedules.cosine(c=0.0), schedules.linear(beta_min=0.0), schedules.cosine(t_max=0.9999)):
    t = dense_times(s)
    for method in ("alpha", "sigma", "beta", "log_snr"):
      assert np.all(np.isfinite(np.asarray(getattr(s, method)(t)))), (s, method)


def test_discrete_table_is_the_continuous_schedule_at_step_plus_one_over_T():
  """MATH.md errata 6: alphas_cumprod[i] = abar((i + 1)/T), not abar((i + 1)/(T + 1))."""
  T = 1000
  table = schedules.cosine_table(T)
  s = schedules.cosine(t_max=(T - 1) / T)  # a range that reaches the last unclipped step
  i = np.arange(T - 1)
  abar = s.alpha(table.time(i)) ** 2
  # cumprod of T float64 factors: relative rounding <= T * 2.2e-16.
  np.testing.assert_allclose(table.alphas_cumprod[:-1], abar, rtol=1e-12)
  # The last beta is clipped at 0.999 (abar(1) = 0), as in 001 section 5.4.
  assert table.betas[-1] == pytest.approx(0.999)
  # 001 section 2.3's (i + 1)/(T + 1) disagrees with its own code by far more than rounding.
  abar_doc = s.alpha((i + 1) / (T + 1)) ** 2
  assert np.max(np.abs(table.alphas_cumprod[:-1] / abar_doc - 1)) > 1e-2


class TestTimeGrid:

  @pytest.mark.parametrize("name", SCHEDULES)
  def test_grid_is_decreasing_pinned_and_uniform_in_log_snr(self, name):
    s = SCHEDULES[name]
    grid = np.asarray(schedules.time_grid(s, 20))
    assert grid.shape == (21,)
    assert grid[0] == s.t_max and grid[-1] == s.t_min
    assert np.all(np.diff(grid) < 0)
    np.testing.assert_allclose(np.diff(np.asarray(s.log_snr(grid))),
                               (s.log_snr(s.t_min) - s.log_snr(s.t_max)) / 20, rtol=1e-8)

  @pytest.mark.parametrize("name", SCHEDULES)
  @pytest.mark.parametrize("num_steps", [10, 20, 50, 100, 1000])
  def test_default_grid_keeps_every_explicit_step_stable(self, name, num_steps):
    """beta(t_k) |dt_k| < 4 keeps |1 - beta |dt| / 2| <= 1 (see schedules.time_grid), and it obeys the
    bound 2 (exp(h/2) - 1) in the log-SNR step h."""
    s = SCHEDULES[name]
    grid = schedules.time_grid(s, num_steps)
    beta_dt = s.beta(grid[:-1]) * (grid[:-1] - grid[1:])
    h = float(s.log_snr(s.t_min) - s.log_snr(s.t_max)) / num_steps
    assert float(beta_dt.max()) < 4.0
    assert float(beta_dt.max()) <= 2 * math.expm1(h / 2) * (1 + 1e-9)

  def test_uniform_grid_is_unstable_for_the_cosine_schedule(self):
    """The failure mode the default grid avoids: a grid uniform in t from t_max = 0.995."""
    s = schedules.cosine()
    grid = schedules.time_grid(s, 50, spacing="uniform")
    assert float(jnp.max(s.beta(grid[:-1]) * (grid[:-1] - grid[1:]))) > 4.0

  def test_bad_arguments_are_errors(self):
    s = schedules.cosine()
    with pytest.raises(ValueError, match="t_max must lie in"):
      schedules.time_grid(s, 10, t_max=1.0)
    with pytest.raises(ValueError, match="num_steps"):
      schedules.time_grid(s, 0)
    with pytest.raises(ValueError, match="t_min < t_max"):
      schedules.time_grid(s, 10, t_max=0.1, t_min=0.2)
    with pytest.raises(ValueError, match="spacing"):
      schedules.time_grid(s, 10, spacing="karras")

  @pytest.mark.parametrize("num_steps", [2.5, 10.0, -3, True, "10"])
  def test_num_steps_must_be_a_positive_integer(self, num_steps):
    with pytest.raises(ValueError, match="num_steps must be an integer >= 1"):
      schedules.time_grid(schedules.cosine(), num_steps)
