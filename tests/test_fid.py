"""FID (MATH.md section 7): the Frechet distance against closed forms, the TF-FID input pipeline against
hand-computed TF1 values, the torch-free TorchScript reader, and (when the weights are cached) the Flax
Inception against the TorchScript original."""

import io
import os
import pickle
import struct
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from cgdiff.metrics import fid, inception, inception_weights

EPS = np.finfo(np.float64).eps
# LAPACK's eigh / svd are backward stable: each computed eigen- or singular value of a D x D matrix A is
# off by at most c(D) eps |A|_2 with c(D) a modest polynomial in D; 100 D covers c(D) for D <= 2048.
LAPACK_FACTOR = 100


def _random_covariance(rng: np.random.Generator, dim: int) -> np.ndarray:
  a = rng.standard_normal((dim, dim))
  return a @ a.T / dim + 0.1 * np.eye(dim)  # eigenvalues >= 0.1: well conditioned


# ---------------------------------------------------------------------------------------------------
# Frechet distance.

def test_diagonal_gaussians_match_the_closed_form():
  """Commuting covariances: tr sqrt(C1 C2) = sum sqrt(d1 d2), so d^2 = |m1 - m2|^2 + |sqrt d1 - sqrt d2|^2."""
  rng = np.random.default_rng(0)
  dim = 8
  m1, m2 = rng.standard_normal(dim), rng.standard_normal(dim)
  d1, d2 = rng.uniform(0.1, 4.0, dim), rng.uniform(0.1, 4.0, dim)
  expected = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(d1) - np.sqrt(d2)) ** 2)
  # Diagonal inputs: the only rounding is LAPACK's, LAPACK_FACTOR * D * eps * max(d) per term.
  atol = LAPACK_FACTOR * dim * EPS * 4.0 * dim
  assert abs(fid.frechet_distance(m1, np.diag(d1), m2, np.diag(d2)) - expected) < atol


def test_commuting_covariances_match_the_closed_form():
  """C_i = Q diag(d_i) Q^T with one orthogonal Q: the same closed form as the diagonal case."""
  rng = np.random.default_rng(1)
  dim = 16
  q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
  d1, d2 = rng.uniform(0.1, 4.0, dim), rng.uniform(0.1, 4.0, dim)
  m1, m2 = rng.standard_normal(dim), rng.standard_normal(dim)
  value = fid.frechet_distance(m1, q @ np.diag(d1) @ q.T, m2, q @ np.diag(d2) @ q.T)
  expected = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(d1) - np.sqrt(d2)) ** 2)
  # Forming Q D Q^T rounds each entry by ~ D eps |d|; a perturbation delta of an eigenvalue lambda >= 0.1
  # moves sqrt(lambda) by delta / (2 sqrt(0.1)) < 2 delta; summed over D eigenvalues and both matrices.
  atol = LAPACK_FACTOR * dim * EPS * 4.0 * 2 * 2 * dim
  assert abs(value - expected) < atol


def test_one_dimensional_gaussians():
  """D = 1: d^2 = (m1 - m2)^2 + (s1 - s2)^2 for standard deviations s1, s2."""
  value = fid.frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([-0.5]), np.array([[0.25]]))
  assert abs(value - (1.5**2 + (2.0 - 0.5) ** 2)) < 10 * EPS * 4.5  # a handful of roundings of O(4.5)


def test_general_covariances_match_the_eigenvalues_of_the_product():
  """Non-commuting C1, C2: C1 C2 is similar to a PSD matrix, so its eigenvalues are real and >= 0 and
  tr sqrt(C1 C2) = sum sqrt(eig(C1 C2)), computed here by the non-symmetric eigensolver."""
  rng = np.random.default_rng(2)
  dim = 6
  c1, c2 = _random_covariance(rng, dim), _random_covariance(rng, dim)
  m1, m2 = rng.standard_normal(dim), rng.standard_normal(dim)
  trace_sqrt = np.sum(np.sqrt(np.linalg.eigvals(c1 @ c2).real))
  expected = np.sum((m1 - m2) ** 2) + np.trace(c1) + np.trace(c2) - 2 * trace_sqrt
  # The non-symmetric eigenvalues carry eps |C1 C2| times their condition numbers (< 10^2 for these
  # well-conditioned 6 x 6 covariances): 1e-10 absolute leaves ample room.
  np.testing.assert_allclose(fid.frechet_distance(m1, c1, m2, c2), expected, rtol=0, atol=1e-10)
  np.testing.assert_allclose(fid.frechet_distance(m1, c1, m2, c2), fid.frechet_distance(m2, c2, m1, c1),
                             rtol=0, atol=1e-12)


