"""Markdown tables from run records: the command, the README writer, and the exact-field and pilot tables.

    python -m experiments.tables                    # the Fashion-MNIST results, claims and diagnosis tables
    python -m experiments.tables RESULTS_DIR        # the same tables of another program's results directory
    python -m experiments.tables RECORD.json [...]  # the tables of exact-field and pilot records
    python -m experiments.tables --readme README.md # writes the first into the README, between its markers

The README's tables are this script's output as printed, so every number there traces to a record.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Callable

from experiments import fmnist_records, fmnist_rows, fmnist_tables

# The README's Fashion-MNIST tables lie between these lines; `--readme` writes them there.
README_BEGIN = "<!-- begin: python -m experiments.tables (written by --readme; do not edit) -->"
README_END = "<!-- end: python -m experiments.tables -->"


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


def pilot_timing_table(record: dict[str, Any]) -> str:
  """Seconds per step (best logged interval) of each stage kind per candidate size, and the projection."""
  timing = record["timing"]
  lines = ["| size | VAE step | LDM step | critic-gate LDM step | co-training step | eval of one row | two seeds |",
           "| --- |" + " --- |" * 6]
  for name, stages in timing["candidates"].items():
    projection = timing["projection_hours_two_seeds"][name]
    cells = [f"{stages[kind]['best']:.3f} s" for kind in ("vae", "ldm", "ldm_gate", "cotrain")]
    lines.append(f"| {name} | " + " | ".join(cells) + f" | {projection['eval_seconds_per_row'] / 60:.0f} min | "
                 f"{projection['program']:.1f} h |")
  return "\n".join(lines)


def pilot_learning_table(record: dict[str, Any]) -> str:
  """The learning part: each row's eval metrics after the pilot's epochs (FID at the pilot's N)."""
  lines = []
  for size, learning in record.get("learning", {}).items():
    lines += [f"{size}: {learning['epochs']} epochs ({learning['num_steps']} steps per stage)", "",
              "| row | FID | recon FID | SW2^2 | SW2^2 real vs real | wall |", "| --- |" + " --- |" * 5]
    for row, result in learning["rows"].items():
      m = result["metrics"]
      lines.append(f"| {fmnist_rows.BY_NAME[row].label} | {m['fid']:.1f} | {m['recon_fid']:.1f} | "
                   f"{m['sw2_squared']:.3g} | {m['sw2_squared_real_vs_real_mean']:.2g} ± "
                   f"{m['sw2_squared_real_vs_real_std']:.1g} | {result['wall_seconds'] / 60:.0f} min |")
  return "\n".join(lines)


TABLES: dict[str, list[Callable[[dict[str, Any]], str]]] = {
    "exact_field": [target_variance_table, exact_field_table],
    "pilot": [pilot_timing_table, pilot_learning_table],
}


def readme_with_tables(text: str, tables: str) -> str:
  """`text` (a README) with `tables` between README_BEGIN and README_END."""
  if (text.count(README_BEGIN) != 1 or text.count(README_END) != 1
      or text.index(README_BEGIN) > text.index(README_END)):
    raise ValueError(f"the README must hold the line {README_BEGIN!r} once, and {README_END!r} once after it.")
  head, rest = text.split(README_BEGIN)
  _, tail = rest.split(README_END)
  return f"{head}{README_BEGIN}\n{tables}\n{README_END}{tail}"


def check_readme(path: str) -> str:
  """The README at `path`, which must exist and hold the markers once each; ValueError naming it if not."""
  if not os.path.isfile(path):
    raise ValueError(f"{path}: no such README.")
  with open(path) as f:
    text = f.read()
  try:
    readme_with_tables(text, "")
  except ValueError as error:
    raise ValueError(f"{path}: {error}") from None
  return text


def write_readme(path: str, results: str = fmnist_records.FMNIST_RESULTS) -> bool:
  """Writes `results`' tables into the README at `path`; returns whether it changed. ValueError where the
  README or the records cannot make them (the message names which)."""
  if not os.path.isdir(results):
    # Otherwise an absent directory reads as no records, and empty tables replace the README's.
    raise ValueError(f"{results}: no such results directory.")
  text = check_readme(path)
  new = readme_with_tables(text, fmnist_tables.readme_tables(results))
  if new != text:
    with open(path, "w") as f:
      f.write(new)
  return new != text


def main(paths: list[str]) -> None:
  if paths[:1] == ["--readme"]:
    if len(paths) not in (2, 3):
      sys.exit("usage: python -m experiments.tables --readme README.md [RESULTS_DIR]")
    try:
      changed = write_readme(paths[1], *paths[2:])
    except ValueError as error:
      sys.exit(str(error))
    print(f"{paths[1]}: tables {'written' if changed else 'already as printed'}.")
    return
  if not paths or (len(paths) == 1 and os.path.isdir(paths[0])):
    print(fmnist_tables.readme_tables(paths[0] if paths else fmnist_records.FMNIST_RESULTS))
    return
  for path in paths:
    if not os.path.isfile(path):
      sys.exit(f"{path}: no such record (give one results directory, or record .json files).")
    with open(path) as f:
      record = json.load(f)
    # (The first pilot records were written before the pilot named its stage.)
    stage = record.get("stage", "pilot" if "timing" in record else None)
    if stage not in TABLES:
      sys.exit(f"{path}: {stage!r} records have no table here (tables: {sorted(TABLES)}; the Fashion-MNIST "
               "results are read from their directory).")
    for table in TABLES[stage]:
      print(table(record), end="\n\n")


if __name__ == "__main__":
  main(sys.argv[1:])
