"""Per-element mean and variance of the aggregated posterior, computed streaming (001 section 5.3).

001 fits a diagonal Gaussian N(mu_agg, v_agg) to samples z0 ~ q(z0 | x) over the training set; its
prior-CSEM target uses it (biased unless p_0 is Gaussian: MATH.md errata 4). The statistics are
accumulated in float64 with Chan et al.'s pairwise update, so one pass over any number of batches
gives the same mean and variance as the whole set at once (no sum-of-squares cancellation).
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np


@dataclasses.dataclass
class LatentStats:
  """Running count, mean and sum of squared deviations (M2) of latents of shape `shape`."""

  shape: tuple[int, ...]
  count: int = 0
  mean: np.ndarray | None = None
  m2: np.ndarray | None = None

  def update(self, z: np.ndarray) -> LatentStats:
    """Adds a batch z [B, *shape] (posterior samples, not means)."""
    z = np.asarray(z, np.float64)
    if z.shape[1:] != tuple(self.shape):
      raise ValueError(f"latent batch has shape {z.shape}, expected [B, {', '.join(map(str, self.shape))}].")
    if not np.all(np.isfinite(z)):
      raise ValueError("latent batch contains NaN or inf.")
    n = z.shape[0]
    batch_mean = z.mean(axis=0)
    batch_m2 = ((z - batch_mean) ** 2).sum(axis=0)
    if self.count == 0:
      self.count, self.mean, self.m2 = n, batch_mean, batch_m2
    else:
      total = self.count + n
      delta = batch_mean - self.mean
      self.mean = self.mean + delta * n / total
      self.m2 = self.m2 + batch_m2 + delta**2 * self.count * n / total
      self.count = total
    return self

  def variance(self, min_variance: float = 1e-8) -> np.ndarray:
    """Population variance per element, clamped below at min_variance (001's 1e-8)."""
    if self.count < 2:
      raise ValueError(f"need at least 2 latents for a variance, have {self.count}.")
    return np.maximum(self.m2 / self.count, min_variance)

  def as_prior(self) -> tuple[np.ndarray, np.ndarray]:
    """(prior_mean, prior_logvar) of shape `shape`, float32, for `targets.prior_csem_score`."""
    return self.mean.astype(np.float32), np.log(self.variance()).astype(np.float32)

  def save(self, directory: str) -> str:
    """Writes latent_stats.npz (arrays) and latent_stats.json (count and summaries) to `directory`."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "latent_stats.npz")
    np.savez(path + ".tmp.npz", mean=self.mean, variance=self.variance(), count=self.count)
    os.replace(path + ".tmp.npz", path)
    summary = {"count": self.count, "shape": list(self.shape), "mean_of_mean": float(self.mean.mean()),
               "mean_variance": float(self.variance().mean()),
               "min_variance": float(self.variance().min()), "max_variance": float(self.variance().max())}
    with open(os.path.join(directory, "latent_stats.json"), "w") as f:
      json.dump(summary, f, indent=2)
    return path

  @classmethod
  def load(cls, directory: str) -> LatentStats:
    path = os.path.join(directory, "latent_stats.npz")
    if not os.path.exists(path):
      raise FileNotFoundError(f"no latent statistics at {path}: run the 'stats' stage first.")
    with np.load(path) as data:
      mean, variance, count = data["mean"], data["variance"], int(data["count"])
    return cls(shape=mean.shape, count=count, mean=mean, m2=variance * count)
