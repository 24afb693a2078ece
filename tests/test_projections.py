"""cgdiff.metrics.projections: PCA of flattened latents."""

from __future__ import annotations

import numpy as np
import pytest

from cgdiff.metrics import projections


def test_pca_recovers_the_principal_axes_of_a_known_gaussian():
  rng = np.random.default_rng(0)
  n = 20_000
  # Latents [n, 2, 2, 1] whose flattened covariance has eigenvalues 9, 4, 1, 0.25 along a random
  # orthonormal basis Q: PCA must return Q's first two columns (up to sign) and ratios 9/14.25, 4/14.25.
  q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
  scales = np.array([3.0, 2.0, 1.0, 0.5])
  latents = ((rng.normal(size=(n, 4)) * scales) @ q.T + 5.0).reshape(n, 2, 2, 1)
  pca = projections.fit_pca(latents, num_components=2)
  # A sample-covariance eigenvector i errs in angle by about sqrt(sum_j l_i l_j / (n (l_i - l_j)^2)):
  # 0.0088 for the first, 0.0099 for the second here; allow 4x (0.04), i.e. 1 - |cos| < 0.04^2 / 2.
  for k in range(2):
    assert 1.0 - abs(pca.components[k] @ q[:, k]) < 0.5 * 0.04**2
  np.testing.assert_allclose(pca.explained_variance_ratio, [9 / 14.25, 4 / 14.25], rtol=0.05)
  projected = pca.project(latents)
  assert projected.shape == (n, 2)
  np.testing.assert_allclose(projected.mean(axis=0), 0.0, atol=1e-9)
  np.testing.assert_allclose(projected.var(axis=0), [9.0, 4.0], rtol=0.05)  # 5% >> sqrt(2/n) = 1%


def test_pca_is_deterministic_in_sign_and_checks_its_input():
  latents = np.random.default_rng(1).normal(size=(100, 3))
  a, b = projections.fit_pca(latents), projections.fit_pca(latents.copy())
  np.testing.assert_array_equal(a.components, b.components)
  with pytest.raises(ValueError, match="NaN"):
    projections.fit_pca(np.full((4, 3), np.nan))
  with pytest.raises(ValueError, match="fitted on 3"):
    a.project(np.zeros((2, 4)))
  with pytest.raises(ValueError, match="num_components"):
    projections.fit_pca(latents, num_components=5)
