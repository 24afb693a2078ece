"""Fixed evaluation noise banks (cgdiff.metrics.banks): generated once, stored, read back, checked."""

from __future__ import annotations

import numpy as np
import pytest

from cgdiff import records
from cgdiff.metrics import banks


def test_a_bank_is_generated_once_then_read_back(tmp_path, monkeypatch):
  first = banks.noise_bank(str(tmp_path), "prior", (6, 2, 2, 3), seed=1)
  assert first.noise.shape == (6, 2, 2, 3) and first.noise.dtype == np.float32
  assert first.sha256 == records.array_sha256(first.noise)

  def must_not_run(*args):
    raise AssertionError("the bank was generated again although it is stored")

  monkeypatch.setattr(banks, "generate", must_not_run)
  again = banks.noise_bank(str(tmp_path), "prior", (6, 2, 2, 3), seed=1)
  assert again.sha256 == first.sha256 and again.path == first.path
  np.testing.assert_array_equal(again.noise, first.noise)
  assert again.describe() == {"name": "prior", "seed": 1, "shape": [6, 2, 2, 3], "path": first.path,
                              "sha256": first.sha256}


def test_names_and_seeds_draw_independent_streams(tmp_path):
  shape = (2000, 4)
  prior = banks.noise_bank(str(tmp_path), "prior", shape).noise
  posterior = banks.noise_bank(str(tmp_path), "posterior_test", shape).noise
  other_seed = banks.noise_bank(str(tmp_path), "prior", shape, seed=1).noise
  # Independent N(0, 1) streams: the sample correlation of n = 8000 pairs has sd 1 / sqrt(n) ~ 0.011;
  # 0.06 is over 5 sd. Identical or shifted streams would correlate at ~1.
  for other in (posterior, other_seed):
    assert abs(np.corrcoef(prior.ravel(), other.ravel())[0, 1]) < 0.06
  # The moments of N(0, 1) to 5 standard errors: the mean's se is 1 / sqrt(n), the variance's sqrt(2 / n).
  n = prior.size
  assert abs(prior.mean()) < 5 / np.sqrt(n) and abs(prior.var() - 1) < 5 * np.sqrt(2 / n)


def test_a_changed_bank_is_an_error(tmp_path):
  bank = banks.noise_bank(str(tmp_path), "prior", (4, 3))
  noise = bank.noise.copy()
  noise[0, 0] += 1.0
  np.save(bank.path, noise)
  with pytest.raises(ValueError, match="is not the bank written there"):
    banks.noise_bank(str(tmp_path), "prior", (4, 3))


@pytest.mark.parametrize("name, shape, seed", [("../x", (2,), 0), ("prior", (), 0), ("prior", (0, 2), 0),
                                               ("prior", (2,), -1)])
def test_bad_bank_requests_are_errors(tmp_path, name, shape, seed):
  with pytest.raises(ValueError, match="a bank needs"):
    banks.noise_bank(str(tmp_path), name, shape, seed)
