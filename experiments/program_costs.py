"""What the rest of the results program will cost: seconds per training step and per evaluation,
measured on the program's own logs (the pilot's estimates until then), and the time each run has left.
`python -m experiments.program status` prints them.
"""

from __future__ import annotations

import glob
import json
import os
import statistics

from cgdiff import samplers, score_targets
from cgdiff.train import writers
from experiments import common, program_runs, sampler_study


def _stage_kind(stage: str, config) -> str:
  """Training stages cost per step by kind: an LDM whose target needs a gate (the critic-gate rows) runs
  a gate network besides the UNet. config: the row's (None for a shared VAE's stages)."""
  if stage == "ldm" and score_targets.get(config.ldm.target).needs_gate:
    return "ldm_gate"
  return stage


# Parts of an eval record's wall time that not every row pays: the real images' statistics (once, then
# cached for every row) and the reconstructions' Inception features (once per VAE; shared by its rows).
ONCE_PER_PROGRAM, ONCE_PER_VAE = "reference_statistics", "recon_fid_features"
# The row's own chunked parts of an eval's wall time and their chunk stores, whose compute_seconds count
# every attempt (a resumed evaluation's wall time covers its last attempt only).
CHUNKED_PARTS = {"sampling": "samples", "fid_features": "sample_features"}
RECON_STORE = "reconstruction_features"


def eval_costs(record: dict) -> tuple[float, float | None]:
  """(seconds of the row's evaluation without the once-only parts, seconds of its VAE's reconstructions
  if this row computed them, else None) from an eval record: each chunked part's cost over every attempt
  where the record has it (compute_seconds), else its wall time."""
  wall, compute = record["wall_seconds"], record.get("compute_seconds") or {}
  cost = wall["total"] - wall.get(ONCE_PER_PROGRAM, 0.0) - wall.get(ONCE_PER_VAE, 0.0)
  for part, store in CHUNKED_PARTS.items():
    if compute.get(store) is not None:
      cost += compute[store] - wall.get(part, 0.0)
  # Whether this row computed its VAE's reconstructions (their chunks in this attempt; in records older
  # than the chunk counts, minutes of wall time: the other rows load them in seconds).
  computed_here = record.get("chunks", {}).get("computed", {}).get(RECON_STORE)
  if computed_here is None:
    computed_here = wall.get(ONCE_PER_VAE, 0.0) > 60
  if not computed_here:
    return cost, None
  return cost, compute.get(RECON_STORE) or wall.get(ONCE_PER_VAE)


def _training_logs(run: program_runs.Run) -> list[tuple[str, str]]:
  """(kind, metrics.jsonl) of each training stage the run and its VAE's home have logged: the workdir's
  log, else its committed copy (runs finished on an earlier machine)."""
  logs = []
  for home in run.homes():
    config = None if home.shared else run.row.get_config()
    found = program_runs.stage_files(home.committed) | program_runs.stage_files(home.workdir)
    logs.extend((_stage_kind(stage, config), path) for stage, path in found.items())
  return logs


def measured_costs(root: str, results: str | None = None) -> dict[str, float]:
  """Seconds per training step of each stage kind (median steps/s of every logged interval so far),
  seconds per eval without the once-only parts ("eval") and for a VAE's reconstructions ("recon"), the
  means over the eval records, over the whole program's workdirs and committed results; and, from the
  records that hold their sampling's compute time, the eval's seconds per sample without the sampling
  ("eval_per_sample") and the sampling's per sample and network evaluation ("sampling_per_nfe_sample")."""
  rates: dict[str, list[float]] = {}
  evals, recons, per_sample, per_nfe_sample = [], [], [], []
  seen: set[str] = set()  # a shared VAE's log counts once
  for run in program_runs.runs_for(program_runs.ALL_SEEDS, root, results=results):
    for kind, path in _training_logs(run):
      if path not in seen:
        seen.add(path)
        rates.setdefault(kind, []).extend(m["steps_per_sec"] for m in writers.read_metrics(path)
                                          if m.get("steps_per_sec"))
    record = run.record() if run.done() else None
    if record is not None:
      cost, recon = eval_costs(record)
      evals.append(cost)
      if recon is not None:
        recons.append(recon)
      sampling = (record.get("compute_seconds") or {}).get(CHUNKED_PARTS["sampling"])
      if sampling is not None:
        per_nfe_sample.append(sampling / (record["nfe"] * record["num_samples"]))
        per_sample.append((cost - sampling) / record["num_samples"])
  costs = {kind: 1.0 / statistics.median(values) for kind, values in rates.items() if values}
  if evals:
    costs["eval"] = statistics.fmean(evals)
  if recons:
    costs["recon"] = statistics.fmean(recons)
  if per_sample:
    costs["eval_per_sample"] = statistics.fmean(per_sample)
    costs["sampling_per_nfe_sample"] = statistics.fmean(per_nfe_sample)
  return costs


