"""Frechet Inception distance (MATH.md section 7), in float64 numpy on the host.

    FeatureStats                 mean [D], covariance [D, D] (unbiased, as TTUR's np.cov), count n and a
                                 factor [r, D] of the covariance (factor^T factor = cov)
    FeatureAccumulator           streaming mean / scatter over batches (Chan et al.'s pairwise merge)
    frechet_distance(mu1, cov1, mu2, cov2)
                                 |mu1 - mu2|^2 + tr cov1 + tr cov2 - 2 tr sqrt(cov1 cov2)
    trace_sqrt_product(cov1, cov2, factor1, factor2)   tr sqrt(cov1 cov2), see below
    fid_from_features(f1, f2)    the distance between the statistics of two feature sets [N, D]
    inception_feature_chunks(store, variables, images, total, batch_size, chunk)
                                 Inception features saved chunk by chunk as they are computed (resumable)
    reference_stats(name, split, images_fn, cache_dir, num_images=..., chunk=...)
                                 TF-FID Inception statistics of real data (with their factor), cached
                                 per data set / split / N / weights / quantisation; with `chunk`, a
                                 killed computation resumes from its saved feature chunks

tr sqrt(cov1 cov2) is computed without the square root of the non-symmetric product (TTUR's
scipy.linalg.sqrtm, which can return complex parts, needs scipy and takes a minute at D = 2048). With
any factors G_i [r_i, D] of the covariances, G_i^T G_i = cov_i, cov1 cov2 = G1^T (G1 G2^T) G2 has the
nonzero eigenvalues of C C^T, C = G1 G2^T [r1, r2], so tr sqrt(cov1 cov2) = the sum of the singular
values of C. Two factors are at hand (`FeatureStats.factor`): the centred features / sqrt(n - 1)
[n, D] of n <= D vectors, and otherwise the symmetric square root cov^{1/2} (`psd_sqrt`, by eigh; cached
with the reference statistics, so an evaluation pays for it once per reference set). Then:
  both factors known:  the singular values of C = G1 G2^T [r1, r2], cheap unless both r = D (r1 r2 D
                 flops and an r1 x r2 SVD) and accurate: absolute error eps |G1| |G2|, also for the zero
                 singular values of rank-deficient covariances (FID(x, x) of 150 x 2048 features comes
                 out at ~1e-13; sum sqrt(eig(.)) and scipy.linalg.sqrtm both give ~ -7e-6 there);
  one factor G known (none: G = cov1^{1/2} by eigh):  sum sqrt(eigvalsh(M)), M = G cov' G^T [r, r] with
                 cov' the other covariance. At r = D (the evaluation: cached reference square root,
                 generated statistics of n > D samples) that is two products and an eigvalsh, several
                 times faster than the singular values of s1 s2, which would also need s2 by another
                 eigh (benchmarks/frechet.py has the timings). An eigenvalue lambda of M carries
                 eigvalsh's absolute error delta ~ eps |M|, so sqrt(lambda) is off by
                 min(delta / (2 sqrt(lambda)), sqrt(delta)): as accurate as the singular values when
                 cov' is of n > D vectors (full rank), the case this branch is for; the sqrt(delta) term
                 appears only for eigenvalues at round-off, which come from rank-deficient covariances,
                 and those carry their feature factor into the first branch.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from typing import Any, Callable

import numpy as np

from cgdiff import chunks
from cgdiff.metrics import inception, inception_weights

# An eigenvalue of a covariance below -NEGATIVE_EIGENVALUE_TOLERANCE * (largest |eigenvalue|) is not
# round-off (eigh's error is ~ D * eps * |C| ~ 5e-13 |C| for D = 2048) but a matrix that is not a covariance.
NEGATIVE_EIGENVALUE_TOLERANCE = 1e-9


@dataclasses.dataclass(frozen=True)
class FeatureStats:
  """Mean [D] and unbiased covariance [D, D] (float64) of n >= 2 feature vectors, and optionally a factor
  [r, D] of the covariance (factor^T factor = cov): the centred features / sqrt(n - 1) when n <= D (set by
  `from_features`), or the symmetric square root cov^{1/2} (`with_factor`). See the module docstring."""
  mean: np.ndarray
  cov: np.ndarray
  n: int
  factor: np.ndarray | None = None

  @classmethod
  def from_features(cls, features: Any, chunk: int = 4096) -> FeatureStats:
    """Statistics of `features` [N, D] (N >= 2, finite), accumulated in float64 chunks of `chunk` rows;
    with N <= D (a rank-deficient covariance) the centred features / sqrt(N - 1) are kept as the factor."""
    features = _check_features("features", features)
    accumulator = FeatureAccumulator(features.shape[1])
    for start in range(0, len(features), chunk):
      accumulator.update(features[start:start + chunk])
    stats = accumulator.stats()
    if stats.n > features.shape[1]:
      return stats
    factor = (np.asarray(features, np.float64) - stats.mean) / np.sqrt(stats.n - 1)
    return dataclasses.replace(stats, factor=factor)

  def with_factor(self) -> FeatureStats:
    """These statistics with a factor: the one they have, else the symmetric square root (one eigh)."""
    if self.factor is not None:
      return self
    return dataclasses.replace(self, factor=psd_sqrt(self.cov))

  def save(self, path: str, **metadata: str) -> str:
    """Writes mean, cov, n, the factor (if any) and string `metadata` to an .npz (atomically)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.npz"
    arrays = {"mean": self.mean, "cov": self.cov, "n": self.n}
    if self.factor is not None:
      arrays["factor"] = self.factor
    np.savez(tmp, **arrays, **{f"meta_{k}": v for k, v in metadata.items()})
    os.replace(tmp, path)
    return path

  @classmethod
  def load(cls, path: str) -> tuple[FeatureStats, dict[str, str]]:
    """The statistics and metadata written by `save`."""
    with np.load(path) as f:
      stats = cls(mean=f["mean"], cov=f["cov"], n=int(f["n"]),
                  factor=f["factor"] if "factor" in f.files else None)
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


