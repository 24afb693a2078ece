"""Variance-preserving noise schedules (MATH.md section 1).

Every schedule is the forward process z_t = alpha(t) z_0 + sigma(t) eps with alpha^2 + sigma^2 = 1.
A schedule states only its OU time u(t) = -log alpha(t), the rate du/dt and the inverse t(u);
`Schedule` derives alpha, sigma, beta = 2 du/dt and the log-SNR from those, once, for all of them.

    sched = cosine()
    sched.alpha(t), sched.sigma(t), sched.beta(t), sched.ou_time(t), sched.log_snr(t)

All methods are vectorised, work under jit / vmap / grad and keep the dtype of `t`. Concrete times
outside [t_min, t_max] raise a ValueError (see `cgdiff._checks`), and so does a schedule built with
parameters that make it NaN or infinite somewhere in its range (cosine t_max >= 1 or c < 0, linear
beta_min < 0, t_min <= 0, ...): the error comes at construction, not as NaN samples.

Default time ranges. The cosine beta(t) = pi/(1+c) tan(pi/2 (t+c)/(1+c)) is infinite at t = 1, so its
default t_max is 0.995 (alpha = 7.8e-3: the prior N(0, I) matches the marginal to 6e-5 in variance).
A grid uniform in t that starts there has first steps with beta |dt| = 8 (50 steps) to 40 (10 steps),
where the explicit step z <- z (1 - beta |dt| / 2) + ... amplifies instead of contracting (stable only
for beta |dt| < 4), and the later steps must undo the damage. The samplers therefore step on a grid
uniform in log-SNR (`time_grid`), on which beta(t_k) |dt_k| stays below 4 from 10 steps up for all
three default schedules (tested).
"""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from cgdiff import _checks

Array = jax.Array
Spacing = Literal["log_snr", "uniform"]


@dataclasses.dataclass(frozen=True)
class Schedule(abc.ABC):
  """A VP schedule given by its OU time u(t) = -log alpha(t) on [t_min, t_max].

  Subclasses implement `_ou_time`, `_ou_rate` (du/dt) and `_time_from_ou` (the inverse of u) on
  arrays, without range checks. Frozen dataclasses are hashable, so a schedule can be a static
  argument of `jax.jit`.
  """

  t_min: float
  t_max: float

  def __post_init__(self):
    # t_min > 0: sigma(0) = 0 and the log-SNR is infinite there; subclasses add their own bounds.
    t_min, t_max = _checks.check_number("t_min", self.t_min), _checks.check_number("t_max", self.t_max)
    if not 0.0 < t_min < t_max:
      raise ValueError(f"need 0 < t_min < t_max, got t_min={self.t_min}, t_max={self.t_max}.")

  # --- what each schedule states -------------------------------------------------------------
  @abc.abstractmethod
  def _ou_time(self, t: Array) -> Array:
    """u(t) = -log alpha(t)."""

  @abc.abstractmethod
  def _ou_rate(self, t: Array) -> Array:
    """du/dt, analytic."""

  @abc.abstractmethod
  def _time_from_ou(self, u: Array) -> Array:
    """The inverse of u(t)."""

  # --- derived once, for every schedule (MATH.md section 1) ----------------------------------
  def _time(self, t) -> Array:
    _checks.check_in_range("t", t, self.t_min, self.t_max)
    return jnp.asarray(t, dtype=jnp.result_type(float, t))

  def ou_time(self, t) -> Array:
    """u(t) = -log alpha(t); same shape as t."""
    return self._ou_time(self._time(t))

  def alpha(self, t) -> Array:
    """alpha(t) = exp(-u(t))."""
    return jnp.exp(-self.ou_time(t))

  def sigma(self, t) -> Array:
    """sigma(t) = sqrt(1 - exp(-2u)), via expm1 so that it is accurate at small t."""
    return jnp.sqrt(-jnp.expm1(-2.0 * self.ou_time(t)))

  def beta(self, t) -> Array:
    """beta(t) = -2 d log alpha / dt = 2 du/dt (the VP-SDE noise rate)."""
    return 2.0 * self._ou_rate(self._time(t))

  def log_snr(self, t) -> Array:
    """lambda(t) = log(alpha^2 / sigma^2) = -2u - log(1 - exp(-2u))."""
    u = self.ou_time(t)
    return -2.0 * u - jnp.log(-jnp.expm1(-2.0 * u))

  def time_from_ou(self, u) -> Array:
    """The time t with u(t) = u."""
    _checks.check_finite("u", u)
    if _checks.is_concrete(u) and np.any(np.asarray(u) < 0):
      raise ValueError(f"OU time u must be >= 0, got min {np.min(u):g}.")
    return self._time_from_ou(jnp.asarray(u, dtype=jnp.result_type(float, u)))

  def time_from_log_snr(self, lam) -> Array:
    """The time t with lambda(t) = lam: u = 1/2 log(1 + exp(-lam)) = 1/2 softplus(-lam)."""
    _checks.check_finite("log_snr", lam)
    lam = jnp.asarray(lam, dtype=jnp.result_type(float, lam))
    return self._time_from_ou(0.5 * jax.nn.softplus(-lam))


