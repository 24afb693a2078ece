"""The numbers that the notes on one finished row and seed cite (experiments/results/fmnist/README.md),
from its committed artefacts (experiments/results/fmnist/<row>/s<seed>/: the eval record with its SW2
split, the training logs, the diagnose record).

    python -m experiments.row_report cg_element            # seed 0
    python -m experiments.row_report a --seed 1 [--results DIR]

Training (experiments.training_logs): for each stage log of the row (and of the VAE it shares), the
loss and its parts at the first logged interval, at step 1,000 and at the end; non-finite steps; the
median steps/s; the network's own distance to the LSI target. Diagnosis: per time, the learned gate
against g* and g_p, the critic's distances, and the targets' conditional variances.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
from typing import Any, Sequence

from experiments import fmnist_records, fmnist_rows, program_runs, training_logs

# The eval record's metrics reported (the SW2 split where the record has it: from commit 99ca4ed).
EVAL_KEYS = ("fid", "recon_fid", "sw2_squared", "sw2_squared_real_vs_real_mean", "sw2_squared_real_vs_real_std",
             "sw2_squared_trimmed", "sw2_squared_trimmed_real_vs_real_mean", "sw2_tail_share")


def _read_json(path: str) -> dict[str, Any]:
  with open(path) as f:
    return json.load(f)


def report(row: str, seed: int, results: str = fmnist_records.FMNIST_RESULTS) -> dict[str, Any]:
  """Everything `main` prints, as data."""
  run = program_runs.Run(fmnist_rows.BY_NAME[row], seed, "", results)
  record = run.committed_record()
  if record is None:
    raise SystemExit(f"{row}/s{seed}: no eval record in {run.results_dir}.")
  training = training_logs.run_training(run)
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
  parser.add_argument("--results", default=fmnist_records.FMNIST_RESULTS)
  args = parser.parse_args(argv)
  facts = report(args.row, args.seed, args.results)
  print(f"{args.row}/s{args.seed}: eval " + json.dumps(facts["eval"]))
  for stage, summary in facts["training"].items():
    print(f"training {stage}: " + json.dumps(summary))
  if facts["diagnose"] is not None:
    print("\n".join(diagnose_lines(facts["diagnose"])))


if __name__ == "__main__":
  main()
