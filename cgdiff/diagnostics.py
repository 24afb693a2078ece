"""Diagnostics of the score targets on a Gaussian field with an exact posterior (MATH.md identities 2-4).

`target_variance_profile` measures, at each time, the conditional variance of each per-particle target
given z_t (the quantity the critic-gate and LSI claims are about), by exact posterior sampling.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cgdiff import schedules as schedules_lib
from cgdiff import score_targets, targets

Array = jax.Array
TARGET_NAMES = ("tweedie", "csem", "lsi")


def target_variance_profile(key: Array, means: Array, logvars: Array, log_weights: Array,
                            schedule: schedules_lib.Schedule, times: Array, *, num_points: int = 32,
                            num_draws: int = 1024, gate_fn=None, blend_target: str = "critic_gate",
                            prior: score_targets.Prior | None = None) -> dict[str, Array]:
  """Mean over z_t ~ p_t and over latent elements of Var(target | z_t), for each time; each [T].

  For each time, `num_points` z_t are drawn from the diffused field and, at each, `num_draws` exact
  draws of (i, z0) given z_t (targets.sample_gaussian_field_posterior). Also returns the mean oracle
  gate E[g*] under the same draws ("oracle_gate"). LSI's variance here is its mixture variance
  Var(l | z_t), the irreducible part (002 eq. 14). With gate_fn(z_t [B, ...], t [B]) -> g (a learned
  gate), also "blend": the variance of the registered gated target `blend_target` with that gate (g
  depends on z_t only, so it is one value per point): Var((1 - g) a + g b | z_t) for "critic_gate";
  for 001's "critic_gate_prior" (with `prior`, the latent statistics) a is the prior CSEM, whose blend
  has zero variance at g = g_p (MATH.md errata 4).
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
    if gate_fn is not None:
      gate = gate_fn(z_t, jnp.full((1,), t))  # [1, ...]: the same z_t for every draw
      draw = score_targets.DiffusionDraw(z0=z0s, z_t=z_rep, eps=(z_rep - alpha * z0s) / sigma, mean=mean,
                                         logvar=logvar, alpha=alpha, sigma=sigma)
      eps_blend = score_targets.eps_target(blend_target, draw, gate=gate, prior=prior)
      values["blend"] = -eps_blend / sigma  # back to score units, as the others
    out = {name: jnp.mean(jnp.var(v, axis=0)) for name, v in values.items()}
    out["oracle_gate"] = jnp.mean(targets.oracle_gate(logvar, alpha, sigma))
    return out

  def at_time(t, key):
    per_point = jax.lax.map(lambda k: at_point(t, k), jax.random.split(key, num_points))
    return jax.tree.map(jnp.mean, per_point)

  times = jnp.asarray(times)
  return jax.lax.map(lambda args: at_time(*args), (times, jax.random.split(key, times.shape[0])))


def _posterior_draw(key: Array, mean: Array, logvar: Array, schedule: schedules_lib.Schedule,
                    t: Array) -> tuple[score_targets.DiffusionDraw, Array]:
  """One (z0, z_t) per posterior N(mean, exp(logvar)) [B, ...] at time t (a scalar), and t as [B]."""
  k_vae, k_eps = jax.random.split(key)
  alpha, sigma = schedule.alpha(t), schedule.sigma(t)
  z0 = targets.reparameterize(mean, logvar, jax.random.normal(k_vae, mean.shape))
  eps = jax.random.normal(k_eps, mean.shape)
  draw = score_targets.DiffusionDraw(z0, targets.diffuse(z0, eps, alpha, sigma), eps, mean, logvar, alpha, sigma)
  return draw, jnp.full(mean.shape[:1], t)


def posterior_target_profile(key: Array, mean: Array, logvar: Array, schedule: schedules_lib.Schedule,
                             times: Array, *, eps_fn=None, gate_fn=None, blend_target: str = "critic_gate",
                             prior: score_targets.Prior | None = None) -> dict[str, Array]:
  """The score targets on real posteriors N(mean, exp(logvar)) [B, ...] across time, in eps space.

  At each t in `times` [T], one (z0, z_t) per posterior. Returns, each [T] unless said otherwise:
    excess_<name>, name in tweedie, csem (and blend when `gate_fn` is given): the batch-and-element mean
      of (eps_name - eps_lsi)^2, an unbiased estimate of E Var(eps_name | z_t, x): the variance each
      target adds on top of the Rao-Blackwellised LSI (MATH.md identity 2; 0 for LSI itself).
    residual_<name>, name in tweedie, csem, lsi (and blend), when `eps_fn` is given: the mean of
      (eps_name - eps_fn(z_t, t))^2. All targets share E[eps_name | z_t], so residuals differ only by
      Var(eps_name | z_t): the network's own error is common to all of them.
    gate: [T, B, ...] the gate g(z_t, t) broadcast to the latent shape, when `gate_fn` is given.
  eps_fn(z_t [B, ...], t [B]) -> eps_hat and gate_fn(z_t, t) -> g are closures over trained parameters.
  blend: the registered gated target `blend_target` with that gate ('critic_gate_prior' with `prior`,
  the latent statistics, for 001's row).
  """
  mean, logvar = jnp.asarray(mean), jnp.asarray(logvar)

  def at_time(args):
    t, key = args
    draw, t_batch = _posterior_draw(key, mean, logvar, schedule, t)
    eps_targets = {"tweedie": score_targets.tweedie_eps(draw), "csem": score_targets.csem_eps(draw),
                   "lsi": score_targets.lsi_eps(draw)}
    out = {}
    if gate_fn is not None:
      gate = jnp.broadcast_to(gate_fn(draw.z_t, t_batch), mean.shape)
      eps_targets["blend"] = score_targets.eps_target(blend_target, draw, gate=gate, prior=prior)
      out["gate"] = gate
    for name, value in eps_targets.items():
      if name != "lsi":
        out[f"excess_{name}"] = jnp.mean((value - eps_targets["lsi"]) ** 2)
    if eps_fn is not None:
      eps_hat = eps_fn(draw.z_t, t_batch)
      for name, value in eps_targets.items():
        out[f"residual_{name}"] = jnp.mean((value - eps_hat) ** 2)
    return out

  times = jnp.asarray(times)
  return jax.lax.map(at_time, (times, jax.random.split(key, times.shape[0])))