def _check_factor(name: str, factor: Any, dim: int) -> np.ndarray | None:
  if factor is None:
    return None
  factor = np.asarray(factor, np.float64)
  if factor.ndim != 2 or factor.shape[1] != dim or not 1 <= factor.shape[0] <= dim:
    raise ValueError(f"{name} must be [r, {dim}] with 1 <= r <= {dim}, got shape {factor.shape}.")
  if not np.all(np.isfinite(factor)):
    raise ValueError(f"{name} must be finite; got NaN or inf.")
  return factor


def trace_sqrt_product(cov1: np.ndarray, cov2: np.ndarray, factor1: np.ndarray | None = None,
                       factor2: np.ndarray | None = None) -> float:
  """tr sqrt(cov1 cov2) of covariances [D, D] (float64), given factors [r_i, D] (factor_i^T factor_i =
  cov_i) where known.

  Both factors known: the sum of the singular values of factor1 factor2^T. Otherwise
  sum sqrt(eigvalsh(G cov' G^T)) with G the known factor (cov1^{1/2} by eigh when none is known) and cov'
  the other covariance. The module docstring gives the cost and error of each.
  """
  if factor1 is not None and factor2 is not None:
    return float(np.sum(np.linalg.svd(factor1 @ factor2.T, compute_uv=False)))
  names = ("cov1", "cov2")
  if factor1 is None and factor2 is not None:  # tr sqrt(cov1 cov2) = tr sqrt(cov2 cov1)
    factor1, cov1, cov2, names = factor2, cov2, cov1, names[::-1]
  if factor1 is None:
    factor1 = psd_sqrt(cov1, names[0])
  product = factor1 @ cov2 @ factor1.T
  eigenvalues = np.linalg.eigvalsh((product + product.T) / 2)  # exactly symmetric: eigvalsh reads one triangle
  scale = max(float(np.max(np.abs(eigenvalues))), np.finfo(np.float64).tiny)
  if eigenvalues[0] < -NEGATIVE_EIGENVALUE_TOLERANCE * scale:
    raise ValueError(f"{names[1]} is not positive semi-definite: G {names[1]} G^T (G a factor of {names[0]}) "
                     f"has the eigenvalue {eigenvalues[0]:.3g} against a largest |eigenvalue| of {scale:.3g}.")
  return float(np.sum(np.sqrt(np.clip(eigenvalues, 0.0, None))))


