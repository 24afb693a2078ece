"""A committed run of the results program trained and evaluated again from scratch, and compared with its
committed record: the networks' hashes, every eval metric, and the training logs step by step.

    python -m experiments.replicate run c --seed 2       # trains runs/replica/c/s2 (resuming), then compares
    python -m experiments.replicate compare c --seed 2   # compares what is there now (a replica in progress too)

Both write the comparison to <results>/replicas/<row>_s<seed>.json and print it. The replica runs the row's
own command (the program's, with the shared VAE in <root>/<vae_home>/s<seed>), so it trains every stage the
committed run's networks came from, the shared VAE included. It runs as the program's jobs do
(experiments.program_jobs): watched for stalls and tried again, paused and resumed by
`python -m experiments.program pause|resume --root <root>`, and a SIGTERM saves its step (the same command
resumes it).

Training is bit-for-bit deterministic on one machine (README Reliability; tests/test_faults.py), and the
committed records name the machine they were made on (`machine.platform`); whether another machine of the
same kind reproduces them, and by how much its numbers move where it does not, is what this measures.
"""

from __future__ import annotations

import argparse
import math
import os
from typing import Any, Sequence

from cgdiff import records
from cgdiff.train import writers
from experiments import fmnist_records, fmnist_rows, program, program_jobs, program_runs

DEFAULT_ROOT = "runs/replica"
# Logged quantities that time the machine, not the training: left out of the comparison.
TIMING_KEYS = ("steps_per_sec", "examples_per_sec")
NETWORKS = ("vae_sha256", "score_sha256", "gate_sha256")


def relative_difference(committed: float, replica: float) -> float:
  """|replica - committed| / |committed| (the absolute difference where committed is 0)."""
  gap = abs(replica - committed)
  return gap / abs(committed) if committed else gap


def _intervals(log: list[dict[str, Any]]) -> list[tuple[int, int]]:
  """(previous logged step, step) of each record: a logged value is the mean over that interval's steps,
  so two logs compare only where their intervals match (a run stopped by SIGTERM logs the step it stopped
  at, and its resumed run's next interval is a short one)."""
  steps = [record["step"] for record in log]
  return list(zip([0] + steps[:-1], steps))


def compare_logs(committed: list[dict[str, Any]], replica: list[dict[str, Any]]) -> dict[str, Any]:
  """Two metrics.jsonl's records (writers.read_metrics) of one training stage, over the intervals both logged:
  whether every logged value is equal (bit for bit: JSON keeps a float's every digit), the first step and
  quantities that differ, and per quantity the largest relative difference over the steps and the one at
  the last step both logged. The replica may still be training: only the steps it has logged count."""
  replica_by_interval = dict(zip(_intervals(replica), replica))
  pairs = [(record, replica_by_interval[interval]) for interval, record in zip(_intervals(committed), committed)
           if interval in replica_by_interval]
  out: dict[str, Any] = {"intervals_logged": {"committed": len(committed), "replica": len(replica)},
                         "intervals_compared": len(pairs),
                         "last_step_compared": pairs[-1][0]["step"] if pairs else None,
                         "identical": None, "first_difference": None, "largest_relative_difference": {},
                         "last_relative_difference": {}}
  if not pairs:
    return out
  keys = [key for key in pairs[0][0] if key not in TIMING_KEYS and key != "step" and key in pairs[0][1]]
  largest = out["largest_relative_difference"]
  for first, second in pairs:
    differing = [key for key in keys if first[key] != second[key]]
    if differing and out["first_difference"] is None:
      out["first_difference"] = {"step": first["step"], "keys": differing}
    gaps = {key: relative_difference(first[key], second[key]) for key in keys}
    largest.update({key: max(largest.get(key, 0.0), gap) for key, gap in gaps.items()})
  out["identical"] = out["first_difference"] is None
  out["last_relative_difference"] = gaps  # the last pair's
  return out


def compare_evals(committed: dict[str, Any], replica: dict[str, Any] | None) -> dict[str, Any] | None:
  """The networks' hashes (equal or not) and every metric of the committed eval record against the
  replica's (None while the replica has not been evaluated)."""
  if replica is None:
    return None
  networks = {key: {"committed": committed["networks"].get(key), "replica": replica["networks"].get(key),
                    "equal": committed["networks"].get(key) == replica["networks"].get(key)}
              for key in NETWORKS if committed["networks"].get(key) is not None}
  metrics = {}
  for key, value in committed["metrics"].items():
    mine = replica["metrics"].get(key)
    if isinstance(value, (int, float)) and isinstance(mine, (int, float)):
      metrics[key] = {"committed": value, "replica": mine, "difference": mine - value}
  return {"networks": networks, "identical_networks": all(v["equal"] for v in networks.values()),
          "metrics": metrics, "machine": {"committed": committed["machine"], "replica": replica["machine"]},
          "git_commit": {"committed": committed["git_commit"], "replica": replica["git_commit"]}}


