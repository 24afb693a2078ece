"""Training objectives: the score targets of `targets` plus network calls (MATH.md section 4).

Every objective is a pure function `(params, batch, keys, ...) -> (loss, metrics)`. Networks come in as
functions (`eps_fn(params, z_t, t)`, `gate_fn(params, z_t, t)`, `encode_fn(params, x)`,
`decode_fn(params, z)`), so this module knows the maths and not the architectures. `keys` holds one
PRNG key per example ([B] key array or [B, 2] raw keys): an example's noise depends on its key only,
so a step gives the same result on 1 or 8 devices.

Reductions: losses are means over the batch and over latent / pixel elements (the `F.mse_loss` of
001), so the KL weight of 001 (1e-3 to 1e-2 per element) keeps its meaning.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Literal

import jax
import jax.numpy as jnp

from cgdiff import schedules as schedules_lib
from cgdiff import score_targets, targets

Array = jax.Array
Params = Any
EpsFn = Callable[[Params, Array, Array], Array]  # (params, z_t [B, ...], t [B]) -> eps_hat [B, ...]
GateFn = Callable[[Params, Array, Array], Array]  # (params, z_t, t) -> g in [0, 1], broadcasts to z_t
EncodeFn = Callable[[Params, Array], tuple[Array, Array]]  # (params, x) -> (mean, logvar)
DecodeFn = Callable[[Params, Array], Array]  # (params, z0) -> x_hat

# Co-training has no gate network and no latent statistics (those come from a trained VAE).
COTRAIN_SCORE_TARGETS = score_targets.names(gate=False, prior=False)
KLKind = Literal["regular", "modified"]
KL_KINDS = ("regular", "modified")


def _per_example(t: Array, ndim: int) -> Array:
  """[B] -> [B, 1, ..., 1] with `ndim` dimensions in all, to broadcast against a batch."""
  return jnp.reshape(t, t.shape + (1,) * (ndim - 1))


def draw_diffusion_noise(keys: Array, schedule: schedules_lib.Schedule,
                         latent_shape: tuple[int, ...]) -> tuple[Array, Array, Array]:
  """Per example: t ~ U[t_min, t_max], eps_vae ~ N(0, I), eps ~ N(0, I).

  Returns (t [B], eps_vae [B, *latent_shape], eps [B, *latent_shape]).
  """

  def draw(key):
    k_t, k_vae, k_eps = jax.random.split(key, 3)
    t = jax.random.uniform(k_t, (), minval=schedule.t_min, maxval=schedule.t_max)
    return t, jax.random.normal(k_vae, latent_shape), jax.random.normal(k_eps, latent_shape)

  return jax.vmap(draw)(keys)


def noise_target(target: str, *, z0: Array, z_t: Array, eps: Array, mean: Array, logvar: Array,
                 alpha: Array, sigma: Array, gate: Array | None = None,
                 prior: tuple[Array, Array] | None = None) -> Array:
  """The eps-space target eps* = -sigma s* of the registered score target `target`; z's shape.

  A keyword front end to score_targets.eps_target (the registry says what each target is and needs).
  """
  draw = score_targets.DiffusionDraw(z0, z_t, eps, mean, logvar, alpha, sigma)
  return score_targets.eps_target(target, draw, gate=gate, prior=prior)


def _score_terms(params: Params, mean: Array, logvar: Array, keys: Array, *, eps_fn: EpsFn,
                 schedule: schedules_lib.Schedule, target: str, gate_fn: GateFn | None = None,
                 prior: tuple[Array, Array] | None = None):
  """eps-MSE of the score network against `target`, for posteriors N(mean, exp(logvar)) [B, ...].

  params: {"score": ..., "gate": ...} (the gate only for targets that need one). Returns the loss and
  metrics: the gate's mean and range, the target's second moment, and its excess over LSI,
  mean (eps* - eps_LSI)^2, a Monte Carlo estimate of E Var(eps* | z_t, x): the variance the target
  adds on top of the Rao-Blackwellised one (0 for LSI; MATH.md identity 2). Also returns the drawn
  (alpha, sigma) [B, 1, ...], for terms that need the same times (the stiffness penalty).
  """
  spec = score_targets.get(target)
  t, eps_vae, eps = draw_diffusion_noise(keys, schedule, mean.shape[1:])
  alpha = _per_example(schedule.alpha(t), mean.ndim)
  sigma = _per_example(schedule.sigma(t), mean.ndim)
  z0 = targets.reparameterize(mean, logvar, eps_vae)
  draw = score_targets.DiffusionDraw(z0, targets.diffuse(z0, eps, alpha, sigma), eps, mean, logvar,
                                     alpha, sigma)
  metrics = {}
  gate = None
  if spec.needs_gate:
    if gate_fn is None:
      raise ValueError(f"target {target!r} needs a gate network (gate_fn).")
    gate = gate_fn(params["gate"], draw.z_t, t)
    metrics.update(gate_mean=jnp.mean(gate), gate_min=jnp.min(gate), gate_max=jnp.max(gate))
  eps_star = score_targets.eps_target(target, draw, gate=gate, prior=prior)
  eps_hat = eps_fn(params["score"], draw.z_t, t)
  loss = jnp.mean((eps_hat - eps_star) ** 2)
  eps_lsi = score_targets.lsi_eps(draw)
  metrics.update(
      score_loss=loss,
      target_second_moment=jax.lax.stop_gradient(jnp.mean(eps_star**2)),
      target_excess_over_lsi=jax.lax.stop_gradient(jnp.mean((eps_star - eps_lsi) ** 2)),
  )
  return loss, metrics, (alpha, sigma)


def diffusion_loss(params: Params, posterior: tuple[Array, Array], keys: Array, *, eps_fn: EpsFn,
                   schedule: schedules_lib.Schedule, target: str, gate_fn: GateFn | None = None,
                   prior: tuple[Array, Array] | None = None) -> tuple[Array, dict[str, Array]]:
  """Latent-diffusion loss on a frozen posterior (mean, logvar) [B, ...] against a registered score
  target: baseline ('tweedie'), LSI, or critic-gate (000 with the posterior CSEM, 001 with the prior
  CSEM). MATH.md section 4."""
  mean, logvar = posterior
  loss, metrics, _ = _score_terms(params, mean, logvar, keys, eps_fn=eps_fn, schedule=schedule,
                                  target=target, gate_fn=gate_fn, prior=prior)
  return loss, {"loss": loss, **metrics}


def diffusion_loss_fn(target: str, *, eps_fn: EpsFn, schedule: schedules_lib.Schedule,
                      gate_fn: GateFn | None = None, prior: tuple[Array, Array] | None = None
                      ) -> Callable[[Params, tuple[Array, Array], Array], tuple[Array, dict[str, Array]]]:
  """diffusion_loss for `target` as a function (params, posterior, keys) -> (loss, metrics), once the
  registry (score_targets.TARGETS) confirms that it has what it needs: a gate network exactly when the
  target blends with a gate, the latent statistics exactly when it uses them."""
  spec = score_targets.get(target)
  if spec.needs_gate != (gate_fn is not None):
    raise ValueError(f"target {target!r} {'needs' if spec.needs_gate else 'takes no'} gate network.")
  if spec.needs_prior != (prior is not None):
    raise ValueError(f"target {target!r} {'needs' if spec.needs_prior else 'takes no'} latent statistics.")
  return functools.partial(diffusion_loss, eps_fn=eps_fn, schedule=schedule, target=target,
                           gate_fn=gate_fn, prior=prior)


def gaussian_kl(mean: Array, logvar: Array, kind: KLKind) -> Array:
  """Per-element mean of the KL term. regular: KL(N(mean, v) || N(0, 1)) = 1/2 (mean^2 + v - 1 - logvar);
  modified (002 eq. 19): 1/2 (mean^2 + v), the second moment without the -log det."""
  v = jnp.exp(logvar)
  if kind == "regular":
    return 0.5 * jnp.mean(mean**2 + v - 1.0 - logvar)
  if kind == "modified":
    return 0.5 * jnp.mean(mean**2 + v)
  raise ValueError(f"unknown KL kind {kind!r}; expected one of {KL_KINDS}.")


def stiffness_penalty(logvar: Array, alpha: Array, sigma: Array) -> Array:
  """Per-element mean of 1 / (alpha^2 v + sigma^2): 002 eq. 21's tr(Sigma_t^{-1}) per dimension."""
  return jnp.mean(1.0 / targets.diffused_variance(logvar, alpha, sigma))


