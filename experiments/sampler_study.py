"""The sampler study: FID and SW2 against NFE on one trained row and seed of the Fashion-MNIST program,
every sampler from the same fixed noise banks at N = 5,000 (these FIDs are compared only with each
other: FID is biased upwards at small N).

    python -m experiments.sampler_study run [--row best] [--seed S]   # resumable; best: lowest mean FID
    python -m experiments.sampler_study table [--row ROW] [--seed S]  # markdown table of the committed
                                                                     # records (default: every seed of the
                                                                     # row that has a study; also in
                                                                     # experiments.tables)

Each sampler is the row's own `eval` stage with --config.sample.method / num_steps and
--config.eval.num_samples=5000, run in a study workdir <root>/sampler_study/<row>_s<seed> whose trained
stages are links to the row's (so the row's own eval record stays the only one in its workdir). Records
and figures are copied to <results>/sampler_study/<row>_s<seed>/, with study.json (every sampler's FID,
SW2^2, trimmed SW2^2, latents beyond the real max norm and NFE) and study.png: whether far latents are the
sampler's, they shrink with more steps, or the network's, they do not.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
from typing import Sequence

from cgdiff import plots, records
from experiments import common, fmnist_records, fmnist_rows, fmnist_tables, program_runs

# (method, steps): RK4 at 5, 10, 20 steps; the other ODE solvers and DDIM at 40 NFE, RK4@10's budget; the
# SDE samplers at 25, 50 and 100 steps (Heun-PC) and 001's fresh-noise variant at 50.
SAMPLERS = (("rk4", 5), ("rk4", 10), ("rk4", 20), ("heun_ode", 20), ("euler_ode", 40), ("ddim", 40),
            ("heun_pc", 25), ("heun_pc", 50), ("heun_pc", 100), ("heun_pc_seed", 50))
NUM_SAMPLES = 5000
# The stages whose outputs sampling reads: the trained ones and the latent statistics.
TRAINED = (*common.TRAINING_STAGES, "stats")


def lowest_mean_fid_row(root: str, results: str | None = None) -> str | None:
  """The row with the lowest mean FID over all its finished seeds, third seeds included (the README's
  "lowest mean FID" line), among the rows with both first seeds; None before any row has them."""
  fids = {name: values for name, values in program_runs.fids_by_row(root, program_runs.ALL_SEEDS, results).items()
          if len(values) >= len(program_runs.FIRST_SEEDS)}
  return min(fids, key=lambda name: statistics.fmean(fids[name])) if fids else None


def best_row(root: str, results: str | None = None) -> str:
  """lowest_mean_fid_row, which must exist."""
  row = lowest_mean_fid_row(root, results)
  if row is None:
    raise SystemExit("no row has finished both seeds yet; pass --row.")
  return row


def default_seed(row: str, root: str, results: str | None = None) -> int:
  """The first seed of `row` that finished on this machine (its checkpoints are here, so nothing is
  trained again), else 0 (trained again from its committed record's seed)."""
  return next((seed for seed in program_runs.ALL_SEEDS if study_run(row, seed, root, results).finished_here()),
              program_runs.FIRST_SEEDS[0])


def study_run(row: str, seed: int, root: str, results: str | None = None) -> program_runs.Run:
  return program_runs.Run(fmnist_rows.BY_NAME[row], seed, root, results)


def train_again(run: program_runs.Run) -> None:
  """Trains the training stages of a run that finished on an earlier machine (its committed record is
  here, its checkpoints are not) with the row's own command and seed; resumes where a previous call
  stopped."""
  config = run.row.get_config()
  stages = [stage for stage in config.stages if stage in TRAINED]
  program_runs.log(f"sampler study {run.name}: its checkpoints are not on this machine; training {stages} again")
  os.makedirs(run.workdir, exist_ok=True)
  with open(os.path.join(run.workdir, "run.log"), "a") as log:
    subprocess.run(run.command([f"--stages={','.join(stages)}"]), stdout=log, stderr=subprocess.STDOUT,
                   check=True)


def study_dir(run: program_runs.Run, base: str) -> str:
  """<base>/sampler_study/<row>_s<seed>: the study's workdir under the program's root, its copied
  records under the results."""
  return os.path.join(base, "sampler_study", f"{run.row.name}_s{run.seed}")


def finished(out_dir: str) -> bool:
  """Whether `out_dir`'s study.json holds every sampler of SAMPLERS."""
  try:
    with open(os.path.join(out_dir, "study.json")) as f:
      done = {(r["sampler"], r["steps"]) for r in json.load(f)["samplers"]}
  except FileNotFoundError:
    return False
  return set(SAMPLERS) <= done


def study_workdir(run: program_runs.Run, root: str) -> str:
  """<root>/sampler_study/<row>_s<seed>, its trained stage directories linked to the row's."""
  workdir = study_dir(run, root)
  os.makedirs(workdir, exist_ok=True)
  for stage in TRAINED:
    source = os.path.join(run.workdir, stage)
    link = os.path.join(workdir, stage)
    if os.path.isdir(source) and not os.path.lexists(link):
      os.symlink(os.path.abspath(source), link)
  return workdir


def run_study(row: str, seed: int, root: str, results: str) -> str:
  """Evaluates every sampler not yet evaluated; returns the results directory."""
  run = study_run(row, seed, root, results)
  if not run.done():
    raise SystemExit(f"{run.name} has not finished (no {run.workdir}/done.json, no eval record in "
                     f"{run.results_dir}).")
  if not run.finished_here():
    train_again(run)
  workdir = study_workdir(run, root)
  out_dir = study_dir(run, results)
  for method, steps in SAMPLERS:
    if glob.glob(os.path.join(workdir, "eval", f"*_{method}_{steps}_n{NUM_SAMPLES}.json")):
      continue
    command = run.command(["--stages=eval", f"--config.sample.method={method}",
                           f"--config.sample.num_steps={steps}", f"--config.eval.num_samples={NUM_SAMPLES}"])
    command[command.index(f"--workdir={run.workdir}")] = f"--workdir={workdir}"
    program_runs.log(f"sampler study {run.name}: {method} x {steps}")
    with open(os.path.join(workdir, "run.log"), "a") as log:
      subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=True)
  os.makedirs(out_dir, exist_ok=True)
  for path in glob.glob(os.path.join(workdir, "eval", f"*_n{NUM_SAMPLES}*")):
    if os.path.isfile(path):
      shutil.copyfile(path, os.path.join(out_dir, os.path.basename(path)))
  summarise(out_dir)
  return out_dir


