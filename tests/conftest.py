"""Shared fixtures: random Gaussian fields (MATH.md identity 5), Monte Carlo tolerances, and training logs
as the stages write them (metrics.jsonl)."""

import json
import os
from statistics import NormalDist

import jax.numpy as jnp
import numpy as np


def random_field(seed: int, num_components: int, latent_shape: tuple[int, ...],
                 mean_scale: float = 1.5, logvar_range: tuple[float, float] = (-3.0, 0.0)):
  """A random Gaussian field {(pi_i, mu_i, v_i)} with means [K, *latent_shape]; float64 numpy."""
  rng = np.random.default_rng(seed)
  means = mean_scale * rng.standard_normal((num_components,) + latent_shape)
  logvars = rng.uniform(*logvar_range, size=(num_components,) + latent_shape)
  log_weights = np.log(rng.dirichlet(np.full(num_components, 2.0)))
  return means, logvars, log_weights


def z_threshold(num_comparisons: int, family_error: float = 1e-4) -> float:
  """Two-sided normal quantile with a Bonferroni correction: the chance that ANY of `num_comparisons`
  correct z-scores exceeds it is at most `family_error`."""
  return NormalDist().inv_cdf(1.0 - family_error / (2.0 * num_comparisons))


def field_moments(means, logvars, log_weights):
  """Mean and per-element variance of the field at time 0 (001 section 5.3's statistics, exactly)."""
  w = np.exp(log_weights - np.logaddexp.reduce(log_weights))
  w = w.reshape((-1,) + (1,) * (means.ndim - 1))
  mean = np.sum(w * means, axis=0)
  var = np.sum(w * (np.exp(logvars) + means**2), axis=0) - mean**2
  return mean, var


def as_batch(x, n):
  """Repeat one point n times along a new batch axis."""
  return jnp.broadcast_to(x, (n,) + jnp.shape(x))


def write_jsonl(path, records) -> None:
  """A metrics.jsonl (one JSON record per line) at `path`, its directories made."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)


def ldm_log(num_intervals: int) -> list[dict]:
  """A score stage's logged intervals: interval k (step 100 k) has loss 1 + 1/k and excess over LSI 1/k,
  so loss - excess = 1 in every interval."""
  return [{"step": 100 * k, "loss": 1 + 1 / k, "score_loss": 1 + 1 / k, "target_excess_over_lsi": 1 / k,
           "nonfinite": float(k == 3), "steps_per_sec": float(k)} for k in range(1, num_intervals + 1)]
