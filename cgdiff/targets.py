"""Per-particle score targets for latent diffusion on a stochastic VAE posterior (MATH.md sections 2-3).

Arrays z0, z_t, mean, logvar are NHWC latents, or any shape, all the same. alpha and sigma are the
schedule's values at the example's time and broadcast against z: scalars or shape (B, 1, 1, 1).

    z0  = sample_posterior(key, mean, logvar)          # z0 ~ q(z0 | x) = N(mean, exp(logvar))
    z_t = diffuse(z0, eps, alpha, sigma)               # alpha z0 + sigma eps
    b = tweedie_score(z0, z_t, alpha, sigma)           # -(z_t - alpha z0) / sigma^2
    a = csem_score(z0, mean, logvar, alpha)            # -(z0 - mean) / (alpha v)
    l = lsi_score(z_t, mean, logvar, alpha, sigma)     # -(z_t - alpha mean) / (alpha^2 v + sigma^2)
    blend(a, b, oracle_gate(logvar, alpha, sigma))     # == l, exactly (identity 3)

A Gaussian field {(pi_i, mu_i, v_i)} (the aggregated posterior of a finite data set) has the exact
diffused score `gaussian_field_score` (identity 5): the oracle for every test of the library.

Concrete inputs are validated (shapes, non-finite logvar, alpha or sigma not positive) with a
ValueError that names the argument; under jit only the shapes can be, and are, checked.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from cgdiff import _checks

Array = jax.Array


# --- validation -----------------------------------------------------------------------------------
def _check_positive(name: str, x) -> None:
  _checks.check_finite(name, x)
  if _checks.is_concrete(x) and np.any(np.asarray(x) <= 0):
    raise ValueError(f"{name} must be > 0, got min {np.min(np.asarray(x)):g}.")


def _check_coefficients(z_shape: tuple[int, ...] | None, alpha=None, sigma=None) -> None:
  """alpha and sigma (where given) finite and > 0, and broadcasting to z_shape (None: any shape)."""
  for name, value in (("alpha", alpha), ("sigma", sigma)):
    if value is not None:
      if z_shape is not None:
        _checks.check_broadcasts_to(name, value, z_shape, "the latent")
      _check_positive(name, value)


# --- posterior sampling and the forward process -------------------------------------------------------
def floor_logvar(logvar: Array, min_logvar: float) -> Array:
  """max(logvar, min_logvar): posterior variances must stay positive for CSEM / LSI (MATH.md errata 7)."""
  return jnp.maximum(logvar, min_logvar)


def reparameterize(mean: Array, logvar: Array, eps_vae: Array) -> Array:
  """z0 = mean + exp(logvar / 2) * eps_vae for given noise eps_vae; shape of mean (MATH.md section 3)."""
  _checks.check_same_shape(mean=mean, logvar=logvar, eps_vae=eps_vae)
  _checks.check_finite("logvar", logvar)
  return mean + jnp.exp(0.5 * logvar) * eps_vae


def sample_posterior(key: Array, mean: Array, logvar: Array) -> Array:
  """z0 = mean + exp(logvar / 2) * eps_vae, eps_vae ~ N(0, I); shape of mean (MATH.md section 3)."""
  eps = jax.random.normal(key, jnp.shape(mean), dtype=jnp.result_type(mean, float))
  return reparameterize(mean, logvar, eps)


def diffuse(z0: Array, eps: Array, alpha, sigma) -> Array:
  """z_t = alpha z0 + sigma eps (MATH.md section 1)."""
  _checks.check_same_shape(z0=z0, eps=eps)
  _check_coefficients(jnp.shape(z0), alpha, sigma)
  return alpha * z0 + sigma * eps


def diffused_variance(logvar: Array, alpha, sigma) -> Array:
  """alpha^2 v + sigma^2: the variance of the diffused posterior component q(z_t | x) (002 eq. 9).

  logvar, alpha and sigma broadcast against each other (the Gaussian-field code passes [1, K, D]
  variances with [B, 1, 1] coefficients), so only their values are checked here.
  """
  _checks.check_finite("logvar", logvar)
  _check_coefficients(None, alpha, sigma)
  return alpha**2 * jnp.exp(logvar) + sigma**2


# --- the per-particle score targets (MATH.md section 3 table) ----------------------------------------
def tweedie_score(z0: Array, z_t: Array, alpha, sigma) -> Array:
  """b = -(z_t - alpha z0) / sigma^2 = -eps / sigma: the DSM target (000, 001)."""
  _checks.check_same_shape(z0=z0, z_t=z_t)
  _check_coefficients(jnp.shape(z_t), alpha, sigma)
  return -(z_t - alpha * z0) / sigma**2


def csem_score(z0: Array, mean: Array, logvar: Array, alpha) -> Array:
  """a = (1/alpha) grad log q(z0 | x) = -(z0 - mean) / (alpha v): posterior CSEM, sign of MATH.md errata 1."""
  _checks.check_same_shape(z0=z0, mean=mean, logvar=logvar)
  _checks.check_finite("logvar", logvar)
  _check_coefficients(jnp.shape(z0), alpha)
  return -(z0 - mean) * jnp.exp(-logvar) / alpha


def prior_csem_score(z0: Array, prior_mean: Array, prior_logvar: Array, alpha) -> Array:
  """-(z0 - mu_agg) / (alpha v_agg): 001's CSEM with a global Gaussian fit N(mu_agg, v_agg) of p_0.

  BIASED: E[. | z_t] is the true score only when p_0 is itself that Gaussian (MATH.md errata 4).
  prior_mean and prior_logvar broadcast against z0 (e.g. shape z0.shape[1:]).
  """
  _checks.check_same_shape(prior_mean=prior_mean, prior_logvar=prior_logvar)
  _checks.check_broadcasts_to("prior_mean", prior_mean, jnp.shape(z0), "z0")
  _checks.check_finite("prior_logvar", prior_logvar)
  _check_coefficients(jnp.shape(z0), alpha)
  return -(z0 - prior_mean) * jnp.exp(-prior_logvar) / alpha


def lsi_score(z_t: Array, mean: Array, logvar: Array, alpha, sigma) -> Array:
  """l = -(z_t - alpha mean) / (alpha^2 v + sigma^2): the score of the diffused component (002 eq. 12)."""
  _checks.check_same_shape(z_t=z_t, mean=mean, logvar=logvar)
  _checks.check_finite("logvar", logvar)
  _check_coefficients(jnp.shape(z_t), alpha, sigma)
  return -(z_t - alpha * mean) / diffused_variance(logvar, alpha, sigma)


def blend(a: Array, b: Array, g) -> Array:
  """z_g = (1 - g) a + g b: g = 0 is CSEM, g = 1 is Tweedie (000's convention, MATH.md errata 5)."""
  _checks.check_same_shape(a=a, b=b)
  _checks.check_broadcasts_to("g", g, jnp.shape(a), "the targets")
  return (1.0 - g) * a + g * b


def oracle_gate(logvar: Array, alpha, sigma) -> Array:
  """g* = sigma^2 / (sigma^2 + alpha^2 v): the gate with blend(a, b, g*) == lsi (MATH.md identity 3).

  Written as sigmoid(log sigma^2 - log alpha^2 - logvar), which neither overflows nor loses g* -> 0.
  """
  _checks.check_finite("logvar", logvar)
  _check_coefficients(jnp.shape(logvar), alpha, sigma)
  return jax.nn.sigmoid(2.0 * jnp.log(sigma) - 2.0 * jnp.log(alpha) - logvar)


def score_to_eps(score: Array, sigma) -> Array:
  """eps = -sigma * score: the noise target of a score target (MATH.md section 2)."""
  _check_coefficients(jnp.shape(score), sigma=sigma)
  return -sigma * score


def eps_to_score(eps: Array, sigma) -> Array:
  """score = -eps / sigma: the score of a noise prediction (MATH.md section 2)."""
  _check_coefficients(jnp.shape(eps), sigma=sigma)
  return -eps / sigma


def conditional_target_variances(logvar: Array, alpha, sigma) -> tuple[Array, Array]:
  """Per-element Var(tweedie | z_t, x) and Var(csem | z_t, x) (MATH.md identity 4).

  With P = v sigma^2 / (sigma^2 + alpha^2 v), the variance of z0 given (z_t, x):
  Var(b) = alpha^2 P / sigma^4 and Var(a) = P / (alpha^2 v^2); lsi has none (it is their mean).
  """
  _checks.check_finite("logvar", logvar)
  _check_coefficients(jnp.shape(logvar), alpha, sigma)
  v = jnp.exp(logvar)
  p = v * sigma**2 / diffused_variance(logvar, alpha, sigma)
  return alpha**2 * p / sigma**4, p / (alpha**2 * v**2)


# --- Gaussian fields: exact scores and exact posteriors (MATH.md identity 5) -------------------------
def _field_terms(z_t, means, logvars, log_weights, alpha, sigma):
  """Per component, after shape checks: log N(z_t; alpha mu_i, alpha^2 v_i + sigma^2) [B, K], and the
  flattened residual z_t - alpha mu_i and variance alpha^2 v_i + sigma^2, both [B, K, D]."""
  z_t = jnp.asarray(z_t)
  if z_t.ndim < 2:
    raise ValueError(f"z_t must be a batch (B, ...), got shape {z_t.shape}.")
  batch, dim = z_t.shape[0], math.prod(z_t.shape[1:])
  means, logvars, log_weights = map(jnp.asarray, (means, logvars, log_weights))
  _checks.check_same_shape(means=means, logvars=logvars)
  if means.shape[1:] not in (z_t.shape[1:], (dim,)):
    raise ValueError(f"means must have shape (K, {', '.join(map(str, z_t.shape[1:]))}) or (K, {dim}) "
                     f"for z_t of shape {z_t.shape}, got {means.shape}.")
  if log_weights.shape != means.shape[:1]:
    raise ValueError(f"log_weights must have shape ({means.shape[0]},), got {log_weights.shape}.")
  _checks.check_finite("logvars", logvars)
  _checks.check_finite("log_weights", log_weights)
  per_example = (batch,) + (1,) * (z_t.ndim - 1)
  _check_coefficients(per_example, alpha, sigma)
  # A scalar coefficient stays [1, 1, 1], so the variances and log-determinants are computed once per
  # component rather than once per (example, component): most of the cost when all times are equal.
  a, s = (jnp.reshape(c, (1, 1, 1)) if jnp.size(c) == 1 else jnp.broadcast_to(c, per_example).reshape(batch, 1, 1)
          for c in (alpha, sigma))
  k = means.shape[0]
  mu, lv = means.reshape(1, k, dim), logvars.reshape(1, k, dim)
  resid, var = z_t.reshape(batch, 1, dim) - a * mu, diffused_variance(lv, a, s)
  log_lik = -0.5 * jnp.sum(resid**2 / var + jnp.log(2.0 * jnp.pi * var), axis=-1)
  return log_lik, resid, var


def gaussian_field_component_log_posterior(z_t: Array, means: Array, logvars: Array,
                                           log_weights: Array, alpha, sigma) -> Array:
  """log w_i(z_t): log p(component i | z_t), [B, K],
  w_i proportional to pi_i N(z_t; alpha mu_i, alpha^2 v_i + sigma^2)."""
  log_lik, _, _ = _field_terms(z_t, means, logvars, log_weights, alpha, sigma)
  return jax.nn.log_softmax(log_weights + log_lik, axis=-1)


def gaussian_field_log_density(z_t: Array, means: Array, logvars: Array, log_weights: Array,
                               alpha, sigma) -> Array:
  """log p_t(z_t) of the diffused field, [B]; log_weights need not be normalised."""
  log_lik, _, _ = _field_terms(z_t, means, logvars, log_weights, alpha, sigma)
  return jax.nn.logsumexp(jax.nn.log_softmax(log_weights) + log_lik, axis=-1)


def gaussian_field_score(z_t: Array, means: Array, logvars: Array, log_weights: Array, alpha,
                         sigma) -> Array:
  """The exact marginal score s*(z_t) = sum_i w_i(z_t) l_i(z_t) of a diffused Gaussian field (identity 5).

  z_t: [B, ...]; means, logvars: [K, *z_t.shape[1:]] or [K, D] with D = prod(z_t.shape[1:]);
  log_weights: [K] (unnormalised log pi_i); alpha, sigma: scalars or [B, 1, ..., 1]. Returns [B, ...].
  Memory is O(B K D).
  """
  log_lik, resid, var = _field_terms(z_t, means, logvars, log_weights, alpha, sigma)
  weights = jax.nn.softmax(log_weights + log_lik, axis=-1)  # [B, K]
  score = -jnp.einsum("bk,bkd->bd", weights, resid / var)
  return score.reshape(jnp.shape(z_t))


def sample_gaussian_field(key: Array, means: Array, logvars: Array, log_weights: Array,
                          num_samples: int) -> tuple[Array, Array]:
  """Draws (i, z0) from the field at time 0: i ~ Categorical(pi), z0 ~ N(mu_i, v_i).

  Returns component indices [N] and samples [N, *means.shape[1:]].
  """
  _checks.check_same_shape(means=means, logvars=logvars)
  _checks.check_int("num_samples", num_samples)
  key_i, key_z = jax.random.split(key)
  idx = jax.random.categorical(key_i, jnp.asarray(log_weights), shape=(num_samples,))
  return idx, sample_posterior(key_z, jnp.asarray(means)[idx], jnp.asarray(logvars)[idx])


def sample_gaussian_field_posterior(key: Array, z_t: Array, means: Array, logvars: Array,
                                    log_weights: Array, alpha, sigma) -> tuple[Array, Array]:
  """One exact draw of (i, z0) given each z_t (MATH.md identity 5): i ~ w(z_t), then z0 ~ N(m, P),

  m = mu_i + v_i alpha (z_t - alpha mu_i) / (alpha^2 v_i + sigma^2), P = v_i sigma^2 / (alpha^2 v_i + sigma^2).
  z_t: [B, ...] (repeat a point B times for B draws at it). Returns indices [B] and z0 [B, ...].
  """
  log_w = gaussian_field_component_log_posterior(z_t, means, logvars, log_weights, alpha, sigma)
  key_i, key_z = jax.random.split(key)
  idx = jax.random.categorical(key_i, log_w, axis=-1)  # [B]
  shape = jnp.shape(z_t)
  mu = jnp.asarray(means)[idx].reshape(shape)
  lv = jnp.asarray(logvars)[idx].reshape(shape)
  var_t = diffused_variance(lv, alpha, sigma)
  mean_post = mu + jnp.exp(lv) * alpha * (z_t - alpha * mu) / var_t
  logvar_post = lv + 2.0 * jnp.log(sigma) - jnp.log(var_t)
  return idx, sample_posterior(key_z, mean_post, logvar_post)