def frechet_distance(mu1: Any, cov1: Any, mu2: Any, cov2: Any, factor1: Any = None,
                     factor2: Any = None) -> float:
  """Frechet distance between N(mu1, cov1) and N(mu2, cov2), float64.

  mu1, mu2: [D]; cov1, cov2: [D, D] symmetric positive semi-definite; factor1, factor2: optional [r_i, D]
  factors of the covariances (factor_i^T factor_i = cov_i; `FeatureStats.factor`), which spare the eigh of
  a square root. d^2 = |mu1 - mu2|^2 + tr cov1 + tr cov2 - 2 tr sqrt(cov1 cov2) (`trace_sqrt_product`).
  Returns d^2 (what FID reports).
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
  factor1, factor2 = _check_factor("factor1", factor1, dim), _check_factor("factor2", factor2, dim)
  diff = mu1 - mu2
  value = (diff @ diff + np.trace(cov1) + np.trace(cov2)
           - 2.0 * trace_sqrt_product(cov1, cov2, factor1, factor2))
  if not np.isfinite(value):
    raise ValueError(f"the Frechet distance came out non-finite ({value}).")
  return float(value)


def fid_from_stats(stats1: FeatureStats, stats2: FeatureStats) -> float:
  """frechet_distance of two FeatureStats (with their factors)."""
  return frechet_distance(stats1.mean, stats1.cov, stats2.mean, stats2.cov, stats1.factor, stats2.factor)


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


def inception_feature_chunks(store: chunks.ChunkStore, variables: Any, images: Callable[[int, int], Any],
                             total: int, batch_size: int, chunk: int, quantize: bool = True,
                             progress: inception.Progress = None, label: str | None = None) -> np.ndarray:
  """TF-FID Inception pool3 features [total, 2048] of images(start, stop) ([stop - start, H, W, C] in
  [-1, 1]), computed and saved in `store` chunk by chunk (`chunk` rounded up to whole batches), so that
  a killed computation resumes where it stopped (cgdiff.chunks)."""
  return store.array(
      "features", lambda start, stop: inception.inception_features(
          variables, images(start, stop), batch_size, quantize, progress),
      total, chunks.round_up(chunk, batch_size), label=label)


def default_stats_dir() -> str:
  """Where reference statistics are cached: <cache root>/fid_stats ($CGDIFF_CACHE or ~/.cache/cgdiff)."""
  return os.path.join(inception_weights.cache_root(), "fid_stats")


def reference_stats(name: str, split: str, images_fn: Callable[[], Any], cache_dir: str | None = None, *,
                    num_images: int, variables: Any = None, batch_size: int = 50, quantize: bool = True,
                    progress: inception.Progress = None, chunk: int | None = None) -> FeatureStats:
  """Inception statistics of `num_images` real images of data set `name`, `split`, computed once, cached
  with their factor (the square root cov^{1/2} for n > D), so that each FID against them skips that eigh.

  The cache file `<cache_dir>/<name>_<split>_n<num_images>_<weights hash[:12]>[_float].npz` (cache_dir
  default: `default_stats_dir()`) is keyed by the data set, split, N, the weights (`params_hash`) and the
  quantisation; `images_fn()` is called only when it is absent and must return the `num_images` images
  [N, H, W, C] in [-1, 1]. `variables` default to `load_inception_params()`.

  With `chunk` (images, rounded up to whole batches), the features are saved chunk by chunk beside the
  cache file (`<cache file without .npz>_chunks/`, cgdiff.chunks) as they are computed, so that a killed
  computation (10k images are ~18 minutes on 2 CPU cores) resumes where it stopped; the chunks are
  deleted once the statistics are saved.
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
    if stats.factor is None:  # written before factors were cached: add it once
      stats = stats.with_factor()
      stats.save(path, **metadata)
    return stats
  images = images_fn()
  if np.shape(images)[0] != n:
    raise ValueError(f"images_fn() returned {np.shape(images)[0]} images for {name}/{split}, expected {n}.")
  if chunk is None:
    stats, store = inception_stats(variables, images, batch_size, quantize, progress), None
  else:
    store = chunks.ChunkStore(path[:-len(".npz")] + "_chunks", {**metadata, "batch_size": batch_size})
    stats = FeatureStats.from_features(inception_feature_chunks(
        store, variables, lambda start, stop: images[start:stop], n, batch_size, chunk, quantize, progress,
        label=f"reference features {name}/{split}"))
  stats = stats.with_factor()
  stats.save(path, **metadata)
  if store is not None:  # the statistics hold everything the chunks did
    shutil.rmtree(store.directory)
  return stats