@pytest.mark.parametrize("num", [500, 20])  # full rank (N > D) and rank-deficient (N < D) covariances
def test_fid_of_a_set_against_itself_is_round_off(num):
  dim = 64
  features = np.random.default_rng(3).standard_normal((num, dim)) * np.linspace(0.1, 3.0, dim)
  stats = fid.FeatureStats.from_features(features)
  # tr C + tr C - 2 sum sigma(s s): each of the D singular values of s s = C is off by at most
  # LAPACK_FACTOR * D * eps |C|_2 (s carries errors of sqrt(eps |C|) only along directions whose
  # eigenvalue is round-off, and squaring brings them back to eps |C|), and so are the traces.
  tol = LAPACK_FACTOR * dim * EPS * np.linalg.norm(stats.cov, 2) * dim
  assert abs(fid.fid_from_features(features, features)) < tol
  assert abs(fid.fid_from_features(features, features[::-1])) < tol  # the same set, summed in another order


def _sqrtm_fid(stats1: fid.FeatureStats, stats2: fid.FeatureStats) -> float:
  """TTUR's FID: tr sqrtm(C1 C2) by scipy.linalg.sqrtm of the non-symmetric product, real part."""
  diff = stats1.mean - stats2.mean
  covmean = scipy.linalg.sqrtm(stats1.cov @ stats2.cov).real
  return float(diff @ diff + np.trace(stats1.cov) + np.trace(stats2.cov) - 2 * np.trace(covmean))


def _features(rng: np.random.Generator, num: int, scales: np.ndarray) -> np.ndarray:
  return rng.standard_normal((num, len(scales))) * scales + rng.standard_normal(len(scales))


# n1, n2 with D = 64: both n > D (one factor, the eigvalsh branch, with and without a cached square root),
# both n <= D (two feature factors: singular values), and one of each (a [20, 64] factor: a 20 x 20 eigvalsh).
@pytest.mark.parametrize("n1, n2, cache_sqrt", [(500, 700, False), (500, 700, True), (20, 30, False),
                                                 (64, 64, False), (20, 700, False), (700, 20, True)])
def test_fid_matches_scipy_sqrtm_on_random_statistics(n1, n2, cache_sqrt):
  """Against TTUR's sqrtm to 1e-6 relative (what FID needs). Both computations are backward stable:
  for full-rank covariances (n > D, condition ~ (3 / 0.1)^2 ~ 1e3) each is within ~ D eps kappa ~ 1e-11
  relative; for rank-deficient ones sqrtm is off by ~ sqrt(eps |C1 C2|) per zero eigenvalue (<= 64 of
  them, ~ 1e-7 each against tr sqrt(C1 C2) ~ 10^2): below 1e-7 relative. 1e-6 leaves room."""
  dim = 64
  rng = np.random.default_rng(9)
  stats1 = fid.FeatureStats.from_features(_features(rng, n1, np.linspace(0.1, 3.0, dim)))
  stats2 = fid.FeatureStats.from_features(_features(rng, n2, np.linspace(3.0, 0.1, dim)))
  assert (stats1.factor is not None) == (n1 <= dim) and (stats2.factor is not None) == (n2 <= dim)
  if cache_sqrt:
    stats1 = stats1.with_factor()
  np.testing.assert_allclose(fid.fid_from_stats(stats1, stats2), _sqrtm_fid(stats1, stats2), rtol=1e-6)
  np.testing.assert_allclose(fid.fid_from_stats(stats2, stats1), _sqrtm_fid(stats1, stats2), rtol=1e-6)


