"""Sliced Wasserstein-2 (MATH.md section 7): exact values where they are known."""

import numpy as np
import pytest

from cgdiff.metrics import sw2


def test_identical_sets_are_at_distance_zero():
  x = np.random.default_rng(0).standard_normal((500, 4, 4, 2))
  bank = sw2.projection_bank(32, 64)
  assert sw2.sliced_wasserstein2(x, x, bank) == 0.0
  # A permuted copy: the same projections up to the matmul's float64 rounding (eps |x| ~ 1e-15, squared).
  assert sw2.sliced_wasserstein2(x, x[::-1], bank) < 1e-28


def test_a_shifted_set_is_at_the_mean_squared_projected_shift():
  """Sorting commutes with a shift, so SW2^2(x, x + m) = mean_w (w . m)^2 exactly for the bank; over random
  directions its expectation is |m|^2 / D (here checked to the bank's sampling error)."""
  rng = np.random.default_rng(1)
  x = rng.standard_normal((1000, 8))
  m = rng.standard_normal(8)
  bank = sw2.projection_bank(8, 4096, seed=3)
  value = sw2.sliced_wasserstein2(x, x + m, bank)
  np.testing.assert_allclose(value, np.mean((bank @ m) ** 2), rtol=1e-10)
  # (w . m)^2 / |m|^2 ~ Beta(1/2, (D-1)/2): variance 2(D-1)/(D^2 (D+2)); 5 standard errors over 4096 directions.
  d = 8
  se = np.sqrt(2 * (d - 1) / (d**2 * (d + 2)) / 4096) * m @ m
  assert abs(value - m @ m / d) < 5 * se


def test_the_bank_is_fixed_by_its_seed():
  np.testing.assert_array_equal(sw2.projection_bank(5, 7, seed=2), sw2.projection_bank(5, 7, seed=2))
  np.testing.assert_allclose(np.linalg.norm(sw2.projection_bank(5, 7), axis=1), 1.0)


def test_the_floor_is_the_spread_over_sets():
  """sw2.floor: one SW2^2 per set against the reference, their mean and sample sd (ddof 1)."""
  rng = np.random.default_rng(4)
  reference = rng.standard_normal((200, 3))
  sets = [rng.standard_normal((200, 3)) for _ in range(4)]
  bank = sw2.projection_bank(3, 16)
  floor = sw2.floor(sets, reference, bank)
  values = [sw2.sliced_wasserstein2(x, reference, bank) for x in sets]
  assert floor["values"] == values
  assert floor["mean"] == np.mean(values) and floor["std"] == np.std(values, ddof=1)
  assert sw2.floor(sets[:1], reference, bank)["std"] is None  # no spread from a single draw
  with pytest.raises(ValueError, match="at least one set"):
    sw2.floor([], reference, bank)


def test_the_tail_split_of_one_far_sample():
  """In 1-D with the identity direction, the sorted gaps are known: moving only the largest sample of x by
  K puts all of SW2^2 (K^2 / N) in the top rank, so the trimmed value is 0 and the tail's share 1; a shift
  m of every sample gives the gap m^2 at every rank, so the trimmed value is m^2 and the share is the
  left-out fraction of the ranks, 2 * round(N tail / 2) / N."""
  n, direction = 1000, np.ones((1, 1))
  y = np.arange(n, dtype=np.float64)[:, None]
  x = y.copy()
  x[-1] += 30.0
  split = sw2.tail_split(x, y, direction, tail=0.01)
  assert split["squared"] == pytest.approx(900.0 / n, rel=1e-12)
  assert split["squared"] == sw2.sliced_wasserstein2(x, y, direction)
  assert split["trimmed"] == 0.0 and split["tail_share"] == pytest.approx(1.0, rel=1e-12)
  shifted = sw2.tail_split(y + 0.5, y, direction, tail=0.01)
  assert shifted["trimmed"] == pytest.approx(0.25, rel=1e-12)
  assert shifted["tail_share"] == pytest.approx(10 / n, rel=1e-12)  # 5 ranks at each end
  # A tail too small to round to a rank still leaves out one at each end.
  assert sw2.tail_split(x, y, direction, tail=1e-6)["trimmed"] == 0.0


def test_the_floor_with_a_tail_splits_every_set():
  rng = np.random.default_rng(5)
  reference = rng.standard_normal((300, 4))
  sets = [rng.standard_normal((300, 4)) for _ in range(3)]
  bank = sw2.projection_bank(4, 32)
  floor = sw2.floor(sets, reference, bank, tail=0.02)
  splits = [sw2.tail_split(x, reference, bank, 0.02) for x in sets]
  assert floor["values"] == pytest.approx([sw2.sliced_wasserstein2(x, reference, bank) for x in sets], rel=1e-12)
  assert floor["trimmed"]["values"] == [s["trimmed"] for s in splits]
  assert floor["tail_share"]["mean"] == pytest.approx(np.mean([s["tail_share"] for s in splits]), rel=1e-12)
  assert floor["trimmed"]["std"] == pytest.approx(np.std([s["trimmed"] for s in splits], ddof=1), rel=1e-12)


def test_bad_inputs_are_errors():
  bank = sw2.projection_bank(2, 4)
  with pytest.raises(ValueError, match="same shape"):
    sw2.sliced_wasserstein2(np.zeros((3, 2)), np.zeros((4, 2)), bank)
  with pytest.raises(ValueError, match="NaN or inf"):
    sw2.sliced_wasserstein2(np.full((3, 2), np.nan), np.zeros((3, 2)), bank)
  with pytest.raises(ValueError, match="directions must have shape"):
    sw2.sliced_wasserstein2(np.zeros((3, 3)), np.zeros((3, 3)), bank)
  with pytest.raises(ValueError, match="tail must be a fraction"):
    sw2.tail_split(np.zeros((3, 2)), np.zeros((3, 2)), bank, tail=1.0)
  with pytest.raises(ValueError, match="leaves no central rank"):
    sw2.tail_split(np.zeros((2, 2)), np.zeros((2, 2)), bank, tail=0.5)
