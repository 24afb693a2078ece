"""The Fashion-MNIST program's tables, from its committed records and training logs (README "Results"):
mean ± sd over seeds beside 002's Table 1, our lowest FID beside 002's, what SW2^2 is made of, the far
latents, the documents' orderings judged by the protocol's rule, the end of training, and the diagnosis
of the trained networks. `python -m experiments.tables` prints them; `--readme` writes them into the README.
"""

from __future__ import annotations

import glob
import json
import os
import statistics
from typing import Any, Sequence

from experiments import claims, fmnist_records, fmnist_rows, program_runs, training_logs


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


def far_latents_table(results: str = fmnist_records.FMNIST_RESULTS) -> str:
  """The records of `python -m experiments.far_latents` (<results>/far_latents/*.json), in table order:
  for each run, its latents beyond the largest real norm at its eval's sampler and steps, how many of
  those rows lie beyond it again when integrated with the most steps, their median norm and mean distance
  to that finest integration at the eval's steps, the control rows beyond it, and where both groups'
  starting noise lies among the bank's; under it, how many far rows the runs on one VAE share ('' without
  records)."""
  order = {row.name: i for i, row in enumerate(fmnist_rows.ROWS)}
  found = []
  for path in glob.glob(os.path.join(results, "far_latents", "*.json")):
    with open(path) as f:
      found.append(json.load(f))
  if not found:
    return ""
  found.sort(key=lambda r: (order.get(r["run"].split("/")[0], len(order)), r["run"]))
  lines = ["| run | sampler | far latents | far at the most steps | far: median norm, eval's steps -> most "
           "| far: distance to the most steps | control rows beyond the real max | z_T norm percentile: far, "
           "control | FID: all, without the far rows, without as many random rows |",
           "| --- |" + " --- |" * 8]
  for r in found:
    first, last = r["by_steps"][0], r["by_steps"][-1]
    lines.append(f"| {r['run']} | {r['eval_record']['sampler']} x {first['steps']} (most: {last['steps']}) | "
                 f"{first['far']['beyond_real_max']} of {r['num_compared']} | {last['far']['beyond_real_max']} | "
                 f"{first['far']['norm_quantiles'][0]:.2f} -> {last['far']['norm_quantiles'][0]:.2f} | "
                 f"{first['far']['mean_distance_to_finest']:.3f} | "
                 f"{first['control']['beyond_real_max']} -> {last['control']['beyond_real_max']} of "
                 f"{len(r['control_rows'])} | {_percentiles(r)} | {fid_without_far_cell(r)} |")
  shared = []
  for i, r in enumerate(found):
    for other in found[i + 1:]:
      if r.get("vae_sha256") is not None and r.get("vae_sha256") == other.get("vae_sha256"):
        both = len(set(r["far_rows"]) & set(other["far_rows"]))
        shared.append(f"{r['run']} and {other['run']}: {both} of {len(r['far_rows'])} and {len(other['far_rows'])}")
  if shared:
    lines.append("\nFar rows (prior-bank rows) that runs on one VAE share: " + "; ".join(shared) + ".")
  lines.append("\nFar: beyond the largest norm of the real test latents (`python -m experiments.far_latents ROW "
               "--seed S`); the same rows integrated again from their prior-bank noise with more steps of the "
               "same sampler. FID from the eval's stored Inception features, leaving out the far rows, or as "
               "many rows drawn at random (mean ± sd of 5 draws): the far rows' own effect on FID, net of the "
               "smaller N.")
  return "\n".join(lines)


def fid_without_far_cell(record: dict[str, Any]) -> str:
  """'all, without far, random mean ± sd' FIDs of a far_latents record, or '-' in one without them."""
  f = record.get("fid")
  if not f:
    return "-"
  return (f"{f['all']:.2f}, {f['without_far']:.2f}, {statistics.fmean(f['without_random']):.2f} ± "
          f"{statistics.stdev(f['without_random']):.2f}")