def test_rank_deficient_statistics_keep_the_singular_value_accuracy():
  """Commuting rank-deficient covariances C_i = Q diag(d_i) Q^T (d_i with zeros) have the closed form
  d^2 = |m1 - m2|^2 + |sqrt d1 - sqrt d2|^2. With factors diag(sqrt d_i) Q^T restricted to the nonzero
  d_i, the singular values of G1 G2^T carry eps |G1| |G2| each: LAPACK_FACTOR D eps |d| over D values.
  Without factors the eigvalsh branch meets zero eigenvalues of s1 C2 s1 and is off by up to
  sqrt(LAPACK_FACTOR D eps |C|^2) per zero eigenvalue: far looser, but within that bound."""
  rng = np.random.default_rng(10)
  dim = 32
  q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
  d1, d2 = rng.uniform(0.5, 4.0, dim), rng.uniform(0.5, 4.0, dim)
  d1[:12], d2[6:20] = 0.0, 0.0  # rank 20 and 18; their product has rank 14
  m1, m2 = rng.standard_normal(dim), rng.standard_normal(dim)
  expected = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(d1) - np.sqrt(d2)) ** 2)
  factor = lambda d: (np.sqrt(d)[:, None] * q.T)[d > 0]  # [r, D], factor^T factor = Q diag(d) Q^T
  c1, c2 = factor(d1).T @ factor(d1), factor(d2).T @ factor(d2)
  with_factors = fid.frechet_distance(m1, c1, m2, c2, factor(d1), factor(d2))
  assert abs(with_factors - expected) < LAPACK_FACTOR * dim * EPS * 4.0 * dim
  zero_eigenvalues = dim - 14
  loose = zero_eigenvalues * np.sqrt(LAPACK_FACTOR * dim * EPS * 16.0)
  assert abs(fid.frechet_distance(m1, c1, m2, c2) - expected) < loose


def test_feature_stats_carry_a_factor_of_their_covariance():
  rng = np.random.default_rng(11)
  few = fid.FeatureStats.from_features(rng.standard_normal((10, 16)))
  assert few.factor.shape == (10, 16)
  # F^T F sums 10 products of O(1) terms, as np.cov does: ~ 10 eps relative, 1e-12 leaves room.
  np.testing.assert_allclose(few.factor.T @ few.factor, few.cov, rtol=1e-12, atol=1e-12)
  assert few.with_factor() is few
  many = fid.FeatureStats.from_features(rng.standard_normal((40, 16)))
  assert many.factor is None
  root = many.with_factor().factor
  # psd_sqrt of a covariance with eigenvalues >= ~0.1: s s reproduces C to ~ D eps |C| / lambda_min.
  np.testing.assert_allclose(root @ root, many.cov, rtol=0, atol=1e-11)
  with pytest.raises(ValueError, match=r"factor1 must be \[r, 16\] with 1 <= r <= 16"):
    fid.frechet_distance(many.mean, many.cov, many.mean, many.cov, factor1=np.zeros((17, 16)))
  with pytest.raises(ValueError, match="cov2 is not positive semi-definite"):
    fid.frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.diag([1.0, -0.5]))


def _cached_real_statistics() -> list[str]:
  directory = fid.default_stats_dir()
  paths = sorted(os.path.join(directory, name) for name in os.listdir(directory)
                 if name.endswith(".npz")) if os.path.isdir(directory) else []
  # Statistics of n <= REAL_DIM images restrict to REAL_DIM features only with their feature factor (kept
  # since factors are cached; older files lack it).
  keep = lambda s: s.mean.shape == (inception.FEATURE_DIM,) and (s.n > REAL_DIM or s.factor is not None)
  return [p for p in paths if keep(fid.FeatureStats.load(p)[0])]


REAL_DIM = 256  # the first 256 Inception features: real statistics at a size scipy's sqrtm takes in ~1 s


@pytest.mark.skipif(len(_cached_real_statistics()) < 2, reason=(
    f"fewer than two cached Inception statistics of real images in {fid.default_stats_dir()}; the eval "
    "stage writes them (e.g. the quickstart eval with --config.eval.num_reference=64 and =512)"))
