"""experiments.claims: the documents' orderings and the protocol's rule for when two rows differ."""

from __future__ import annotations

from experiments import claims, fmnist_rows, fmnist_tables

LOWER = claims.Claim("lsi", "c", "fid", "lower", "test")
SAME = claims.Claim("a", "b", "fid", "same", "test")


def test_rows_differ_when_means_are_twice_the_larger_sd_apart():
  # sds: [10, 12] -> 1.414, [7, 7.4] -> 0.283; 2 x 1.414 = 2.83.
  assert claims.separated([7.0, 7.4], [10.0, 12.0])        # |7.2 - 11| = 3.8 >= 2.83
  assert not claims.separated([8.4, 8.8], [10.0, 12.0])    # |8.6 - 11| = 2.4 < 2.83
  assert claims.separated([7.0], [10.0, 12.0]) is None      # one seed: no spread to judge by


def test_verdicts_of_a_lower_claim():
  assert claims.verdict(LOWER, [7.0, 7.4], [10.0, 12.0]) == "holds"
  assert claims.verdict(LOWER, [14.0, 14.2], [10.0, 12.0]) == "reversed"   # 14.1 - 11 = 3.1 >= 2.83
  assert claims.verdict(LOWER, [8.4, 8.8], [10.0, 12.0]) == "not separated"
  assert claims.verdict(LOWER, [10.0, 10.0], [10.0, 10.0]) == "not separated"  # equal, no spread
  assert claims.verdict(LOWER, [7.0], [10.0, 12.0]) == f"needs {claims.MIN_SEEDS} seeds"


def test_verdicts_of_a_same_claim():
  assert claims.verdict(SAME, [9.0, 9.2], [9.1, 9.3]) == "holds"            # 0.1 < 2 x 0.141
  assert claims.verdict(SAME, [9.0, 9.2], [12.0, 12.2]) == "fails: separated"
  assert claims.verdict(SAME, [9.0, 9.0], [9.0, 9.0]) == "holds"


def test_every_claim_names_rows_of_the_table_and_a_metric_the_table_prints():
  for claim in claims.CLAIMS:
    assert claim.first in fmnist_rows.BY_NAME and claim.second in fmnist_rows.BY_NAME, claim
    assert claim.metric in fmnist_tables.CLAIM_METRICS, claim
  # 002's numbers of a claim come from its Table 1 as fmnist_rows holds it.
  assert claims.paper_value("c", "fid") == 13.45 and claims.paper_value("cg_scalar", "fid") is None