@dataclasses.dataclass(frozen=True)
class OUSchedule(Schedule):
  """The Ornstein-Uhlenbeck schedule of 000: alpha = e^{-t}, u = t, beta = 2."""

  def _ou_time(self, t):
    return t

  def _ou_rate(self, t):
    return jnp.ones_like(t)

  def _time_from_ou(self, u):
    return u


def check_cosine_offset(c) -> None:
  """Raises ValueError unless the cosine offset c is finite and >= 0.

  abar(t) = cos^2(theta(t)) / cos^2(theta_0), theta(t) = pi/2 (t + c)/(1 + c), theta_0 = theta(0), and
  theta(1) = pi/2 for every c != -1. For c > -1, theta rises to pi/2 and abar <= 1 (alpha <= 1, sigma^2
  >= 0) on the whole range only if theta_0 >= 0, i.e. c >= 0: for -1/2 < c < 0 abar exceeds 1 near
  t = 0 (sigma is NaN there), c = -1/2 makes f(0) = 0 and c = -1 divides by zero. For c < -1, cos^2's
  symmetry about pi/2 makes c the same schedule as c' = -2 - c: no schedule for -2 < c < -1, and a
  second spelling of c' >= 0 for c <= -2, refused too (tests/test_schedules.py checks both cases).
  """
  if _checks.check_number("c", c) < 0.0:
    raise ValueError(f"the cosine offset c must be >= 0 (001 uses 0.008), got c={c}: with c < 0, "
                     "abar(t) = f(t)/f(0) exceeds 1 near t = 0, f(0) = 0 at c = -1/2 and c = -1 divides by zero.")