def test_fid_matches_scipy_sqrtm_on_real_statistics():
  """Two cached real-image statistics, restricted to their first REAL_DIM features, as from_features would
  give them (a feature factor [n, REAL_DIM] when n <= REAL_DIM): tolerance as for the random case. A
  stored feature factor restricts to its first columns; a square root [D, D] does not (its columns are
  not a square root of the block)."""
  stats = []
  for path in _cached_real_statistics()[:2]:
    s, _ = fid.FeatureStats.load(path)
    factor = s.factor[:, :REAL_DIM] if s.n <= REAL_DIM else None  # n <= REAL_DIM < 2048: features
    stats.append(fid.FeatureStats(s.mean[:REAL_DIM], s.cov[:REAL_DIM, :REAL_DIM], s.n, factor))
  np.testing.assert_allclose(fid.fid_from_stats(*stats), _sqrtm_fid(*stats), rtol=1e-6)
  np.testing.assert_allclose(fid.fid_from_stats(stats[0].with_factor(), stats[1]), _sqrtm_fid(*stats),
                             rtol=1e-6)


def test_streaming_statistics_equal_numpy_mean_and_cov():
  features = np.random.default_rng(4).standard_normal((103, 5)) * 10.0 + 50.0  # a large mean
  accumulator = fid.FeatureAccumulator(5)
  bounds = [0, 1, 30, 64, 103]  # uneven batches, one of a single row
  for start, stop in zip(bounds[:-1], bounds[1:]):
    accumulator.update(features[start:stop])
  stats = accumulator.stats()
  # Both are float64 sums of O(N) terms of size O(|x|^2): relative error ~ N eps ~ 1e-13.
  np.testing.assert_allclose(stats.mean, features.mean(axis=0), rtol=1e-12)
  np.testing.assert_allclose(stats.cov, np.cov(features, rowvar=False), rtol=1e-11, atol=1e-11)
  assert stats.n == 103


def test_bad_inputs_are_errors():
  good = np.eye(2)
  with pytest.raises(ValueError, match=r"must be \[N, D\]"):
    fid.FeatureStats.from_features(np.zeros((4, 2, 2)))
  with pytest.raises(ValueError, match="at least 2"):
    fid.FeatureStats.from_features(np.zeros((1, 3)))
  with pytest.raises(ValueError, match="NaN or inf"):
    fid.FeatureStats.from_features(np.full((3, 2), np.nan))
  with pytest.raises(ValueError, match="NaN or inf"):
    fid.frechet_distance(np.zeros(2), np.full((2, 2), np.nan), np.zeros(2), good)
  with pytest.raises(ValueError, match="cov2 must be"):
    fid.frechet_distance(np.zeros(2), good, np.zeros(2), np.eye(3))
  with pytest.raises(ValueError, match="mu1 and mu2"):
    fid.frechet_distance(np.zeros(2), good, np.zeros(3), good)
  with pytest.raises(ValueError, match="not positive semi-definite"):
    fid.frechet_distance(np.zeros(2), np.diag([1.0, -0.5]), np.zeros(2), good)
  with pytest.raises(ValueError, match="same D"):
    fid.fid_from_features(np.zeros((3, 2)), np.zeros((3, 4)))


def _fixed_feature_map(monkeypatch, features: np.ndarray) -> dict:
  """Replaces the network by a fixed feature map (no weights needed): inception_stats returns the
  statistics of `features` whatever the images. Returns stand-in variables."""
  monkeypatch.setattr(fid, "inception_stats",
                      lambda variables, images, *args: fid.FeatureStats.from_features(features))
  return {"params": {"w": np.ones(3, np.float32)}}


