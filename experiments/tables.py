"""Markdown tables from run records.

    python -m experiments.tables                    # the Fashion-MNIST results, claims and diagnosis tables
    python -m experiments.tables RESULTS_DIR        # the same tables of another program's results directory
    python -m experiments.tables RECORD.json [...]  # the tables of exact-field and pilot records
    python -m experiments.tables --readme README.md # writes the first into the README, between its markers

The README's tables are this script's output as printed, so every number there traces to a record.
"""

from __future__ import annotations

import glob
import json
import os
import statistics
import sys
from typing import Any, Callable, Sequence

from experiments import claims, fmnist_rows

FMNIST_RESULTS = "experiments/results/fmnist"
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


def fmnist_records(results: str = FMNIST_RESULTS, stage: str = "eval") -> dict[str, list[dict[str, Any]]]:
  """{row: [record of each seed, by seed]} of the committed Fashion-MNIST records of `stage`: "eval"
  (<row>/s<seed>/*.json) or "diagnose" (<row>/s<seed>/diagnose/*.json)."""
  out = {}
  for row in fmnist_rows.ROWS:
    seeds = []
    for seed_dir in sorted(glob.glob(os.path.join(results, row.name, "s*")), key=lambda p: int(p.rsplit("s", 1)[1])):
      for path in sorted(glob.glob(os.path.join(seed_dir, "diagnose" if stage == "diagnose" else "", "*.json"))):
        with open(path) as f:
          record = json.load(f)
        if record.get("stage") == stage:
          seeds.append(record)
    if seeds:
      out[row.name] = seeds
  return out


def mean_spread(values: Sequence[float | None], mean_format: str, spread_format: str | None = None) -> str:
  """'mean ± sd (n)' over seeds (None values left out; '-' if none), the mean in `mean_format` and the
  sd, the sample standard deviation (n - 1), in `spread_format` (default: the mean's)."""
  values = [v for v in values if v is not None]
  if not values:
    return "-"
  if len(values) == 1:
    return f"{values[0]:{mean_format}} (1)"
  return (f"{statistics.fmean(values):{mean_format}} ± {statistics.stdev(values):{spread_format or mean_format}} "
          f"({len(values)})")