def autoencoder_terms(params: Params, images: Array, keys: Array, *, encode_fn: EncodeFn,
                      decode_fn: DecodeFn, kl: KLKind) -> tuple[dict[str, Array], tuple[Array, Array]]:
  """Reconstruction MSE of decode(z0), z0 ~ q(z0 | x), and the KL term; returns (terms, (mean, logvar))."""
  mean, logvar = encode_fn(params, images)
  eps_vae = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 1), mean.shape[1:]))(keys)
  recon = decode_fn(params, targets.reparameterize(mean, logvar, eps_vae))
  terms = {"reconstruction": jnp.mean((recon - images) ** 2), "kl": gaussian_kl(mean, logvar, kl),
           "posterior_logvar_mean": jax.lax.stop_gradient(jnp.mean(logvar))}
  return terms, (mean, logvar)


def vae_loss(params: Params, images: Array, keys: Array, *, encode_fn: EncodeFn, decode_fn: DecodeFn,
             kl: KLKind = "regular", kl_weight: float = 1e-3) -> tuple[Array, dict[str, Array]]:
  """001 eqs. 12-13: reconstruction MSE + kl_weight * KL (per element). images [B, H, W, C] in [-1, 1]."""
  terms, _ = autoencoder_terms(params, images, keys, encode_fn=encode_fn, decode_fn=decode_fn, kl=kl)
  loss = terms["reconstruction"] + kl_weight * terms["kl"]
  return loss, {"loss": loss, **terms}