def test_reference_stats_are_cached_by_data_set_split_n_and_weights(tmp_path, monkeypatch):
  """The caching logic, with the network replaced by a fixed feature map."""
  variables = _fixed_feature_map(monkeypatch, np.random.default_rng(5).standard_normal((6, 4)))
  images = np.zeros((6, 8, 8, 3), np.float32)
  first = fid.reference_stats("toy", "test", lambda: images, str(tmp_path), num_images=6, variables=variables)

  def must_not_run():
    raise AssertionError("images_fn called although the statistics are cached")

  again = fid.reference_stats("toy", "test", must_not_run, str(tmp_path), num_images=6, variables=variables)
  np.testing.assert_array_equal(again.cov, first.cov)
  assert len(list(tmp_path.iterdir())) == 1
  other_weights = {"params": {"w": np.zeros(3, np.float32)}}  # another weights hash: another file
  fid.reference_stats("toy", "test", lambda: images, str(tmp_path), num_images=6, variables=other_weights)
  assert len(list(tmp_path.iterdir())) == 2
  with pytest.raises(ValueError, match="returned 6 images"):
    fid.reference_stats("toy", "train", lambda: images, str(tmp_path), num_images=5, variables=variables)


def test_reference_stats_cache_their_factor(tmp_path, monkeypatch):
  """n > D: the square root is computed once and stored with the statistics; a file written before
  factors were cached gets it added on first use."""
  variables = _fixed_feature_map(monkeypatch, np.random.default_rng(12).standard_normal((9, 4)))
  images = np.zeros((9, 8, 8, 3), np.float32)
  stats = fid.reference_stats("toy", "test", lambda: images, str(tmp_path), num_images=9, variables=variables)
  (path,) = tmp_path.iterdir()
  stored, metadata = fid.FeatureStats.load(str(path))
  np.testing.assert_array_equal(stored.factor, fid.psd_sqrt(stats.cov))
  fid.FeatureStats(stored.mean, stored.cov, stored.n).save(str(path), **metadata)  # an old file
  assert fid.FeatureStats.load(str(path))[0].factor is None
  upgraded = fid.reference_stats("toy", "test", None, str(tmp_path), num_images=9, variables=variables)
  np.testing.assert_array_equal(upgraded.factor, stored.factor)
  np.testing.assert_array_equal(fid.FeatureStats.load(str(path))[0].factor, stored.factor)


def test_reference_stats_resume_from_their_feature_chunks(tmp_path, monkeypatch):
  """A computation killed after its first chunk keeps it: the rerun computes only the other chunks and
  saves the statistics of the uninterrupted computation, bit for bit; the chunks are deleted then."""
  rng = np.random.default_rng(3)
  images = rng.uniform(-1, 1, (10, 4, 4, 1)).astype(np.float32)
  variables = {"params": {"w": np.ones(3, np.float32)}}
  calls = []

  def features(variables, images, batch_size, quantize, progress):  # a deterministic stand-in network
    calls.append(len(images))
    if len(calls) == 2 and killed:
      raise KeyboardInterrupt("killed")
    return images.reshape(len(images), -1)[:, :5] * 2.0

  monkeypatch.setattr(inception, "inception_features", features)
  killed = False
  expected = fid.reference_stats("toy", "test", lambda: images, str(tmp_path / "whole"), num_images=10,
                                 variables=variables, batch_size=2, chunk=3)  # chunks of 4: 4 + 4 + 2
  assert calls == [4, 4, 2]
  calls.clear()
  killed = True
  with pytest.raises(KeyboardInterrupt):
    fid.reference_stats("toy", "test", lambda: images, str(tmp_path / "killed"), num_images=10,
                        variables=variables, batch_size=2, chunk=3)
  (chunk_dir,) = (tmp_path / "killed").iterdir()
  assert sorted(p.name for p in chunk_dir.glob("*.npy")) == ["features_000000_000004.npy"]
  calls.clear()
  killed = False
  resumed = fid.reference_stats("toy", "test", lambda: images, str(tmp_path / "killed"), num_images=10,
                                variables=variables, batch_size=2, chunk=3)
  assert calls == [4, 2]
  for field in ("mean", "cov", "factor"):
    np.testing.assert_array_equal(getattr(resumed, field), getattr(expected, field))
  assert [p.suffix for p in (tmp_path / "killed").iterdir()] == [".npz"]