def study_seconds(costs: dict[str, float]) -> float | None:
  """The sampler study's seconds at these costs (each sampler: an eval at its N without the sampling,
  per sample, plus its sampling, per network evaluation and sample), a trained run's; None where the
  eval records do not yet hold the split."""
  if "eval_per_sample" not in costs:
    return None
  return sum(sampler_study.NUM_SAMPLES * (costs["eval_per_sample"]
                                          + costs["sampling_per_nfe_sample"] * samplers.nfe(method, steps))
             for method, steps in sampler_study.SAMPLERS)


def pilot_costs(results: str) -> dict[str, float]:
  """The pilot's estimates for the chosen size (seconds per step by stage kind, seconds per eval), where
  it has run (experiments/pilot.py)."""
  path = os.path.join(results, "pilot", "pilot.json")
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    record = json.load(f)
  chosen = record.get("chosen")
  if chosen is None or chosen not in record.get("timing", {}).get("projection_hours_two_seeds", {}):
    return {}
  projection = record["timing"]["projection_hours_two_seeds"][chosen]
  num_steps = projection["num_steps"]
  costs = {kind: hours * 3600 / num_steps for kind, hours in projection["stage_hours"].items()}
  costs["eval"] = projection["eval_seconds_per_row"]
  return costs


def remaining_seconds(run: program_runs.Run, costs: dict[str, float], num_steps: int | None = None,
                      counted: set[str] | None = None, whole: bool = False) -> float | None:
  """Seconds left for `run`: its training stages' remaining steps (latest checkpoint against num_steps,
  default each stage's configured count) and its eval (with its VAE's reconstructions where no earlier
  run computes them, if their cost is known: the pilot's eval cost includes them); None where a cost is
  unknown. counted: the stage directories and VAEs already counted for earlier runs (a shared VAE is
  trained once, and its reconstructions computed once, by the first run that needs it); updated, for
  done runs too.
  whole: the run's cost from its first step instead, done or not (the program's total at these costs)."""
  counted = set() if counted is None else counted
  recon_key = "recon:" + (run.vae_workdir or run.workdir)
  first_on_vae = recon_key not in counted
  counted.add(recon_key)
  if run.done() and not whole:
    return 0.0
  config = run.row.get_config()
  total = 0.0
  for stage in config.stages:
    if stage in common.TRAINING_STAGES:
      home = run.vae_workdir if (stage in common.VAE_SOURCES and run.vae_workdir) else run.workdir
      if os.path.join(home, stage) in counted:
        continue
      counted.add(os.path.join(home, stage))
      ckpts = glob.glob(os.path.join(home, stage, "checkpoints", "[0-9]*"))
      done = 0 if whole else max((int(os.path.basename(p)) for p in ckpts), default=0)
      kind = _stage_kind(stage, config)
      if kind not in costs:
        return None
      steps = config[stage].training.num_steps if num_steps is None else num_steps
      total += max(steps - done, 0) * costs[kind]
    elif stage == "eval":
      if "eval" not in costs:
        return None
      total += costs["eval"] + (costs.get("recon", 0.0) if first_on_vae else 0.0)
  return total