def _percentiles(record: dict[str, Any]) -> str:
  """'far, control' mean percentiles of their z_T norms in the bank, or '-' in a record without them."""
  percentile = record.get("prior_norm_percentile")
  return "-" if percentile is None else f"{percentile['far']:.2f}, {percentile['control']:.2f}"


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
  (the protocol's rule: the rows differ when the difference is at least that), the verdict, the difference
  at each training seed both rows have (for rows on one shared VAE, the same VAE and noise: a paired
  view the rule does not use), and 002's difference where 002 has both rows."""
  lines = ["| claim | source | ours: first - second | 2 x larger sd | verdict | per seed | 002: first - second |",
           "| --- |" + " --- |" * 6]
  for claim in claims.CLAIMS:
    name, number = CLAIM_METRICS[claim.metric]
    first, second = ([float(r["metrics"][claim.metric]) for r in records.get(row, [])]
                     for row in (claim.first, claim.second))
    by_seed = [{r["config"]["seed"]: float(r["metrics"][claim.metric]) for r in records.get(row, []) if "config" in r}
               for row in (claim.first, claim.second)]
    per_seed = ", ".join(f"s{seed}: {by_seed[0][seed] - by_seed[1][seed]:{number}}"
                         for seed in sorted(by_seed[0].keys() & by_seed[1].keys())) or "-"
    relation = "<" if claim.relation == "lower" else "~"
    difference = (f"{statistics.fmean(first) - statistics.fmean(second):{number}}" if first and second else "-")
    bound = claims.threshold(first, second)
    spread = "-" if bound is None else f"{bound:{number}}"
    paper = [claims.paper_value(row, claim.metric) for row in (claim.first, claim.second)]
    paper_difference = "-" if None in paper else f"{paper[0] - paper[1]:{number}}"
    lines.append(f"| {_short(claim.first)} {relation} {_short(claim.second)} on {name} | {claim.source} | "
                 f"{difference} | {spread} | {claims.verdict(claim, first, second)} | {per_seed} | "
                 f"{paper_difference} |")
  return "\n".join(lines)


# training_table's columns: (heading, training_logs.end_of_training's key, format).
TRAINING_COLUMNS = (("VAE: reconstruction", "reconstruction", ".4f"), ("VAE: KL", "kl", ".2f"),
                    ("VAE: mean posterior log-variance", "posterior_logvar_mean", ".2f"),
                    ("score loss", "score_loss", ".4f"), ("target's excess over LSI", "target_excess_over_lsi", ".4f"),
                    ("network to LSI (loss - excess)", "net_to_lsi", ".4f"))


def training_table(results: str = fmnist_records.FMNIST_RESULTS) -> str:
  """The end of training of every evaluated run, from its stages' committed logs
  (training_logs.end_of_training): the autoencoder's reconstruction loss, KL term and mean posterior
  log-variance, and the score network's loss, its target's excess over LSI and the difference of the two,
  mean ± sd over seeds ('-' where a row's target has no distance to LSI in its loss)."""
  lines = ["| method | " + " | ".join(heading for heading, _, _ in TRAINING_COLUMNS) + " |",
           "| --- |" + " --- |" * len(TRAINING_COLUMNS)]
  missing = []
  for row in fmnist_rows.ROWS:
    ends = []
    for seed, _ in fmnist_records.seed_dirs(results, row.name):
      run = program_runs.Run(row, seed, root="", results=results)  # its committed paths only
      if run.committed_record() is None:
        continue
      try:
        ends.append(training_logs.end_of_training(training_logs.run_training(run)))
      except ValueError as error:
        missing.append(f"{run.name} ({error})")
    if ends:
      cells = [mean_spread([end[key] for end in ends], spec) for _, key, spec in TRAINING_COLUMNS]
      lines.append(f"| {row.label} | " + " | ".join(cells) + " |")
  if len(lines) == 2 and not missing:
    return ""
  notes = [f"At the end of training: the mean of each stage's last {training_logs.LAST_INTERVALS} logged "
           "intervals (`<stage>/metrics.jsonl`); rows on one VAE repeat its columns. Every target but 001's "
           "prior CSEM has conditional mean eps_LSI, so its loss minus its excess over LSI is the network's "
           "own mean squared distance to the LSI target."]
  if missing:
    notes.append(f"Evaluated runs left out, their logs incomplete: {'; '.join(missing)}.")
  return "\n".join(lines) + "\n\n" + " ".join(notes)


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


def sampler_study_table(study_dir: str) -> str:
  """The sampler study's table from <study_dir>/study.json (experiments.sampler_study): each sampler's
  FID at the study's N, SW2^2 untrimmed and trimmed, latents beyond the real maximum norm and sampling
  seconds; under it the floors."""
  with open(os.path.join(study_dir, "study.json")) as f:
    study = json.load(f)
  rows = study["samplers"]
  lines = [f"| sampler | steps | NFE | FID (N = {study['num_samples']:,}) | SW2^2 | trimmed SW2^2 "
           "| latents beyond the real max norm | sampling s |", "| --- |" + " --- |" * 7]
  optional = lambda value, spec: "-" if value is None else f"{value:{spec}}"
  for r in rows:
    lines.append(f"| {r['sampler']} | {r['steps']} | {r['nfe']} | {optional(r['fid'], '.2f')} | "
                 f"{r['sw2_squared']:.2e} | {optional(r.get('sw2_squared_trimmed'), '.2e')} | "
                 f"{optional(r.get('beyond_real_max'), 'd')} | {optional(r['sampling_seconds'], '.0f')} |")
  floor = rows[0]["sw2_squared_floor_mean"] if rows else float("nan")
  trimmed_floor = rows[0].get("sw2_squared_trimmed_floor_mean") if rows else None
  tail = rows[0].get("sw2_tail") if rows else None
  lines.append(f"\nSW2^2 floor (real against real, mean): {floor:.2e}; trimmed: {optional(trimmed_floor, '.2e')} "
               f"(the trimmed SW2^2 leaves out the outer {optional(tail, 'g')} of the sorted ranks).")
  return "\n".join(lines)


def sampler_study_tables(results: str = fmnist_records.FMNIST_RESULTS, studies: str = "*") -> str:
  """Each study under <results>/sampler_study/ whose <row>_s<seed> name matches the glob `studies`, with a
  line naming its run ('' without one)."""
  parts = []
  for path in sorted(glob.glob(os.path.join(results, "sampler_study", studies, "study.json"))):
    row, _, seed = os.path.basename(os.path.dirname(path)).rpartition("_s")  # row names hold "_s" too
    parts.append(f"The sampler study on {row}/s{seed} (`python -m experiments.sampler_study`; "
                 "every sampler from the same banks, its FIDs compared only with each other):\n\n"
                 + sampler_study_table(os.path.dirname(path)))
  return "\n\n".join(parts)


def readme_tables(results: str = fmnist_records.FMNIST_RESULTS) -> str:
  """The results, claims, training, diagnosis and sampler-study tables of a results directory (README "Results")."""
  records = fmnist_records.fmnist_records(results)
  parts = [fmnist_table(records), best_fid_line(records), sw2_tails_table(records), far_latents_table(results),
           claims_table(records), training_table(results),
           diagnose_table(fmnist_records.fmnist_records(results, stage="diagnose")),
           sampler_study_tables(results)]
  return "\n\n".join(part for part in parts if part)