# ---------------------------------------------------------------------------------------------------
# Input pipeline of the TF-FID graph.

def test_resize_is_tf1_legacy_bilinear_by_hand():
  """TF1 resize_bilinear(align_corners=False, half_pixel_centers=False): output i reads input i * in/out.

  4 -> 3: sources 0, 4/3, 8/3, so [0, 3, 6, 9] -> [0, 3 + 3/3, 6 + 3 (2/3)] = [0, 4, 8].
  2 -> 3: sources 0, 2/3, 4/3 (upper index clamped to 1), so [0, 3] -> [0, 2, 3].
  Half-pixel centres (jax.image.resize) put them at (i + 1/2) in/out - 1/2 and give other values.
  """
  row = jnp.asarray([0.0, 3.0, 6.0, 9.0]).reshape(1, 1, 4, 1)
  # The sources i * 4/3 are float32 roundings of 4/3 and 8/3: weights off by ~ eps32, values by ~ 9 eps32.
  np.testing.assert_allclose(np.ravel(inception.tf1_resize_bilinear(row, (1, 3))), [0, 4, 8], atol=1e-5)
  up = jnp.asarray([0.0, 3.0]).reshape(1, 2, 1, 1)
  np.testing.assert_allclose(np.ravel(inception.tf1_resize_bilinear(up, (3, 1))), [0, 2, 3], atol=1e-5)
  half_pixel = np.ravel(jax.image.resize(up, (1, 3, 1, 1), "bilinear"))
  np.testing.assert_allclose(half_pixel, [0, 1.5, 3], atol=1e-5)  # the half-pixel answer differs
  # 2-D: bilinear interpolation reproduces an affine image exactly inside the grid: 10 y + x, 4x4 -> 3x3.
  grid = (10.0 * jnp.arange(4.0)[:, None] + jnp.arange(4.0)[None, :]).reshape(1, 4, 4, 1)
  src = np.array([0.0, 4 / 3, 8 / 3])
  np.testing.assert_allclose(inception.tf1_resize_bilinear(grid, (3, 3))[0, :, :, 0],
                             10 * src[:, None] + src[None, :], atol=1e-4)


def test_preprocess_maps_uint8_images_to_the_graph_input():
  """At 299 x 299 the resize is the identity, so pixel u in {0..255} (as the data pipeline's u/127.5 - 1)
  reaches the network as (u - 128) / 128 exactly; grey is repeated to RGB."""
  u = np.random.default_rng(6).integers(0, 256, (2, 299, 299, 1)).astype(np.float32)
  images = u / np.float32(127.5) - np.float32(1.0)
  out = np.asarray(inception.preprocess(jnp.asarray(images)))
  assert out.shape == (2, 299, 299, 3)
  np.testing.assert_array_equal(out, np.repeat((u - 128) / 128, 3, axis=-1))
  # Quantisation: (x + 1) 127.5 = 10.4 rounds to 10 unless quantize=False.
  x = jnp.full((1, 299, 299, 3), 10.4 / 127.5 - 1)
  assert float(inception.preprocess(x)[0, 0, 0, 0]) == (10 - 128) / 128
  np.testing.assert_allclose(float(inception.preprocess(x, quantize=False)[0, 0, 0, 0]), (10.4 - 128) / 128,
                             atol=1e-5)
  with pytest.raises(ValueError, match="C in"):
    inception.preprocess(jnp.zeros((1, 8, 8, 2)))


# ---------------------------------------------------------------------------------------------------
# The torch-free TorchScript reader, on a tiny file written opcode by opcode (pickle protocol 2).

def _global(module: str, name: str) -> bytes:
  return b"c" + f"{module}\n{name}\n".encode()