def fmnist_table(records: dict[str, list[dict[str, Any]]]) -> str:
  """002's Table 1 with our rows beside it: recon FID, FID and latent SW2^2 at RK4 x 10, mean ± sd over
  seeds (the number of seeds in brackets), and the SW2^2 floor of real against real latents: mean ± sd
  of every disjoint draw of every seed (the number of draws in brackets)."""
  lines = ["| method | recon FID | FID (RK4@10) | SW2^2 (RK4@10) | SW2^2 real vs real | 002: recon FID | 002: FID "
           "| 002: SW2 |",
           "| --- |" + " --- |" * 7]
  for row in fmnist_rows.ROWS:
    seeds = records.get(row.name, [])
    metric = lambda name: [r["metrics"].get(name) for r in seeds]
    # The floor's disjoint draws of every seed, pooled: what a perfect model would score at this N.
    floor = [v for r in seeds for v in r["sw2"]["real_vs_real"]["values"]]
    paper = ("-", "-", "-") if row.paper is None else (f"{row.paper[0]:.2f}", f"{row.paper[1]:.2f}",
                                                      f"{row.paper[2]:.2e}")
    cells = [mean_spread(metric("recon_fid"), ".2f"), mean_spread(metric("fid"), ".2f"),
             mean_spread(metric("sw2_squared"), ".2e", ".1e"), mean_spread(floor, ".2e", ".1e"), *paper]
    lines.append(f"| {row.label} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def sw2_tails_table(records: dict[str, list[dict[str, Any]]]) -> str:
  """What SW2^2 is made of, for the eval records that hold its tail split (metrics.sw2_squared_trimmed):
  each seed's SW2^2 and trimmed SW2^2 over its own real-vs-real floor (untrimmed and trimmed: the latents
  of different VAEs are in different units), the outer ranks' share of SW2^2, and how many generated
  latents lie beyond the largest real latent norm; mean ± sd over those seeds. A footnote names the
  records without the split."""
  lines = ["| method | SW2^2 / floor | trimmed SW2^2 / trimmed floor | tail's share of SW2^2 | "
           "tail's share, real vs real | latents beyond the real max norm |",
           "| --- |" + " --- |" * 5]
  missing, tails, sizes = [], set(), set()
  for row in fmnist_rows.ROWS:
    seeds = [r for r in records.get(row.name, []) if r["metrics"].get("sw2_squared_trimmed") is not None]
    missing += [f"{_short(row.name)} s{r.get('config', {}).get('seed', '?')}" for r in records.get(row.name, [])
                if r["metrics"].get("sw2_squared_trimmed") is None]
    if not seeds:
      continue
    tails |= {r["sw2"]["tail"] for r in seeds}
    sizes |= {r["sw2"]["num_samples"] for r in seeds}
    metric = lambda name: [r["metrics"][name] for r in seeds]
    floor_share = [v for r in seeds for v in r["sw2"]["real_vs_real"]["tail_share"]["values"]]
    cells = [mean_spread([r["metrics"]["sw2_squared"] / r["metrics"]["sw2_squared_real_vs_real_mean"]
                          for r in seeds], ".1f"),
             mean_spread([r["metrics"]["sw2_squared_trimmed"] / r["metrics"]["sw2_squared_trimmed_real_vs_real_mean"]
                          for r in seeds], ".1f"),
             mean_spread(metric("sw2_tail_share"), ".2f"), mean_spread(floor_share, ".2f"),
             mean_spread([r["sw2"]["norms"]["generated_beyond_real_max"] for r in seeds], ".0f")]
    lines.append(f"| {row.label} | " + " | ".join(cells) + " |")
  if len(tails) > 1 or len(sizes) > 1:
    raise ValueError(f"SW2 tail splits of different tails {sorted(tails)} or sizes {sorted(sizes)}.")
  notes = []
  if tails:
    notes.append(f"The tail: the outer {tails.pop():g} of the sorted ranks (half at each end) of each "
                 f"projection of {sizes.pop()} latents; the trimmed SW2^2 leaves it out.")
  if missing:
    notes.append(f"Records without the split (evaluated before it was recorded): {', '.join(missing)}.")
  if notes:
    lines.append("\n" + " ".join(notes))
  return "\n".join(lines)


def far_latents_table(results: str = FMNIST_RESULTS) -> str:
  """The records of `python -m experiments.far_latents` (<results>/far_latents/*.json), in table order:
  for each run, its latents beyond the largest real norm at its eval's sampler and steps, how many of
  those rows lie beyond it again when integrated with the most steps, their median norm and mean distance
  to that finest integration at the eval's steps, and the control rows beyond it ('' without records)."""
  order = {row.name: i for i, row in enumerate(fmnist_rows.ROWS)}
  found = []
  for path in glob.glob(os.path.join(results, "far_latents", "*.json")):
    with open(path) as f:
      found.append(json.load(f))
  if not found:
    return ""
  found.sort(key=lambda r: (order.get(r["run"].split("/")[0], len(order)), r["run"]))
  lines = ["| run | sampler | far latents | far at the most steps | far: median norm, eval's steps -> most "
           "| far: distance to the most steps | control rows beyond the real max |",
           "| --- |" + " --- |" * 6]
  for r in found:
    first, last = r["by_steps"][0], r["by_steps"][-1]
    lines.append(f"| {r['run']} | {r['eval_record']['sampler']} x {first['steps']} (most: {last['steps']}) | "
                 f"{first['far']['beyond_real_max']} of {r['num_compared']} | {last['far']['beyond_real_max']} | "
                 f"{first['far']['norm_quantiles'][0]:.2f} -> {last['far']['norm_quantiles'][0]:.2f} | "
                 f"{first['far']['mean_distance_to_finest']:.3f} | "
                 f"{first['control']['beyond_real_max']} -> {last['control']['beyond_real_max']} of "
                 f"{len(r['control_rows'])} |")
  lines.append("\nFar: beyond the largest norm of the real test latents (`python -m experiments.far_latents ROW "
               "--seed S`); the same rows integrated again from their prior-bank noise with more steps of the "
               "same sampler.")
  return "\n".join(lines)


def best_fid_line(records: dict[str, list[dict[str, Any]]]) -> str:
  """Our lowest mean FID at RK4 x 10 (40 NFE) over the rows, beside 002's lowest in Table 1 (the same
  sampler and NFE)."""
  fids = {name: [float(r["metrics"]["fid"]) for r in seeds] for name, seeds in records.items()}
  paper_fids = {row.name: claims.paper_value(row.name, "fid") for row in fmnist_rows.ROWS if row.paper}
  paper = min(paper_fids, key=paper_fids.get)
  paper_part = f"002's lowest: {paper_fids[paper]:.2f}, {fmnist_rows.BY_NAME[paper].label}"
  if not fids:
    return f"Lowest mean FID at RK4 x 10 (40 NFE): no row yet; {paper_part}."
  best = min(fids, key=lambda name: statistics.fmean(fids[name]))
  ratio = statistics.fmean(fids[best]) / paper_fids[paper]
  return (f"Lowest mean FID at RK4 x 10 (40 NFE): {mean_spread(fids[best], '.2f')}, "
          f"{fmnist_rows.BY_NAME[best].label}; {paper_part}; ours is {ratio:.2f} times 002's.")


# claims_table's metric names and number formats.
CLAIM_METRICS = {"fid": ("FID", ".2f"), "recon_fid": ("recon FID", ".2f"), "sw2_squared": ("SW2^2", ".2e")}


def _short(row: str) -> str:
  return f"({row})" if len(row) == 1 else row


def claims_table(records: dict[str, list[dict[str, Any]]]) -> str:
  """The documents' orderings (experiments/claims.py), each judged on our seeds: the difference of the
  two rows' means (first - second; negative when `first` is lower), twice the larger of their sample sds
  (the protocol's rule: the rows differ when the difference is at least that), the verdict, and 002's
  difference where 002 has both rows."""
  lines = ["| claim | source | ours: first - second | 2 x larger sd | verdict | 002: first - second |",
           "| --- |" + " --- |" * 5]
  for claim in claims.CLAIMS:
    name, number = CLAIM_METRICS[claim.metric]
    first, second = ([float(r["metrics"][claim.metric]) for r in records.get(row, [])]
                     for row in (claim.first, claim.second))
    relation = "<" if claim.relation == "lower" else "~"
    difference = (f"{statistics.fmean(first) - statistics.fmean(second):{number}}" if first and second else "-")
    bound = claims.threshold(first, second)
    spread = "-" if bound is None else f"{bound:{number}}"
    paper = [claims.paper_value(row, claim.metric) for row in (claim.first, claim.second)]
    paper_difference = "-" if None in paper else f"{paper[0] - paper[1]:{number}}"
    lines.append(f"| {_short(claim.first)} {relation} {_short(claim.second)} on {name} | {claim.source} | "
                 f"{difference} | {spread} | {claims.verdict(claim, first, second)} | {paper_difference} |")
  return "\n".join(lines)


# diagnose_table's columns: (heading, the diagnose record's `gates` key), each averaged over the times.
DIAGNOSE_COLUMNS = (("mean abs(g - g*)", "gate_to_oracle"), ("mean abs(g - g_p)", "gate_to_prior"),
                    ("mean g", "gate"), ("mean g*", "oracle_gate"), ("mean g_p", "prior_gate"),
                    ("eps MSE: net vs LSI", "critic_vs_lsi"), ("eps MSE: net vs Gaussian fit", "critic_vs_gaussian"),
                    ("eps MSE: LSI vs Gaussian fit", "lsi_vs_gaussian"))


def diagnose_settings(records: dict[str, list[dict[str, Any]]]) -> tuple[tuple[float, ...], str, int] | None:
  """The (times, split, number of posteriors) every diagnose record shares; None without records.

  Raises:
    ValueError: the records were made at different settings, so their curves cannot be compared.
  """
  settings = {(tuple(r["times"]), r["split"], r["num_posteriors"]) for seeds in records.values() for r in seeds}
  if len(settings) > 1:
    raise ValueError(f"diagnose records of different settings (times, split, posteriors): {sorted(settings)}")
  return next(iter(settings), None)


def diagnose_table(records: dict[str, list[dict[str, Any]]]) -> str:
  """The trained networks on the test posteriors of their own VAE (the `diagnose` stage): each column
  the mean over its times (uniform in log-SNR) of a `gates` quantity of diagnostics.gate_profile, then
  mean ± sd over seeds. The gate columns compare the learned gate g with the oracle g* and with 001's
  degenerate prior gate g_p (MATH.md errata 4); "eps MSE: net vs X" is the mean squared difference of
  the score network's (the critic's) eps prediction from X's (LSI: the best a network can do, plus
  LSI's own variance; the Gaussian fit: the zero-loss state of 001's prior-CSEM objective).

  Raises:
    ValueError: the records were made at different times, splits or numbers of posteriors.
  """
  settings = diagnose_settings(records)
  lines = ["| method | " + " | ".join(heading for heading, _ in DIAGNOSE_COLUMNS) + " |",
           "| --- |" + " --- |" * len(DIAGNOSE_COLUMNS)]
  for row in fmnist_rows.ROWS:
    seeds = records.get(row.name)
    if not seeds:
      continue
    cells = [mean_spread([statistics.fmean(r["gates"][key]) if key in r["gates"] else None for r in seeds], ".3f")
             for _, key in DIAGNOSE_COLUMNS]
    lines.append(f"| {row.label} | " + " | ".join(cells) + " |")
  if settings:
    times, split, num_posteriors = settings
    log_snr = next(r["log_snr"] for seeds in records.values() for r in seeds)
    lines.append(f"\nOver {len(times)} times, log-SNR {min(log_snr):.1f} to {max(log_snr):.1f}; "
                 f"{num_posteriors} {split} posteriors.")
  return "\n".join(lines)


def fmnist_tables(results: str = FMNIST_RESULTS) -> str:
  """The results, claims and diagnosis tables of a results directory (README "Results")."""
  records = fmnist_records(results)
  parts = [fmnist_table(records), best_fid_line(records), sw2_tails_table(records), far_latents_table(results),
           claims_table(records), diagnose_table(fmnist_records(results, stage="diagnose"))]
  return "\n\n".join(part for part in parts if part)


def readme_with_tables(text: str, tables: str) -> str:
  """`text` (a README) with `tables` between README_BEGIN and README_END."""
  if (text.count(README_BEGIN) != 1 or text.count(README_END) != 1
      or text.index(README_BEGIN) > text.index(README_END)):
    raise ValueError(f"the README must hold the line {README_BEGIN!r} once, and {README_END!r} once after it.")
  head, rest = text.split(README_BEGIN)
  _, tail = rest.split(README_END)
  return f"{head}{README_BEGIN}\n{tables}\n{README_END}{tail}"


def write_readme(path: str, results: str = FMNIST_RESULTS) -> bool:
  """Writes `results`' tables into the README at `path`; returns whether it changed."""
  with open(path) as f:
    text = f.read()
  try:
    new = readme_with_tables(text, fmnist_tables(results))
  except ValueError as error:
    raise SystemExit(f"{path}: {error}") from None
  if new != text:
    with open(path, "w") as f:
      f.write(new)
  return new != text


def main(paths: list[str]) -> None:
  if paths[:1] == ["--readme"]:
    if len(paths) not in (2, 3):
      sys.exit("usage: python -m experiments.tables --readme README.md [RESULTS_DIR]")
    changed = write_readme(paths[1], *paths[2:])
    print(f"{paths[1]}: tables {'written' if changed else 'already as printed'}.")
    return
  if not paths or (len(paths) == 1 and os.path.isdir(paths[0])):
    print(fmnist_tables(paths[0] if paths else FMNIST_RESULTS))
    return
  for path in paths:
    if not os.path.isfile(path):
      sys.exit(f"{path}: no such record (give one results directory, or record .json files).")
    with open(path) as f:
      record = json.load(f)
    # (The first pilot records were written before the pilot named its stage.)
    for table in TABLES[record.get("stage", "pilot" if "timing" in record else None)]:
      print(table(record), end="\n\n")


if __name__ == "__main__":
  main(sys.argv[1:])
