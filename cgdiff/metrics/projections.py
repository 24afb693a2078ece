"""Principal-component projections of flattened latents, for 2-D pictures of a latent distribution
(001 section 6.3): fit on the real aggregated-posterior latents, apply the same map to every model."""

from __future__ import annotations

import dataclasses
import math

import numpy as np


@dataclasses.dataclass(frozen=True)
class PCA:
  """z -> (z.flatten() - mean) @ components.T.

  mean: [D]; components: [k, D], orthonormal rows in order of decreasing variance;
  explained_variance_ratio: [k], each component's share of the total variance of the fitted set.
  """
  mean: np.ndarray
  components: np.ndarray
  explained_variance_ratio: np.ndarray

  def project(self, latents) -> np.ndarray:
    """[N, ...] with prod(...) = D -> [N, k]."""
    flat = _flatten(latents, "latents")
    if flat.shape[1] != self.mean.shape[0]:
      raise ValueError(f"latents have {flat.shape[1]} elements each; this PCA was fitted on "
                       f"{self.mean.shape[0]}.")
    return (flat - self.mean) @ self.components.T


def _flatten(x, name: str) -> np.ndarray:
  x = np.asarray(x, np.float64)
  if x.ndim < 2 or x.shape[0] < 2:
    raise ValueError(f"{name} must be [N >= 2, ...], got shape {x.shape}.")
  if not np.all(np.isfinite(x)):
    raise ValueError(f"{name} contain NaN or inf.")
  return x.reshape(x.shape[0], math.prod(x.shape[1:]))


def fit_pca(latents, num_components: int = 2) -> PCA:
  """The top `num_components` principal directions of `latents` [N, ...] (an SVD of the centred set)."""
  flat = _flatten(latents, "latents")
  if not 1 <= num_components <= min(flat.shape):
    raise ValueError(f"num_components must be in [1, {min(flat.shape)}], got {num_components}.")
  mean = flat.mean(axis=0)
  _, singular, vt = np.linalg.svd(flat - mean, full_matrices=False)
  variance = singular**2
  # SVD fixes each direction up to sign: make the largest loading positive, so refits agree.
  signs = np.sign(vt[np.arange(vt.shape[0]), np.argmax(np.abs(vt), axis=1)])
  vt = vt * signs[:, None]
  return PCA(mean=mean, components=vt[:num_components],
             explained_variance_ratio=variance[:num_components] / variance.sum())