def gate_profile(key: Array, mean: Array, logvar: Array, schedule: schedules_lib.Schedule, times: Array, *,
                 eps_fn, gate_fn=None, prior: score_targets.Prior | None = None,
                 quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)) -> dict[str, Array]:
  """A trained critic (and gate) on real posteriors N(mean, exp(logvar)) [B, ...] across time: the learned
  gate against the oracle gate g* = sigma^2 / (sigma^2 + alpha^2 v) (MATH.md identity 3) and against
  001's degenerate prior gate g_p = sigma^2 / (sigma^2 + alpha^2 v_agg) (MATH.md errata 4), and the
  critic against LSI and against the score of the diffused Gaussian fit N(alpha m_agg, alpha^2 v_agg +
  sigma^2), the zero-loss state of 001's prior-CSEM objective.

  At each t in `times` [T], one (z0, z_t) per posterior. Returns, each [T] (means over batch and elements):
    critic_vs_lsi       mean (eps_hat - eps_LSI)^2: the network's error + Var(eps_LSI | z_t) (the same
                        for every network at t);
    with `prior` (m_agg, logvar_agg), each z.shape[1:]:
      critic_vs_gaussian  mean (eps_hat - eps_G)^2, eps_G = -sigma x the diffused Gaussian's score: ~0 in
                          the degenerate state;
      lsi_vs_gaussian     mean (eps_LSI - eps_G)^2, its scale for a critic that learnt the LSI mean;
      prior_gate          mean g_p;
    oracle_gate, oracle_gate_q<p>: mean and quantiles of g*;
    with `gate_fn`: gate, gate_q<p> (its mean and quantiles), gate_to_oracle = mean |g - g*| and, with
      `prior`, gate_to_prior = mean |g - g_p|.
  eps_fn(z_t [B, ...], t [B]) and gate_fn(z_t, t) are closures over trained parameters.
  """
  mean, logvar = jnp.asarray(mean), jnp.asarray(logvar)

  def summary(name, values, out):
    out[name] = jnp.mean(values)
    for q in quantiles:
      out[f"{name}_q{round(100 * q)}"] = jnp.quantile(values, q)

  def at_time(args):
    t, key = args
    draw, t_batch = _posterior_draw(key, mean, logvar, schedule, t)
    eps_hat = eps_fn(draw.z_t, t_batch)
    eps_lsi = score_targets.lsi_eps(draw)
    oracle = targets.oracle_gate(logvar, draw.alpha, draw.sigma)
    out = {"critic_vs_lsi": jnp.mean((eps_hat - eps_lsi) ** 2)}
    summary("oracle_gate", oracle, out)
    if prior is not None:
      gaussian = draw._replace(mean=jnp.broadcast_to(prior[0], mean.shape),
                               logvar=jnp.broadcast_to(prior[1], mean.shape))
      eps_gaussian = score_targets.lsi_eps(gaussian)  # LSI of one Gaussian: its diffused score
      prior_gate = targets.oracle_gate(gaussian.logvar, draw.alpha, draw.sigma)
      out.update(critic_vs_gaussian=jnp.mean((eps_hat - eps_gaussian) ** 2),
                 lsi_vs_gaussian=jnp.mean((eps_lsi - eps_gaussian) ** 2), prior_gate=jnp.mean(prior_gate))
    if gate_fn is not None:
      gate = jnp.broadcast_to(gate_fn(draw.z_t, t_batch), mean.shape)
      summary("gate", gate, out)
      out["gate_to_oracle"] = jnp.mean(jnp.abs(gate - oracle))
      if prior is not None:
        out["gate_to_prior"] = jnp.mean(jnp.abs(gate - prior_gate))
    return out

  times = jnp.asarray(times)
  return jax.lax.map(at_time, (times, jax.random.split(key, times.shape[0])))
