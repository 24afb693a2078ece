"""How the benchmark times two frameworks side by side: each side is one blocking call; the sides of a
measurement (or of several, `measure_together`) are called alternately A B A B ... so that slow drifts
of the machine's speed hit both; ratios are medians of per-repetition (paired) ratios. Prints one table
row per measurement.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any, Callable


@dataclasses.dataclass
class Side:
  """One framework's side of a measurement: run() does one blocking call."""

  run: Callable[[], None]
  compile_s: float | None = None   # cgdiff: lower + compile, apart from the timed calls
  flops: float | None = None       # XLA's cost analysis of the compiled program


def summary(samples: list[float]) -> dict[str, Any]:
  return {"median_s": statistics.median(samples), "min_s": min(samples), "max_s": max(samples),
          "samples_s": samples}


def alternate(sides: dict[Any, Side], reps: int, warmup: int) -> dict[Any, list[float]]:
  """Seconds per call of each side, timed alternately A B C A B C ... after `warmup` untimed calls each."""
  for _ in range(warmup):
    for side in sides.values():
      side.run()
  samples = {name: [] for name in sides}
  for _ in range(reps):
    for name, side in sides.items():
      start = time.perf_counter()
      side.run()
      samples[name].append(time.perf_counter() - start)
  return samples


def comparison(name: str, sides: dict[str, Side], samples: dict[str, list[float]], items: int, unit: str,
               **extra: Any) -> dict[str, Any]:
  """The record of one measurement of `sides` ({'cgdiff': ..., 'torch': ..., optionally
  'torch_compile': ...}) from their timed `samples`. ratios[side]: that side's time / cgdiff's time
  (> 1: cgdiff faster), of the medians and per repetition (paired); speed_ratio is the one against eager
  torch."""
  out = {"name": name, "items_per_call": items, "unit": unit, **extra, "ratios": {}}
  for side_name, side in sides.items():
    out[side_name] = {**summary(samples[side_name]), "compile_s": side.compile_s, "flops": side.flops,
                      "items_per_s": items / statistics.median(samples[side_name])}
    if side_name != "cgdiff":
      paired = [t / c for c, t in zip(samples["cgdiff"], samples[side_name])]
      out["ratios"][side_name] = {"median": out[side_name]["median_s"] / out["cgdiff"]["median_s"],
                                  "paired_min": min(paired), "paired_max": max(paired), "paired": paired}
  out["speed_ratio"] = out["ratios"]["torch"]["median"]
  print_row(out)
  return out


def measure(name: str, sides: dict[str, Side], items: int, unit: str, reps: int, warmup: int,
            **extra: Any) -> dict[str, Any]:
  """Times `sides` alternately and returns `comparison`'s record."""
  return comparison(name, sides, alternate(sides, reps, warmup), items, unit, **extra)


def measure_together(groups: dict[str, dict[str, Side]], reps: int, warmup: int
                     ) -> dict[str, dict[str, list[float]]]:
  """Times every side of every group in one alternation (g1.cgdiff g1.torch g2.cgdiff ... repeated), so
  that ratios between groups (a target's step over the baseline's, a sampler over the forward) pair
  calls made moments apart: the machine's speed drifts over minutes. Returns samples[group][side]."""
  flat = alternate({(g, s): side for g, sides in groups.items() for s, side in sides.items()}, reps, warmup)
  return {g: {s: flat[(g, s)] for s in sides} for g, sides in groups.items()}


def paired_ratio(numerator: list[float], denominator: list[float]) -> dict[str, float]:
  """Median of the per-repetition ratios of two sides timed in one alternation, with their min and max."""
  ratios = [a / b for a, b in zip(numerator, denominator)]
  return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}


def print_header() -> None:
  print(f"\n{'measurement':<34s} {'cgdiff s/call [min-max]':>27s} {'torch s/call [min-max]':>27s} "
        f"{'cgdiff/s':>9s} {'torch/s':>9s} {'speed x [paired]':>20s} {'compile s':>9s}", flush=True)


def _cell(side: dict[str, Any]) -> str:
  return f"{side['median_s']:9.4f} [{side['min_s']:.4f}-{side['max_s']:.4f}]"


def print_row(rec: dict[str, Any]) -> None:
  """The cgdiff-vs-torch row, then one row per further comparator (torch.compile, cgdiff on one device)
  in the torch columns."""
  cg = rec["cgdiff"]
  order = sorted(rec["ratios"], key=lambda side: side != "torch")
  for i, side in enumerate(order):
    th, ratio, first = rec[side], rec["ratios"][side], i == 0
    label = rec["name"] if first else f"  {side}"
    cg_cell = _cell(cg) if first else ""
    cg_rate = f"{cg['items_per_s']:.1f}" if first else ""
    speed = f"{ratio['median']:.2f} [{ratio['paired_min']:.2f}-{ratio['paired_max']:.2f}]"
    compile_s = (cg if first else th).get("compile_s")
    compile_cell = f"{compile_s:.1f}" if compile_s is not None else ""
    print(f"{label:<34s} {cg_cell:>27s} {_cell(th):>27s} {cg_rate:>9s} {th['items_per_s']:9.1f} {speed:>20s} "
          f"{compile_cell:>9s}", flush=True)
