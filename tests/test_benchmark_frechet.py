"""benchmarks/frechet.py runs and its implementations agree (no timing is asserted)."""

from __future__ import annotations

import json

import numpy as np

from benchmarks import frechet


def test_the_frechet_benchmark_runs_and_its_implementations_agree(tmp_path):
  out = tmp_path / "frechet.json"
  result = frechet.main(["--dim", "24", "--sqrtm", "--out", str(out)])
  assert json.loads(out.read_text())["dim"] == 24
  assert {"numpy eigvalsh", "jax eigvalsh", "numpy svd_values", "jax matmul"} <= set(result["primitives"])
  ways = result["compositions"]
  assert set(ways) == {"old", "factor_svd", "factor_eigvalsh", "factor_eigvalsh_jax", "fid_uncached",
                       "scipy_sqrtm"}
  # Full-rank covariances with eigenvalues k^-1.5 (condition 24^1.5 ~ 120): every way is backward stable,
  # ~ D eps kappa ~ 1e-12 relative of tr sqrt(C1 C2); 1e-9 leaves room.
  old = ways["old"]["trace_sqrt"]
  for name, row in ways.items():
    np.testing.assert_allclose(row["trace_sqrt"], old, rtol=1e-9, err_msg=name)
    assert row["seconds"] >= 0
