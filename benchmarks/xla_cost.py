"""XLA's cost analysis of a compiled program, shared by the benchmark command and the profiler (no torch)."""

from __future__ import annotations


def flops_of(compiled) -> float | None:
  """XLA's FLOP count of a compiled program (None when the backend gives none)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  flops = (cost or {}).get("flops")
  return float(flops) if flops else None
