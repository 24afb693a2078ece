"""Frechet Inception distance (MATH.md section 7), in float64 numpy on the host.

    FeatureStats                 mean [D], covariance [D, D] (unbiased, as TTUR's np.cov) and count n
    FeatureAccumulator           streaming mean / scatter over batches (Chan et al.'s pairwise merge)
    frechet_distance(mu1, cov1, mu2, cov2)
                                 |mu1 - mu2|^2 + tr cov1 + tr cov2 - 2 tr sqrt(cov1 cov2)
    fid_from_features(f1, f2)    the distance between the statistics of two feature sets [N, D]
    reference_stats(name, split, images_fn, cache_dir, num_images=...)
                                 TF-FID Inception statistics of real data, cached per data set / split /
                                 N / weights / quantisation

tr sqrt(cov1 cov2) is computed without the square root of the non-symmetric product (TTUR's
scipy.linalg.sqrtm, which can return complex parts and needs scipy): with s_i = cov_i^{1/2} (symmetric,
by eigh, tiny negative eigenvalues of round-off clipped to 0), cov1 cov2 is similar to
(s1 s2)(s1 s2)^T, so its eigenvalues are the squared singular values of s1 s2 and
tr sqrt(cov1 cov2) = sum of the singular values of s1 s2 (= sum sqrt(eig(s1 cov2 s1))). Taking the
singular values of s1 s2 rather than the square roots of the eigenvalues of s1 cov2 s1 keeps the
absolute error at eps |s1| |s2| instead of sqrt(eps) |.| for the near-zero eigenvalues of rank-deficient
covariances (N < D): FID(x, x) of 150 x 2048 features comes out at -2e-13, where sum sqrt(eig(.)) and
scipy.linalg.sqrtm both give -7e-6.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import numpy as np

from cgdiff.metrics import inception, inception_weights

# An eigenvalue of a covariance below -NEGATIVE_EIGENVALUE_TOLERANCE * (largest |eigenvalue|) is not
# round-off (eigh's error is ~ D * eps * |C| ~ 5e-13 |C| for D = 2048) but a matrix that is not a covariance.
NEGATIVE_EIGENVALUE_TOLERANCE = 1e-9


@dataclasses.dataclass(frozen=True)
class FeatureStats:
  """Mean [D] and unbiased covariance [D, D] (float64) of n >= 2 feature vectors."""
  mean: np.ndarray
  cov: np.ndarray
  n: int

  @classmethod
  def from_features(cls, features: Any, chunk: int = 4096) -> FeatureStats:
    """Statistics of `features` [N, D] (N >= 2, finite), accumulated in float64 chunks of `chunk` rows."""
    features = _check_features("features", features)
    accumulator = FeatureAccumulator(features.shape[1])
    for start in range(0, len(features), chunk):
      accumulator.update(features[start:start + chunk])
    return accumulator.stats()

  def save(self, path: str, **metadata: str) -> str:
    """Writes mean, cov, n and string `metadata` to an .npz (atomically)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(tmp, mean=self.mean, cov=self.cov, n=self.n, **{f"meta_{k}": v for k, v in metadata.items()})
    os.replace(tmp, path)
    return path

  @classmethod
  def load(cls, path: str) -> tuple[FeatureStats, dict[str, str]]:
    """The statistics and metadata written by `save`."""
    with np.load(path) as f:
      stats = cls(mean=f["mean"], cov=f["cov"], n=int(f["n"]))
      metadata = {k[len("meta_"):]: str(f[k]) for k in f.files if k.startswith("meta_")}
    return stats, metadata


