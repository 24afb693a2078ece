"""Diagnostics of the score targets on a Gaussian field with an exact posterior (MATH.md identities 2-4).

`target_variance_profile` measures, at each time, the conditional variance of each per-particle target
given z_t (the quantity the critic-gate and LSI claims are about), by exact posterior sampling.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cgdiff import schedules as schedules_lib
from cgdiff import targets

Array = jax.Array
TARGET_NAMES = ("tweedie", "csem", "lsi")


def target_variance_profile(key: Array, means: Array, logvars: Array, log_weights: Array,
                            schedule: schedules_lib.Schedule, times: Array, *, num_points: int = 32,
                            num_draws: int = 1024) -> dict[str, Array]:
  """Mean over z_t ~ p_t and over latent elements of Var(target | z_t), for each time; each [T].

  For each time, `num_points` z_t are drawn from the diffused field and, at each, `num_draws` exact
  draws of (i, z0) given z_t (targets.sample_gaussian_field_posterior). Also returns the mean oracle
  gate E[g*] under the same draws ("oracle_gate"). LSI's variance here is its mixture variance
  Var(l | z_t), the irreducible part (002 eq. 14).
  """
  means, logvars, log_weights = map(jnp.asarray, (means, logvars, log_weights))

  def at_point(t, key):
    alpha, sigma = schedule.alpha(t), schedule.sigma(t)
    k_field, k_eps, k_post = jax.random.split(key, 3)
    _, z0 = targets.sample_gaussian_field(k_field, means, logvars, log_weights, 1)
    z_t = targets.diffuse(z0, jax.random.normal(k_eps, z0.shape), alpha, sigma)
    z_rep = jnp.broadcast_to(z_t, (num_draws,) + z_t.shape[1:])
    idx, z0s = targets.sample_gaussian_field_posterior(k_post, z_rep, means, logvars, log_weights, alpha, sigma)
    mean, logvar = means[idx], logvars[idx]
    values = {
        "tweedie": targets.tweedie_score(z0s, z_rep, alpha, sigma),
        "csem": targets.csem_score(z0s, mean, logvar, alpha),
        "lsi": targets.lsi_score(z_rep, mean, logvar, alpha, sigma),
    }
    out = {name: jnp.mean(jnp.var(v, axis=0)) for name, v in values.items()}
    out["oracle_gate"] = jnp.mean(targets.oracle_gate(logvar, alpha, sigma))
    return out

  def at_time(t, key):
    per_point = jax.lax.map(lambda k: at_point(t, k), jax.random.split(key, num_points))
    return jax.tree.map(jnp.mean, per_point)

  times = jnp.asarray(times)
  return jax.lax.map(lambda args: at_time(*args), (times, jax.random.split(key, times.shape[0])))