def cotrain_loss(params: Params, images: Array, keys: Array, *, encode_fn: EncodeFn, decode_fn: DecodeFn,
                 eps_fn: EpsFn, schedule: schedules_lib.Schedule, kl: KLKind, kl_weight: float,
                 score_target: str, score_weight: float = 1.0,
                 stiffness_weight: float = 0.0,
                 encoder_score_gradient: bool = True) -> tuple[Array, dict[str, Array]]:
  """Co-training of VAE and score network (002 Algorithm 1, eq. 17; MATH.md section 4).

  loss = reconstruction + kl_weight KL + score_weight ||eps_hat - eps*||^2
         + stiffness_weight mean 1/(alpha^2 v + sigma^2).
  params: {"vae": ..., "score": ...}. With encoder_score_gradient the score term's gradient reaches the
  encoder (through z_t and, for LSI, through the target's mean and variance); without it the encoder
  sees the score loss not at all (two-stage training run side by side). The stiffness penalty is a
  regulariser of the encoder's variance (002 eq. 21), not part of the score loss: it reaches the
  encoder either way. The score term draws its own z0 (a different posterior draw from the
  reconstruction's); both are unbiased.
  """
  if score_target not in COTRAIN_SCORE_TARGETS:
    raise ValueError(f"co-training uses a score_target in {COTRAIN_SCORE_TARGETS}, got {score_target!r}.")
  terms, (mean, logvar) = autoencoder_terms(params["vae"], images, keys, encode_fn=encode_fn,
                                            decode_fn=decode_fn, kl=kl)
  score_mean, score_logvar = mean, logvar
  if not encoder_score_gradient:
    score_mean, score_logvar = jax.lax.stop_gradient((mean, logvar))
  score_keys = jax.vmap(lambda k: jax.random.fold_in(k, 2))(keys)
  score_loss, score_metrics, (alpha, sigma) = _score_terms(
      {"score": params["score"]}, score_mean, score_logvar, score_keys, eps_fn=eps_fn, schedule=schedule,
      target=score_target)
  loss = terms["reconstruction"] + kl_weight * terms["kl"] + score_weight * score_loss
  if stiffness_weight:
    stiffness = stiffness_penalty(logvar, alpha, sigma)  # at the score term's times
    loss = loss + stiffness_weight * stiffness
    terms["stiffness"] = stiffness
  return loss, {"loss": loss, **terms, **score_metrics}
