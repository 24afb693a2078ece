"""The numbers that the notes on one finished row and seed cite (experiments/results/fmnist/README.md),
from its committed artefacts (experiments/results/fmnist/<row>/s<seed>/: the eval record with its SW2
split, the training logs, the diagnose record).

    python -m experiments.row_report cg_element            # seed 0
    python -m experiments.row_report a --seed 1 [--results DIR]

Training: for each stage log of the row (and of the VAE it shares), the loss and its parts at the first
logged interval, at step 1,000 and as the mean of the last LAST_INTERVALS intervals; non-finite steps;
the median steps/s. For an LDM trained on a target with conditional mean eps_LSI (every row but 001's
prior CSEM), loss - target_excess_over_lsi estimates the network's own mean squared distance to the
LSI target (MATH.md: the cross term has mean zero). Diagnosis: per time, the learned gate against g*
and g_p, the critic's distances, and the targets' conditional variances.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
from typing import Any, Sequence

from cgdiff import score_targets
from cgdiff.train import writers
from experiments import fmnist_rows, fmnist_tables, program_runs

# The final loss is the mean of this many logged intervals (the last 1,100 steps at log_every = 100):
# one interval's mean over 100 batches still moves by a few per cent.
LAST_INTERVALS = 11
# Logged quantities reported, where a stage logs them.
KEYS = ("loss", "score_loss", "target_excess_over_lsi", "reconstruction", "kl", "posterior_logvar_mean",
        "gate_mean", "grad_norm")

# The eval record's metrics reported (the SW2 split where the record has it: from commit 99ca4ed).
EVAL_KEYS = ("fid", "recon_fid", "sw2_squared", "sw2_squared_real_vs_real_mean", "sw2_squared_real_vs_real_std",
             "sw2_squared_trimmed", "sw2_squared_trimmed_real_vs_real_mean", "sw2_tail_share")


def _read_json(path: str) -> dict[str, Any]:
  with open(path) as f:
    return json.load(f)


def training_summary(metrics: list[dict[str, Any]], lsi_mean_target: bool = True) -> dict[str, Any]:
  """First, step-1,000 and final (mean of the last LAST_INTERVALS) value of each of KEYS, the number of
  non-finite steps and the median steps/s of one stage's metrics.jsonl records; with lsi_mean_target (a
  target whose conditional mean is eps_LSI), the network's distance to the LSI target at the end."""
  if not metrics:
    raise ValueError("no logged intervals")
  last = metrics[-LAST_INTERVALS:]
  # The interval that holds step 1,000 (a log_every over 1,000 would skip it: the first one after).
  at_1000 = next((m for m in metrics if m["step"] >= 1000), metrics[-1])
  out: dict[str, Any] = {"steps": metrics[-1]["step"], "intervals": len(metrics),
                         "step_1000_logged_at": at_1000["step"],
                         "nonfinite": sum(m.get("nonfinite", 0.0) for m in metrics),
                         "median_steps_per_sec": statistics.median(m["steps_per_sec"] for m in metrics
                                                                   if m.get("steps_per_sec"))}
  for key in KEYS:
    if key in metrics[0]:
      out[key] = {"first": metrics[0][key], "step_1000": at_1000[key],
                  "final": statistics.fmean(m[key] for m in last)}
  if lsi_mean_target and "target_excess_over_lsi" in out and "score_loss" in out:
    out["net_to_lsi_final"] = out["score_loss"]["final"] - out["target_excess_over_lsi"]["final"]
  return out


def report(row: str, seed: int, results: str = fmnist_tables.FMNIST_RESULTS) -> dict[str, Any]:
  """Everything `main` prints, as data."""
  run = program_runs.Run(fmnist_rows.BY_NAME[row], seed, "", results)
  record = run.committed_record()
  if record is None:
    raise SystemExit(f"{row}/s{seed}: no eval record in {run.results_dir}.")
  # 001's prior CSEM, an LDM target, has the diffused Gaussian fit's score, not eps_LSI, as its conditional
  # mean; co-training's score targets (LSI, Tweedie) all have eps_LSI.
  prior_ldm = score_targets.get(run.row.get_config().ldm.target).needs_prior
  training = {home.label + stage: training_summary(writers.read_metrics(path),
                                                   lsi_mean_target=not (stage == "ldm" and prior_ldm))
              for home in run.homes() for stage, path in program_runs.stage_files(home.committed).items()}
  diagnose = sorted(glob.glob(os.path.join(run.results_dir, "diagnose", "*.json")))
  metrics = record["metrics"]
  return {"row": row, "seed": seed,
          "eval": {key: metrics.get(key) for key in EVAL_KEYS if key in metrics}
          | {"beyond_real_max": record["sw2"].get("norms", {}).get("generated_beyond_real_max"),
             "wall_seconds": record["wall_seconds"]["total"], "training_step": record.get("training_step")},
          "training": training,
          "diagnose": _read_json(diagnose[-1]) if diagnose else None}


def diagnose_lines(diagnose: dict[str, Any]) -> list[str]:
  gates, variances = diagnose["gates"], diagnose["eps_variances"]
  columns = [("log-SNR", diagnose["log_snr"])]
  for key in ("gate", "oracle_gate", "prior_gate", "gate_to_oracle", "gate_to_prior", "critic_vs_lsi",
              "critic_vs_gaussian", "lsi_vs_gaussian"):
    if key in gates:
      columns.append((key, gates[key]))
  columns += [(f"var {key}", values) for key, values in variances.items()]
  lines = [" | ".join(f"{name:>12s}" for name, _ in columns)]
  for i in range(len(diagnose["log_snr"])):
    lines.append(" | ".join(f"{values[i]:12.4g}" for _, values in columns))
  for key in ("gate_to_oracle", "gate_to_prior"):
    if key in gates:
      lines.append(f"mean {key} over the times: {statistics.fmean(gates[key]):.4g}, max {max(gates[key]):.4g}")
  return lines


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("row", choices=sorted(fmnist_rows.BY_NAME))
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--results", default=fmnist_tables.FMNIST_RESULTS)
  args = parser.parse_args(argv)
  facts = report(args.row, args.seed, args.results)
  print(f"{args.row}/s{args.seed}: eval " + json.dumps(facts["eval"]))
  for stage, summary in facts["training"].items():
    print(f"training {stage}: " + json.dumps(summary))
  if facts["diagnose"] is not None:
    print("\n".join(diagnose_lines(facts["diagnose"])))


if __name__ == "__main__":
  main()
