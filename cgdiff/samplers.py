"""Reverse-time samplers for the VP-SDE and its probability-flow ODE (MATH.md section 5).

    z = sample(score_fn, schedule, key, (B, 8, 8, 4), method="heun_pc", num_steps=50)
    nfe("heun_pc", 50)  # 100 network evaluations

`score_fn(z, t)` takes z [B, ...] and t [B] and returns the score [B, ...] (for a noise network,
`score_from_eps(net.apply, params, schedule)`). Each method is one `lax.scan` over a time grid that is
uniform in log-SNR by default (`schedules.time_grid`, which says why). Wrap the call in `jax.jit`
(with the network parameters as an argument of the jitted function) to compile it once.

Methods (f(z, t) = -1/2 beta z - beta s is the reverse drift, g = sqrt(beta), dt < 0):
  euler_maruyama  z <- z + f dt + g sqrt(|dt|) xi                                      1 NFE / step
  heun_pc         predictor and Heun corrector sharing one Brownian increment         2 NFE / step
  heun_pc_seed    001's sketch: fresh noise in the corrector (for comparison only)    2 NFE / step
  euler_ode, heun_ode, rk4   the probability-flow ODE dz/dt = -1/2 beta (z + s)       1, 2, 4 NFE / step
  ddim            DDIM (eta = 0) on the continuous grid: z' = alpha' z0_hat + sigma' eps_hat      1 NFE / step
Discrete-table samplers (`sample_discrete`): 001's "ddim" (eta = 0) and ancestral "ddpm" on the table of
section 5.4, 1 NFE / step.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Literal

import jax
import jax.numpy as jnp
import numpy as np

from cgdiff import _checks
from cgdiff import schedules as schedules_lib
from cgdiff import targets

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]
Step = Callable[[ScoreFn, schedules_lib.Schedule, Array, Array, Array, Array], Array]


@dataclasses.dataclass(frozen=True)
class Method:
  """A registered sampler: `step(score_fn, schedule, z, t, t_next, key) -> z_next`."""

  name: str
  step: Step
  evals_per_step: int
  stochastic: bool


METHODS: dict[str, Method] = {}


def register(name: str, evals_per_step: int, stochastic: bool) -> Callable[[Step], Step]:
  """Registers a reverse-time step function under `name` (the score_sde pattern)."""

  def wrap(step: Step) -> Step:
    METHODS[name] = Method(name, step, evals_per_step, stochastic)
    return step

  return wrap


def score_from_eps(apply_fn: Callable[..., Array], params, schedule: schedules_lib.Schedule) -> ScoreFn:
  """The score function s(z, t) = -eps_hat(z, t) / sigma(t) of a noise-prediction network (MATH.md
  section 2): apply_fn(params, z [B, ...], t [B]) -> eps_hat [B, ...]."""

  def score_fn(z: Array, t: Array) -> Array:
    sigma = schedule.sigma(t).reshape((-1,) + (1,) * (z.ndim - 1))
    return targets.eps_to_score(apply_fn(params, z, t), sigma)

  return score_fn


def nfe(method: str, num_steps: int, denoise: bool = False) -> int:
  """Number of score evaluations of `sample(..., method=method, num_steps=num_steps)`."""
  return _method(method).evals_per_step * _checks.check_int("num_steps", num_steps) + int(denoise)


def _method(name: str) -> Method:
  if name not in METHODS:
    raise ValueError(f"unknown sampler method {name!r}; expected one of {sorted(METHODS)}.")
  return METHODS[name]


def _score(score_fn: ScoreFn, z: Array, t: Array) -> Array:
  s = score_fn(z, jnp.full(z.shape[:1], t, dtype=z.dtype))
  if jnp.shape(s) != z.shape:
    raise ValueError(f"score_fn returned shape {jnp.shape(s)} for z of shape {z.shape}.")
  return s


def _sde_drift(score_fn, schedule, z, t):
  """f(z, t) = -1/2 beta(t) z - beta(t) s(z, t)."""
  beta = schedule.beta(t)
  return -0.5 * beta * z - beta * _score(score_fn, z, t)


def _ode_drift(score_fn, schedule, z, t):
  """F(z, t) = -1/2 beta(t) (z + s(z, t)), the probability-flow drift."""
  beta = schedule.beta(t)
  return -0.5 * beta * (z + _score(score_fn, z, t))


def _diffusion(schedule, t):
  return jnp.sqrt(schedule.beta(t))


@register("euler_maruyama", evals_per_step=1, stochastic=True)
def euler_maruyama_step(score_fn, schedule, z, t, t_next, key):
  dt = t_next - t
  dw = jnp.sqrt(-dt) * jax.random.normal(key, z.shape, z.dtype)
  return z + _sde_drift(score_fn, schedule, z, t) * dt + _diffusion(schedule, t) * dw


@register("heun_pc", evals_per_step=2, stochastic=True)
def heun_pc_step(score_fn, schedule, z, t, t_next, key):
  """001 section 5.5 corrected (MATH.md errata 2, 3): continuous beta, one increment dW for both stages."""
  dt = t_next - t
  dw = jnp.sqrt(-dt) * jax.random.normal(key, z.shape, z.dtype)
  g, g_next = _diffusion(schedule, t), _diffusion(schedule, t_next)
  f = _sde_drift(score_fn, schedule, z, t)
  z_pred = z + f * dt + g * dw
  f_pred = _sde_drift(score_fn, schedule, z_pred, t_next)
  return z + 0.5 * dt * (f + f_pred) + 0.5 * (g + g_next) * dw


@register("heun_pc_seed", evals_per_step=2, stochastic=True)
def heun_pc_seed_step(score_fn, schedule, z, t, t_next, key):
  """001 section 5.5 as written, units corrected: the corrector draws fresh noise (errata 3). Comparison only."""
  dt = t_next - t
  key_pred, key_corr = jax.random.split(key)
  f = _sde_drift(score_fn, schedule, z, t)
  noise = lambda k, tau: _diffusion(schedule, tau) * jnp.sqrt(-dt) * jax.random.normal(k, z.shape, z.dtype)
  z_pred = z + f * dt + noise(key_pred, t)
  f_pred = _sde_drift(score_fn, schedule, z_pred, t_next)
  return z + 0.5 * dt * (f + f_pred) + noise(key_corr, t_next)


@register("euler_ode", evals_per_step=1, stochastic=False)
def euler_ode_step(score_fn, schedule, z, t, t_next, key):
  del key
  return z + (t_next - t) * _ode_drift(score_fn, schedule, z, t)


@register("heun_ode", evals_per_step=2, stochastic=False)
def heun_ode_step(score_fn, schedule, z, t, t_next, key):
  del key
  dt = t_next - t
  k1 = _ode_drift(score_fn, schedule, z, t)
  k2 = _ode_drift(score_fn, schedule, z + dt * k1, t_next)
  return z + 0.5 * dt * (k1 + k2)


@register("rk4", evals_per_step=4, stochastic=False)
def rk4_step(score_fn, schedule, z, t, t_next, key):
  """Classic fourth-order Runge-Kutta on the probability-flow ODE (002's "RK4@10": 10 steps, 40 NFE)."""
  del key
  dt = t_next - t
  t_mid = t + 0.5 * dt
  k1 = _ode_drift(score_fn, schedule, z, t)
  k2 = _ode_drift(score_fn, schedule, z + 0.5 * dt * k1, t_mid)
  k3 = _ode_drift(score_fn, schedule, z + 0.5 * dt * k2, t_mid)
  k4 = _ode_drift(score_fn, schedule, z + dt * k3, t_next)
  return z + dt / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


@register("ddim", evals_per_step=1, stochastic=False)
def ddim_step(score_fn, schedule, z, t, t_next, key):
  """DDIM with eta = 0 on the continuous schedule: the clean prediction z0_hat = (z - sigma eps_hat) / alpha
  is carried to t_next with the same eps_hat, z' = alpha(t_next) z0_hat + sigma(t_next) eps_hat. The
  first-order exponential integrator of the probability-flow ODE (exact where eps_hat is constant along
  the path, e.g. for a point mass)."""
  del key
  sigma = schedule.sigma(t)
  eps = targets.score_to_eps(_score(score_fn, z, t), sigma)
  z0 = (z - sigma * eps) / schedule.alpha(t)
  return schedule.alpha(t_next) * z0 + schedule.sigma(t_next) * eps


def _initial_latent(key: Array, shape, z_init: Array | None) -> Array:
  shape = tuple(shape)
  if z_init is None:
    return jax.random.normal(key, shape)  # the VP prior N(0, I)
  if jnp.shape(z_init) != shape:
    raise ValueError(f"z_init has shape {jnp.shape(z_init)}, expected {shape}.")
  _checks.check_finite("z_init", z_init)
  return jnp.asarray(z_init)


def sample(score_fn: ScoreFn, schedule: schedules_lib.Schedule, key: Array, shape, *,
           method: str, num_steps: int, t_max: float | None = None, t_min: float | None = None,
           z_init: Array | None = None, spacing: schedules_lib.Spacing = "log_snr",
           denoise: bool = False) -> Array:
  """Integrates from t_max (default schedule.t_max) down to t_min (default schedule.t_min).

  Args:
    score_fn: (z [B, ...], t [B]) -> score [B, ...].
    schedule: the forward process.
    key: PRNG key for the prior draw and the SDE noise.
    shape: (B, ...) of the latents.
    method: a name in METHODS.
    num_steps: number of steps; see `nfe` for the number of score evaluations.
    t_max, t_min: the time range, inside [schedule.t_min, schedule.t_max].
    z_init: [B, ...] start instead of a prior draw (to compare ODE methods on the same start).
    spacing: the time grid (`schedules.time_grid`).
    denoise: end with the Tweedie mean (z + sigma^2 s) / alpha at t_min (one more NFE).
  Returns:
    The final latent, [B, ...].
  """
  step = _method(method).step
  grid = schedules_lib.time_grid(schedule, num_steps, t_max=t_max, t_min=t_min, spacing=spacing)
  key_init, key_steps = jax.random.split(key)
  z = _initial_latent(key_init, shape, z_init)
  grid = grid.astype(z.dtype)

  def body(z, xs):
    t, t_next, step_key = xs
    return step(score_fn, schedule, z, t, t_next, step_key), None

  z, _ = jax.lax.scan(body, z, (grid[:-1], grid[1:], jax.random.split(key_steps, num_steps)))
  if denoise:
    t = grid[-1]
    z = (z + schedule.sigma(t) ** 2 * _score(score_fn, z, t)) / schedule.alpha(t)
  return z


# --- the discrete table of 001 section 5.4 ---------------------------------------------------------
def discrete_steps(table: schedules_lib.DiscreteTable, num_steps: int, t_max: float) -> np.ndarray:
  """Decreasing table indices for a strided discrete sampler: about `num_steps` evenly spaced
  indices from the last step with time (i + 1)/T <= t_max down to 0."""
  _checks.check_int("num_steps", num_steps)
  top = int(np.floor(t_max * table.num_steps + 1e-9)) - 1
  if not 0 <= top < table.num_steps:
    raise ValueError(f"t_max={t_max} selects no step of a table with {table.num_steps} steps.")
  if not 1 <= num_steps <= top + 1:
    raise ValueError(f"num_steps must be in [1, {top + 1}], got {num_steps}.")
  return np.unique(np.round(np.linspace(0, top, num_steps)).astype(np.int64))[::-1]


def sample_discrete(score_fn: ScoreFn, table: schedules_lib.DiscreteTable, key: Array, shape, *,
                    method: Literal["ddim", "ddpm"], num_steps: int, t_max: float,
                    z_init: Array | None = None) -> Array:
  """DDIM (eta = 0) or ancestral DDPM over the discrete table, strided to `num_steps` steps.

  Step i evaluates score_fn at time (i + 1)/T and converts it to eps with the table's
  sqrt(1 - alphas_cumprod[i]); the last step jumps to the clean prediction. NFE = number of steps.
  t_max: the largest continuous time the score_fn accepts (e.g. schedule.t_max).
  """
  if method not in ("ddim", "ddpm"):
    raise ValueError(f"unknown discrete method {method!r}; expected 'ddim' or 'ddpm'.")
  steps = discrete_steps(table, num_steps, t_max)
  key_init, key_steps = jax.random.split(key)
  z = _initial_latent(key_init, shape, z_init)
  abar = jnp.asarray(table.alphas_cumprod, z.dtype)
  abar_now = abar[steps]
  abar_prev = jnp.concatenate([abar[steps[1:]], jnp.ones((1,), z.dtype)])
  times = jnp.asarray((steps + 1) / table.num_steps, z.dtype)

  def body(z, xs):
    t, ab, ab_prev, step_key = xs
    sigma = jnp.sqrt(1.0 - ab)
    eps = targets.score_to_eps(_score(score_fn, z, t), sigma)
    z0 = (z - sigma * eps) / jnp.sqrt(ab)
    if method == "ddim":
      return jnp.sqrt(ab_prev) * z0 + jnp.sqrt(1.0 - ab_prev) * eps, None
    # q(z_prev | z, z0) of the strided chain: a_ts = ab/ab_prev, b_ts = 1 - a_ts.
    b_ts = 1.0 - ab / ab_prev
    mean = (jnp.sqrt(ab_prev) * b_ts * z0 + jnp.sqrt(ab / ab_prev) * (1.0 - ab_prev) * z) / (1.0 - ab)
    var = b_ts * (1.0 - ab_prev) / (1.0 - ab)
    return mean + jnp.sqrt(var) * jax.random.normal(step_key, z.shape, z.dtype), None

  keys = jax.random.split(key_steps, len(steps))
  z, _ = jax.lax.scan(body, z, (times, abar_now, abar_prev, keys))
  return z