def _pickle(value) -> bytes:
  """Opcodes for str / int / bool / None / tuple / list / dict and the markers below."""
  if isinstance(value, bool):
    return b"\x88" if value else b"\x89"
  if isinstance(value, int):
    return b"J" + struct.pack("<i", value)
  if isinstance(value, str):
    return b"X" + struct.pack("<I", len(value.encode())) + value.encode()
  if value is None:
    return b"N"
  if isinstance(value, tuple) and value and value[0] == "<module>":  # ("<module>", module, name, state)
    return _global(value[1], value[2]) + b")\x81" + _pickle(value[3]) + b"b"  # NEWOBJ, then BUILD
  if isinstance(value, tuple) and value and value[0] == "<tensor>":  # (., key, numel, offset, size, stride)
    _, key, numel, offset, size, stride = value
    storage = b"(" + _pickle("storage") + _global("torch", "FloatStorage") + _pickle(key) + _pickle("cpu")
    storage += _pickle(numel) + b"tQ"  # TUPLE, BINPERSID
    hooks = _global("collections", "OrderedDict") + b")R"
    args = storage + _pickle(offset) + _pickle(size) + _pickle(stride) + _pickle(False) + hooks
    return _global("torch._utils", "_rebuild_tensor_v2") + b"(" + args + b"tR"
  if isinstance(value, tuple) and value and value[0] == "<intlist>":
    return _global("torch.jit._pickle", "build_intlist") + b"(" + _pickle(list(value[1])) + b"tR"
  if isinstance(value, tuple):
    return b"(" + b"".join(_pickle(v) for v in value) + b"t"
  if isinstance(value, list):
    return b"](" + b"".join(_pickle(v) for v in value) + b"e"
  if isinstance(value, dict):
    return b"}(" + b"".join(_pickle(k) + _pickle(v) for k, v in value.items()) + b"u"
  raise TypeError(value)


def _torchscript_zip(root, storages: dict[str, bytes]) -> bytes:
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, "w") as archive:
    archive.writestr("archive/data.pkl", b"\x80\x02" + _pickle(root) + b".")
    for key, data in storages.items():
      archive.writestr(f"archive/data/{key}", data)
    archive.writestr("archive/version", b"3\n")
  return buffer.getvalue()


def _tiny_net(weight_spec=("<tensor>", "0", 12, 2, (2, 3), (1, 2))):
  conv = ("<module>", "__torch__.inceptionv3", "Conv2dLayer",
          {"weight": weight_spec, "beta": ("<tensor>", "0", 12, 0, (4,), (3,)), "training": False,
           "stride": 2, "padding": ("<intlist>", (0, 1))})
  layers = ("<module>", "__torch__.torch.nn.modules.container.___torch_mangle_9", "Sequential",
            {"training": False, "conv": conv})
  net = ("<module>", "__torch__.inceptionv3", "InceptionV3", {"layers": layers})
  return ("<module>", "__torch__.wrap_net", "WrapNet", {"training": False, "net": net})


def test_torchscript_reader_rebuilds_strided_tensors_and_modules():
  storage = np.arange(12, dtype="<f4")
  root = inception_weights.read_torchscript(_torchscript_zip(_tiny_net(), {"0": storage.tobytes()}))
  conv = root.net.layers.conv
  assert conv.torch_type == "__torch__.inceptionv3.Conv2dLayer"
  assert root.net.layers.torch_type.endswith("___torch_mangle_9.Sequential")
  # weight: offset 2, size (2, 3), strides (1, 2): w[i, j] = storage[2 + i + 2 j]; beta: storage[0::3].
  np.testing.assert_array_equal(conv.weight, [[2, 4, 6], [3, 5, 7]])
  np.testing.assert_array_equal(conv.beta, [0, 3, 6, 9])
  assert conv.stride == 2 and conv.padding == [0, 1] and conv.training is False


def test_torchscript_reader_refuses_other_globals_and_overruns():
  evil = ("<module>", "os", "system", {})
  with pytest.raises(pickle.UnpicklingError, match="os.system is not allowed"):
    inception_weights.read_torchscript(_torchscript_zip(evil, {}))
  overrun = _tiny_net(("<tensor>", "0", 12, 8, (2, 3), (1, 2)))  # last element at 8 + 1 + 4 = 13 > 11
  with pytest.raises(pickle.UnpicklingError, match="overruns its storage"):
    inception_weights.read_torchscript(_torchscript_zip(overrun, {"0": np.zeros(12, "<f4").tobytes()}))
  with pytest.raises(ValueError, match="not a TorchScript file"):
    inception_weights.read_torchscript(b"not a zip")