class FeatureAccumulator:
  """Streaming mean and scatter matrix of feature batches, float64.

  Per batch b (n_b rows, mean m_b, scatter S_b = sum (x - m_b)(x - m_b)^T), merged into the running
  (n, m, S) by Chan et al.'s pairwise update: delta = m_b - m, n' = n + n_b, m' = m + delta n_b / n',
  S' = S + S_b + delta delta^T n n_b / n'. Centring each batch on its own mean avoids the cancellation
  of E[x x^T] - m m^T.
  """

  def __init__(self, dim: int):
    self.n = 0
    self.mean = np.zeros(dim)
    self.scatter = np.zeros((dim, dim))

  def update(self, batch: Any) -> None:
    """Adds the rows of `batch` [B, D]."""
    batch = np.asarray(batch, np.float64)
    if batch.ndim != 2 or batch.shape[1] != self.mean.shape[0]:
      raise ValueError(f"batch must be [B, {self.mean.shape[0]}], got shape {batch.shape}.")
    if not np.all(np.isfinite(batch)):
      raise ValueError("features must be finite; got NaN or inf.")
    if len(batch) == 0:
      return
    n_b = len(batch)
    mean_b = batch.mean(axis=0)
    centred = batch - mean_b
    delta = mean_b - self.mean
    total = self.n + n_b
    self.scatter += centred.T @ centred + np.outer(delta, delta) * (self.n * n_b / total)
    self.mean = self.mean + delta * (n_b / total)
    self.n = total

  def stats(self) -> FeatureStats:
    """FeatureStats with the unbiased covariance S / (n - 1); needs n >= 2."""
    if self.n < 2:
      raise ValueError(f"a covariance needs at least 2 feature vectors, got {self.n}.")
    return FeatureStats(self.mean.copy(), self.scatter / (self.n - 1), self.n)


def _check_features(name: str, features: Any) -> np.ndarray:
  """features as a numpy [N, D] array with N >= 2 (dtype kept: chunks are cast to float64 when used)."""
  features = np.asarray(features)
  if features.ndim != 2:
    raise ValueError(f"{name} must be [N, D], got shape {features.shape}.")
  if features.shape[0] < 2:
    raise ValueError(f"{name} needs at least 2 feature vectors for a covariance, got {features.shape[0]}.")
  return features