def compare(run: program_runs.Run) -> dict[str, Any]:
  """The replica in run.workdir (and its shared VAE's) against the committed run under run.results."""
  committed = run.committed_record()
  if committed is None:
    raise FileNotFoundError(f"{run.name}: no committed eval record under {run.results_dir}; a replica "
                            "is compared with a committed run.")
  training = {}
  for home in run.homes():
    for stage, path in program_runs.stage_files(home.committed).items():
      mine = program_runs.stage_files(home.workdir).get(stage)
      training[home.label + stage] = compare_logs(writers.read_metrics(path),
                                                  writers.read_metrics(mine) if mine else [])
  return {"run": run.name, "row": run.row.label, "command": " ".join(["python"] + run.command()[1:]),
          "replica_workdir": run.workdir, "committed_results": run.results_dir,
          "committed_machine": committed["machine"]["platform"],
          "training": training, "eval": compare_evals(committed, program_runs.eval_record(run.workdir)),
          "compared_at_commit": records.git_commit()}


def out_path(results: str, run: program_runs.Run) -> str:
  return os.path.join(results, "replicas", f"{run.row.name}_s{run.seed}.json")


def _number(value: float) -> str:
  return f"{value:.6g}" if math.isfinite(value) else str(value)


def summary(comparison: dict[str, Any]) -> str:
  """The comparison in markdown: the training stages, then the networks and the eval's metrics."""
  lines = [f"{comparison['run']} ({comparison['row']}), committed on {comparison['committed_machine']}:", "",
           "| stage | logged intervals compared | bit for bit | first difference | largest relative "
           "difference (loss) | at the last interval (loss) |", "| --- | --- | --- | --- | --- | --- |"]
  for stage, logs in comparison["training"].items():
    first = logs["first_difference"]
    loss = "loss" if "loss" in logs["largest_relative_difference"] else None
    lines.append(
        f"| {stage} | {logs['intervals_compared']} of {logs['intervals_logged']['committed']}"
        + (f" (to step {logs['last_step_compared']})" if logs["intervals_compared"] else "") + " | "
        + f"{'-' if logs['identical'] is None else 'yes' if logs['identical'] else 'no'} | "
        + (f"step {first['step']}: {', '.join(first['keys'])}" if first else "-") + " | "
        + (f"{logs['largest_relative_difference'][loss]:.2e} | {logs['last_relative_difference'][loss]:.2e}"
           if loss else "- | -") + " |")
  evaluation = comparison["eval"]
  if evaluation is None:
    lines += ["", "Not evaluated yet."]
    return "\n".join(lines)
  lines += ["", f"Evaluated on {evaluation['machine']['replica']['platform']}; networks bit for bit: "
            + ", ".join(f"{key.removesuffix('_sha256')} {'yes' if v['equal'] else 'no'}"
                        for key, v in evaluation["networks"].items()), "",
            "| metric | committed | replica | difference |", "| --- | --- | --- | --- |"]
  for key, v in evaluation["metrics"].items():
    lines.append(f"| {key} | {_number(v['committed'])} | {_number(v['replica'])} | {v['difference']:.3g} |")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("action", choices=("run", "compare"))
  parser.add_argument("row", choices=sorted(fmnist_rows.BY_NAME))
  parser.add_argument("--seed", type=int, required=True)
  parser.add_argument("--root", default=DEFAULT_ROOT, help="where the replica's workdirs go")
  parser.add_argument("--results", default=fmnist_records.FMNIST_RESULTS)
  args = parser.parse_args(argv)
  run = program_runs.Run(fmnist_rows.BY_NAME[args.row], args.seed, args.root, args.results)
  if run.committed_record() is None:
    raise SystemExit(f"{run.name}: no committed eval record under {run.results_dir}: nothing to replicate.")
  if args.action == "run":
    with program_jobs.driving(args.root) as stop:
      status, _ = program_jobs.attempt(program.row_job(run, ()), args.root, stop)
    if status:
      why = "stopped by SIGTERM" if stop.is_set() else f"failed (exit status {status})"
      raise SystemExit(f"{run.name}: the replica {why} (its log: {os.path.join(run.workdir, 'run.log')}); "
                       "the same command resumes it.")
  comparison = compare(run)
  path = records.write_json(out_path(args.results, run), comparison)
  print(summary(comparison))
  print(f"\n-> {path}")


if __name__ == "__main__":
  main()