def test_missing_weights_name_the_fetch_command(tmp_path):
  with pytest.raises(FileNotFoundError, match="python -m cgdiff.metrics.inception_weights"):
    inception_weights.load_inception_params(cache_dir=str(tmp_path))


# ---------------------------------------------------------------------------------------------------
# The real network: needs the converted weights (`python -m cgdiff.metrics.inception_weights`).

CACHE_DIR = inception_weights.default_cache_dir()
CACHED_NPZ = os.path.join(CACHE_DIR, inception_weights.CACHE_NAME)
CACHED_PT = os.path.join(CACHE_DIR, inception_weights.PT_NAME)
needs_weights = pytest.mark.skipif(
    not os.path.exists(CACHED_NPZ),
    reason=f"no converted Inception weights at {CACHED_NPZ}; run `{inception_weights.FETCH_COMMAND}`")
BATCH = 2  # every real-network test runs batches of 2: one compilation of the network per process


@pytest.fixture(scope="module")
def variables():
  return jax.device_put(inception_weights.load_inception_params())  # checks the parameter hash


@pytest.mark.skipif(not os.path.exists(CACHED_PT), reason=f"no cached default_1.pt at {CACHED_PT}; run "
                    f"`{inception_weights.FETCH_COMMAND}`")
def test_the_real_torchscript_file_converts_to_the_standard_parameters():
  params, geometry = inception_weights.torch_to_flax(inception_weights.read_torchscript(CACHED_PT))
  assert inception_weights.params_hash(params) == inception_weights.PARAMS_SHA256
  shapes, expected_geometry = inception.parameter_layout()
  assert {k: v.shape for k, v in inception_weights.flatten(params).items()} == shapes
  assert geometry == expected_geometry


@needs_weights
def test_features_do_not_depend_on_batch_composition(variables):
  """3 images in batches of 2 (the last padded): each image's features are the same in any order."""
  images = np.random.default_rng(7).uniform(-1, 1, (3, 32, 32, 3)).astype(np.float32)
  seen = []
  features = inception.inception_features(variables, images, batch_size=BATCH,
                                          progress=lambda done, total: seen.append((done, total)))
  assert features.shape == (3, inception.FEATURE_DIM) and np.all(np.isfinite(features))
  assert np.all(features >= 0)  # an average of ReLU outputs
  assert seen == [(2, 3), (3, 3)]
  reordered = inception.inception_features(variables, images[::-1], batch_size=BATCH)[::-1]
  # Per-example convolutions do not mix the batch; allow float32 reassociation of the kernels (1e-5).
  np.testing.assert_allclose(reordered, features, rtol=1e-5, atol=1e-5 * features.max())


@needs_weights
@pytest.mark.skipif(not os.path.exists(CACHED_PT), reason=f"no cached default_1.pt at {CACHED_PT}")
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_flax_features_match_the_torchscript_network(variables):
  """The same preprocessed inputs through torch.jit.load(default_1.pt) and the Flax module.

  Tolerance 1e-4 of the feature scale: both are float32 with different summation orders (oneDNN vs
  XLA); each conv sums up to 3 * 3 * 448 products, a relative rounding of ~ sqrt(K) eps32 ~ 1e-5 per layer,
  which the network's 94 conv-BN-ReLU layers keep at that order rather than amplify (max |diff| measured
  ~ 1e-6 of max |feature|). Optional: needs the `torch` extra.
  """
  torch = pytest.importorskip("torch")
  images = np.random.default_rng(8).uniform(-1, 1, (BATCH, 299, 299, 3)).astype(np.float32)
  x = np.asarray(inception.preprocess(jnp.asarray(images)))
  flax_features = np.asarray(inception.pool3(variables, jnp.asarray(x)))
  model = torch.jit.load(CACHED_PT, map_location="cpu").eval()
  with torch.no_grad():
    torch_features = model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
  scale = np.abs(torch_features).max()
  assert np.abs(flax_features - torch_features).max() < 1e-4 * scale