def psd_sqrt(cov: np.ndarray, name: str = "cov") -> np.ndarray:
  """The symmetric square root V diag(sqrt(max(lambda, 0))) V^T of a covariance [D, D], float64.

  Eigenvalues down to -NEGATIVE_EIGENVALUE_TOLERANCE * max |lambda| are round-off and clipped to 0; a
  more negative one means `cov` is not a covariance (ValueError).
  """
  cov = (cov + cov.T) / 2  # exactly symmetric: eigh reads one triangle
  eigenvalues, vectors = np.linalg.eigh(cov)
  scale = max(float(np.max(np.abs(eigenvalues))), np.finfo(np.float64).tiny)
  if eigenvalues[0] < -NEGATIVE_EIGENVALUE_TOLERANCE * scale:
    raise ValueError(f"{name} is not positive semi-definite: eigenvalue {eigenvalues[0]:.3g} against a "
                     f"largest |eigenvalue| of {scale:.3g}.")
  return (vectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ vectors.T


def frechet_distance(mu1: Any, cov1: Any, mu2: Any, cov2: Any) -> float:
  """Frechet distance between N(mu1, cov1) and N(mu2, cov2), float64.

  mu1, mu2: [D]; cov1, cov2: [D, D] symmetric positive semi-definite.
  d^2 = |mu1 - mu2|^2 + tr cov1 + tr cov2 - 2 tr sqrt(cov1 cov2), with tr sqrt(cov1 cov2) the sum of the
  singular values of cov1^{1/2} cov2^{1/2} (see the module docstring). Returns d^2 (what FID reports).
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
  if mu1.ndim != 1 or mu1.shape != mu2.shape:
    raise ValueError(f"mu1 and mu2 must both be [D], got shapes {mu1.shape} and {mu2.shape}.")
  dim = mu1.shape[0]
  for name, cov in (("cov1", cov1), ("cov2", cov2)):
    if cov.shape != (dim, dim):
      raise ValueError(f"{name} must be [{dim}, {dim}] to match the means, got shape {cov.shape}.")
  for name, value in (("mu1", mu1), ("cov1", cov1), ("mu2", mu2), ("cov2", cov2)):
    if not np.all(np.isfinite(value)):
      raise ValueError(f"{name} must be finite; got NaN or inf.")
  singular_values = np.linalg.svd(psd_sqrt(cov1, "cov1") @ psd_sqrt(cov2, "cov2"), compute_uv=False)
  diff = mu1 - mu2
  value = diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * np.sum(singular_values)
  if not np.isfinite(value):
    raise ValueError(f"the Frechet distance came out non-finite ({value}).")
  return float(value)


def fid_from_stats(stats1: FeatureStats, stats2: FeatureStats) -> float:
  """frechet_distance of two FeatureStats."""
  return frechet_distance(stats1.mean, stats1.cov, stats2.mean, stats2.cov)


def fid_from_features(features1: Any, features2: Any) -> float:
  """FID between two feature sets [N1, D] and [N2, D] (N >= 2 each; the same D)."""
  f1, f2 = _check_features("features1", features1), _check_features("features2", features2)
  if f1.shape[1] != f2.shape[1]:
    raise ValueError(f"features1 and features2 must have the same D, got {f1.shape} and {f2.shape}.")
  return fid_from_stats(FeatureStats.from_features(f1), FeatureStats.from_features(f2))


def inception_stats(variables: Any, images: Any, batch_size: int = 50, quantize: bool = True,
                    progress: inception.Progress = None) -> FeatureStats:
  """FeatureStats of the TF-FID Inception pool3 features of `images` [N, H, W, C] in [-1, 1]."""
  return FeatureStats.from_features(
      inception.inception_features(variables, images, batch_size, quantize, progress))


def default_stats_dir() -> str:
  """Where reference statistics are cached: <cache root>/fid_stats ($CGDIFF_CACHE or ~/.cache/cgdiff)."""
  return os.path.join(inception_weights.cache_root(), "fid_stats")


def reference_stats(name: str, split: str, images_fn: Callable[[], Any], cache_dir: str | None = None, *,
                    num_images: int, variables: Any = None, batch_size: int = 50, quantize: bool = True,
                    progress: inception.Progress = None) -> FeatureStats:
  """Inception statistics of `num_images` real images of data set `name`, `split`, computed once, cached.

  The cache file `<cache_dir>/<name>_<split>_n<num_images>_<weights hash[:12]>[_float].npz` (cache_dir
  default: `default_stats_dir()`) is keyed by the data set, split, N, the weights (`params_hash`) and the
  quantisation; `images_fn()` is called only when it is absent and must return the `num_images` images
  [N, H, W, C] in [-1, 1]. `variables` default to `load_inception_params()`.
  """
  n = num_images
  if n < 2:
    raise ValueError(f"reference statistics need num_images >= 2, got {n}.")
  if variables is None:
    variables = inception_weights.load_inception_params()
  weights = inception_weights.params_hash(variables["params"])
  path = os.path.join(cache_dir or default_stats_dir(),
                      f"{name}_{split}_n{n}_{weights[:12]}{'' if quantize else '_float'}.npz")
  metadata = {"name": name, "split": split, "weights_sha256": weights, "quantize": str(quantize)}
  if os.path.exists(path):
    stats, stored = FeatureStats.load(path)
    if stored != metadata or stats.n != n:
      raise ValueError(f"{path} holds statistics of {stored} (n={stats.n}), not of {metadata} (n={n}); "
                       "delete it to recompute.")
    return stats
  images = images_fn()
  if np.shape(images)[0] != n:
    raise ValueError(f"images_fn() returned {np.shape(images)[0]} images for {name}/{split}, expected {n}.")
  stats = inception_stats(variables, images, batch_size, quantize, progress)
  stats.save(path, **metadata)
  return stats
