"""Markdown tables from run records: `python -m experiments.tables RECORD.json [...]`.

The README's tables are pasted from this script's output, so every number there traces to a record.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Callable


def exact_field_table(record: dict[str, Any]) -> str:
  """Sampler x steps table of SW2^2 against exact samples, from an exact_field.json record."""
  sampling = record["sampling"]
  floor = sampling["sw2_squared_exact_vs_exact"]
  steps = sorted({r["num_steps"] for r in sampling["results"]})
  methods = list(dict.fromkeys(r["method"] for r in sampling["results"]))
  by_key = {(r["method"], r["num_steps"]): r for r in sampling["results"]}
  lines = ["| sampler | " + " | ".join(f"{s} steps: SW2^2 (NFE)" for s in steps) + " |",
           "| --- |" + " --- |" * len(steps)]
  for method in methods:
    cells = [f"{by_key[method, s]['sw2_squared']:.2e} ({by_key[method, s]['nfe']})" for s in steps]
    lines.append(f"| {method} | " + " | ".join(cells) + " |")
  lines.append(f"| exact vs exact ({len(floor['values'])} sets) | "
               + " | ".join([f"{floor['mean']:.2e} +- {floor['std']:.1e}"] * len(steps)) + " |")
  lines.append(f"\n{sampling['num_samples']} samples, {sampling['num_projections']} projections; "
               f"commit {record['git_commit']}, config {record['config_hash']}.")
  return "\n".join(lines)


def target_variance_table(record: dict[str, Any], every: int = 4) -> str:
  """log-SNR x target table of the mean conditional variance Var(target | z_t) and the oracle gate."""
  tv = record["target_variance"]
  lines = ["| t | log-SNR | Var Tweedie | Var CSEM | Var LSI | E[g*] |", "| --- |" + " --- |" * 5]
  rows = sorted(set(range(0, len(tv["t"]), every)) | {len(tv["t"]) - 1})
  for i in rows:
    lines.append(f"| {tv['t'][i]:.4f} | {tv['log_snr'][i]:.2f} | {tv['tweedie'][i]:.3g} | "
                 f"{tv['csem'][i]:.3g} | {tv['lsi'][i]:.3g} | {tv['oracle_gate'][i]:.3f} |")
  return "\n".join(lines)


TABLES: dict[str, list[Callable[[dict[str, Any]], str]]] = {
    "exact_field": [target_variance_table, exact_field_table],
}


def main(paths: list[str]) -> None:
  for path in paths:
    with open(path) as f:
      record = json.load(f)
    for table in TABLES[record["stage"]]:
      print(table(record), end="\n\n")


if __name__ == "__main__":
  main(sys.argv[1:])
