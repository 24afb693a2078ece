"""The source documents' orderings of the Fashion-MNIST rows, and the rule for when two rows differ.

A claim says one row scores lower (better) than another on one metric, or that two rows score the same.
`verdict` judges a claim on our seeds with the protocol's one rule (issue 15): two rows differ when their
means are at least twice the spread between seeds apart, the spread being the larger of the two rows'
sample standard deviations. The program driver uses the same rule (`separated`) to decide which rows
need a third seed, and `experiments.tables` prints every claim's verdict: the README's discussion rests
on that table.
"""

from __future__ import annotations

import dataclasses
import statistics
from typing import Literal, Sequence

from experiments import fmnist_rows

# A verdict needs this many seeds of each row: one seed has no spread to compare a difference with.
MIN_SEEDS = 2


@dataclasses.dataclass(frozen=True)
class Claim:
  """`first` scores lower than `second` on `metric` (relation "lower"), or the two score the same
  ("same"). metric: an eval record's `metrics` key (fid, recon_fid, sw2_squared). source: where the
  document says it."""
  first: str
  second: str
  metric: str
  relation: Literal["lower", "same"]
  source: str


# 002 section 6.2's findings 1-4 and its Table 1; 000/001's premise that the critic-gate target trains a
# better score than Tweedie's. Lower is better for every metric here.
CLAIMS = (
    Claim("a", "c", "fid", "lower", "002 finding 1: co-training beats two-stage"),
    Claim("b", "c", "fid", "lower", "002 finding 1"),
    Claim("a", "c", "sw2_squared", "lower", "002 finding 1"),
    Claim("b", "c", "sw2_squared", "lower", "002 finding 1"),
    Claim("lsi", "c", "fid", "lower", "002 finding 2: LSI beats Tweedie two-stage"),
    Claim("lsi", "c", "sw2_squared", "lower", "002 finding 2"),
    Claim("a", "lsi", "fid", "lower", "002 finding 2: the gain is in co-training"),
    Claim("a", "b", "sw2_squared", "lower", "002 finding 3: LSI beats Tweedie on a's latent"),
    Claim("a", "b", "fid", "same", "002 finding 3: FID within noise"),
    Claim("d", "a", "sw2_squared", "lower", "002 finding 4: (d) has the lowest SW2, (a) the next"),
    Claim("c", "d", "fid", "lower", "002 finding 4: (d) has the worst FID"),
    Claim("c", "a", "recon_fid", "lower", "002 Table 1: modified KL costs reconstruction"),
    Claim("cg_scalar", "c", "fid", "lower", "000/001: critic-gate beats Tweedie"),
    Claim("cg_element", "c", "fid", "lower", "000/001"),
    Claim("cg_prior", "c", "fid", "lower", "001 (its prior CSEM; MATH.md errata 4 doubts it)"),
)


def threshold(first: Sequence[float], second: Sequence[float]) -> float | None:
  """Twice the larger of the two rows' sample sds: how far apart their means must be to differ. None
  when either row has fewer than MIN_SEEDS seeds."""
  if len(first) < MIN_SEEDS or len(second) < MIN_SEEDS:
    return None
  return 2 * max(statistics.stdev(first), statistics.stdev(second))


def separated(first: Sequence[float], second: Sequence[float]) -> bool | None:
  """Whether two rows' seeds differ: |mean difference| >= `threshold` (the issue's rule as written, so two
  rows with no spread and equal means count as separated: a third seed cannot split them). None when
  either row has fewer than MIN_SEEDS seeds."""
  bound = threshold(first, second)
  return None if bound is None else abs(statistics.fmean(first) - statistics.fmean(second)) >= bound


def verdict(claim: Claim, first: Sequence[float], second: Sequence[float]) -> str:
  """'holds', 'reversed' (a "lower" claim whose rows differ the other way), 'not separated' (a "lower"
  claim whose rows do not differ), 'fails: separated' (a "same" claim whose rows differ), or
  'needs N seeds' while either row has fewer than MIN_SEEDS."""
  differ = separated(first, second)
  if differ is None:
    return f"needs {MIN_SEEDS} seeds"
  difference = statistics.fmean(first) - statistics.fmean(second)
  if claim.relation == "same":
    return "fails: separated" if differ and difference != 0 else "holds"
  if not differ or difference == 0:
    return "not separated"
  return "holds" if difference < 0 else "reversed"


def paper_value(row: str, metric: str) -> float | None:
  """002's Table 1 value of `metric` for `row`; None where 002 has no such row."""
  paper = fmnist_rows.BY_NAME[row].paper
  return None if paper is None else dict(zip(fmnist_rows.PAPER_METRICS, paper))[metric]