@dataclasses.dataclass(frozen=True)
class CosineSchedule(Schedule):
  """The cosine VP schedule of Nichol & Dhariwal (001 eq. 4): abar = f(t)/f(0), f = cos^2(theta),
  theta(t) = pi/2 (t + c)/(1 + c); u = -log(cos theta / cos theta_0), beta = pi/(1+c) tan theta.
  """

  c: float = 0.008

  def __post_init__(self):
    super().__post_init__()
    check_cosine_offset(self.c)
    if not self.t_max < 1.0:
      raise ValueError(f"the cosine schedule needs t_max < 1 (default 0.995), got t_max={self.t_max}: beta(t) "
                       "= pi/(1+c) tan(pi/2 (t+c)/(1+c)) is infinite at t = 1 (MATH.md section 1).")

  def _theta_scale(self):
    return 0.5 * math.pi / (1.0 + self.c)

  def _ou_time(self, t):
    # cos(theta0 + d)/cos(theta0) = cos d - tan(theta0) sin d, written through log1p so that u is
    # accurate to float rounding near t = 0 (a plain log of a ratio near 1 loses ~3 digits there).
    d = self._theta_scale() * t
    tan0 = math.tan(self._theta_scale() * self.c)
    return -jnp.log1p(-2.0 * jnp.sin(0.5 * d) ** 2 - tan0 * jnp.sin(d))

  def _ou_rate(self, t):
    return self._theta_scale() * jnp.tan(self._theta_scale() * (t + self.c))

  def _time_from_ou(self, u):
    # cos(theta) = e^{-u} cos(theta0); 1 - cos(theta) = 2 sin^2(theta0/2) - cos(theta0) expm1(-u),
    # then theta = 2 arcsin(sqrt((1 - cos theta)/2)): no arccos of a number near 1.
    theta0 = self._theta_scale() * self.c
    one_minus_cos = 2.0 * math.sin(0.5 * theta0) ** 2 - math.cos(theta0) * jnp.expm1(-u)
    theta = 2.0 * jnp.arcsin(jnp.sqrt(0.5 * one_minus_cos))
    return theta / self._theta_scale() - self.c


@dataclasses.dataclass(frozen=True)
class LinearSchedule(Schedule):
  """The linear VP schedule of score_sde: beta(t) = beta_min + t (beta_max - beta_min),
  u(t) = 1/2 (beta_min t + 1/2 (beta_max - beta_min) t^2).
  """

  beta_min: float = 0.1
  beta_max: float = 20.0

  def __post_init__(self):
    super().__post_init__()
    beta_min, beta_max = (_checks.check_number(name, getattr(self, name)) for name in ("beta_min", "beta_max"))
    # beta(t) is a noise rate: >= 0 over the whole range, and not identically 0 (alpha would stay 1).
    if not (0.0 <= beta_min <= beta_max and beta_max > 0.0):
      raise ValueError(f"the linear schedule needs 0 <= beta_min <= beta_max and beta_max > 0, got "
                       f"beta_min={self.beta_min}, beta_max={self.beta_max}.")

  def _ou_time(self, t):
    return 0.5 * (self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2)

  def _ou_rate(self, t):
    return 0.5 * (self.beta_min + (self.beta_max - self.beta_min) * t)

  def _time_from_ou(self, u):
    # Root of a t^2 + b t - 2u = 0 in the cancellation-free form 4u / (b + sqrt(b^2 + 8 a u)).
    a = 0.5 * (self.beta_max - self.beta_min)
    b = self.beta_min
    return 4.0 * u / (b + jnp.sqrt(b * b + 8.0 * a * u))


def ou(t_min: float = 1e-4, t_max: float = 6.0) -> OUSchedule:
  """000's OU schedule on [t_min, t_max] (alpha(6) = 2.5e-3)."""
  return OUSchedule(t_min=t_min, t_max=t_max)


def cosine(c: float = 0.008, t_min: float = 1e-3, t_max: float = 0.995) -> CosineSchedule:
  """001's cosine schedule on [t_min, t_max]; t_max < 1 because beta(1) is infinite."""
  return CosineSchedule(t_min=t_min, t_max=t_max, c=c)


def linear(beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3,
           t_max: float = 1.0) -> LinearSchedule:
  """score_sde's linear VP schedule on [t_min, t_max]."""
  return LinearSchedule(t_min=t_min, t_max=t_max, beta_min=beta_min, beta_max=beta_max)