def summarise(out_dir: str) -> dict:
  """study.json and study.png from the eval records in `out_dir`."""
  rows = []
  for path in sorted(glob.glob(os.path.join(out_dir, f"*_n{NUM_SAMPLES}.json"))):
    with open(path) as f:
      record = json.load(f)
    metrics = record["metrics"]
    rows.append({"sampler": record["sampler"], "steps": record["steps"], "nfe": record["nfe"],
                 "fid": metrics.get("fid"), "sw2_squared": metrics["sw2_squared"],
                 "sw2_squared_floor_mean": metrics["sw2_squared_real_vs_real_mean"],
                 # The split of SW2^2 (evaluation.py): is a sampler's distance its far latents or its bulk?
                 "sw2_squared_trimmed": metrics.get("sw2_squared_trimmed"),
                 "sw2_squared_trimmed_floor_mean": metrics.get("sw2_squared_trimmed_real_vs_real_mean"),
                 "sw2_tail": record.get("sw2", {}).get("tail"), "sw2_tail_share": metrics.get("sw2_tail_share"),
                 "beyond_real_max": record.get("sw2", {}).get("norms", {}).get("generated_beyond_real_max"),
                 "sampling_seconds": record["wall_seconds"].get("sampling"), "record": os.path.basename(path)})
  order = {key: i for i, key in enumerate(SAMPLERS)}
  rows.sort(key=lambda r: order.get((r["sampler"], r["steps"]), len(order)))
  summary = {"num_samples": NUM_SAMPLES, "samplers": rows}
  records.write_json(os.path.join(out_dir, "study.json"), summary)
  if rows:
    plots.plot_sampler_study(rows, os.path.join(out_dir, "study.png"),
                             title=f"{os.path.basename(out_dir)}: N = {NUM_SAMPLES}, the same banks")
  return summary


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("action", choices=("run", "table"))
  parser.add_argument("--row", default="best", help="a row name, or 'best' (lowest mean FID over its seeds)")
  parser.add_argument("--seed", type=int, default=None,
                      help="default: the first seed finished on this machine, else 0")
  parser.add_argument("--root", default=program_runs.DEFAULT_ROOT)
  parser.add_argument("--results", default=fmnist_records.FMNIST_RESULTS)
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
  args = parse_args(argv)
  row = best_row(args.root, args.results) if args.row == "best" else args.row
  if row not in fmnist_rows.BY_NAME:
    raise SystemExit(f"unknown row {row!r}; the rows are {sorted(fmnist_rows.BY_NAME)}.")
  if args.action == "run":
    seed = default_seed(row, args.root, args.results) if args.seed is None else args.seed
    print(fmnist_tables.sampler_study_table(run_study(row, seed, args.root, args.results)))
    return
  # `table` reads the committed records only: the seed studied is whichever has them, not the seed that a
  # run would pick from the checkpoints on this machine.
  studies = (f"{row}_s*" if args.seed is None
             else os.path.basename(study_dir(study_run(row, args.seed, args.root, args.results), args.results)))
  tables = fmnist_tables.sampler_study_tables(args.results, studies)
  if not tables:
    seed = "" if args.seed is None else f" at seed {args.seed}"
    raise SystemExit(f"no sampler study of {row}{seed} under {args.results}/sampler_study/ (no study.json); "
                     f"`python -m experiments.sampler_study run --row {row}` makes one.")
  print(tables)


if __name__ == "__main__":
  main()