def time_grid(schedule: Schedule, num_steps: int, *, t_max: float | None = None,
              t_min: float | None = None, spacing: Spacing = "log_snr") -> Array:
  """Decreasing times t_0 = t_max > ... > t_N = t_min for a reverse-time sampler; shape (N + 1,).

  spacing="log_snr" (default): uniform in lambda = log(alpha^2/sigma^2). Since d lambda/dt = -beta/sigma^2,
  one step of size h in lambda has integral of beta over the step = 2 du <= h sigma^2 <= h, and with
  beta growing towards t_max the left-point value beta(t_k) |dt_k| stays below 2 (exp(h/2) - 1); the
  stiffness of the probability-flow ODE for a Gaussian component of variance v,
  beta/2 * alpha^2 (1 - v)/(alpha^2 v + sigma^2), times |dt| is at most h/2 for every v. The cosine
  schedule's unbounded beta therefore never makes a step unstable.
  spacing="uniform": uniform in t (what 001's sketch does; unstable for the cosine schedule near t = 1).
  """
  _checks.check_int("num_steps", num_steps)
  t_max = schedule.t_max if t_max is None else float(t_max)
  t_min = schedule.t_min if t_min is None else float(t_min)
  _checks.check_in_range("t_max", t_max, schedule.t_min, schedule.t_max)
  _checks.check_in_range("t_min", t_min, schedule.t_min, schedule.t_max)
  if not t_min < t_max:
    raise ValueError(f"need t_min < t_max, got t_min={t_min}, t_max={t_max}.")
  if spacing == "uniform":
    grid = jnp.linspace(t_max, t_min, num_steps + 1)
  elif spacing == "log_snr":
    lam = jnp.linspace(schedule.log_snr(t_max), schedule.log_snr(t_min), num_steps + 1)
    grid = schedule.time_from_log_snr(lam)
  else:
    raise ValueError(f"unknown spacing {spacing!r}; expected 'log_snr' or 'uniform'.")
  # Pin the ends exactly: the inverse map can be off by float rounding.
  return grid.at[0].set(t_max).at[-1].set(t_min)


@dataclasses.dataclass(frozen=True)
class DiscreteTable:
  """001 section 5.4's discrete schedule: betas[i] and alphas_cumprod[i] for steps i = 0..T-1.

  Step i is continuous time tau = (i + 1)/T (MATH.md section 1, errata 6).
  """

  betas: np.ndarray  # [T]
  alphas_cumprod: np.ndarray  # [T]

  @property
  def num_steps(self) -> int:
    return int(self.betas.shape[0])

  def time(self, i) -> Array:
    """Continuous time of discrete step i: (i + 1)/T."""
    return (jnp.asarray(i) + 1.0) / self.num_steps


def cosine_table(num_steps: int = 1000, c: float = 0.008, max_beta: float = 0.999) -> DiscreteTable:
  """The discrete cosine table of 001 section 5.4, in float64 numpy.

  betas_i = 1 - abar((i + 1)/T) / abar(i/T), clipped to [1e-8, max_beta]; alphas_cumprod = cumprod(1 - betas),
  so alphas_cumprod[i] = abar((i + 1)/T) wherever no clip was active (all i < T - 1 for T = 1000).
  """
  _checks.check_int("num_steps", num_steps, minimum=2)
  check_cosine_offset(c)
  # max_beta = 1 would make alphas_cumprod 0 from there on, and the discrete samplers divide by it.
  if not 0.0 < _checks.check_number("max_beta", max_beta) < 1.0:
    raise ValueError(f"max_beta must lie in (0, 1), got {max_beta}.")
  tau = np.arange(num_steps + 1, dtype=np.float64) / num_steps
  f = np.cos((tau + c) / (1.0 + c) * np.pi / 2.0) ** 2
  abar = f / f[0]
  betas = np.clip(1.0 - abar[1:] / abar[:-1], 1e-8, max_beta)
  return DiscreteTable(betas=betas, alphas_cumprod=np.cumprod(1.0 - betas))


SCHEDULES = {"ou": ou, "cosine": cosine, "linear": linear}


def make(name: str, **kwargs) -> Schedule:
  """The schedule called `name` ("ou", "cosine", "linear") with constructor keyword arguments (for configs)."""
  if name not in SCHEDULES:
    raise ValueError(f"unknown schedule {name!r}; expected one of {sorted(SCHEDULES)}.")
  return SCHEDULES[name](**kwargs)
