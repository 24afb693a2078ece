"""The results program's pilot: how long each stage takes at candidate network sizes, what the whole
program would then cost, and whether the chosen networks learn (README "Protocol").

    python -m experiments.pilot --part=timing   [--candidates=small,medium]   # needs a quiet machine
    python -m experiments.pilot --part=learning [--candidate=small]

timing: for each candidate size, every kind of training stage (VAE, LDM, critic-gate LDM, co-training)
runs its real row config for --timing_steps steps through `experiments.run`, and the steps/s of its
logged intervals (compilation excluded) give seconds per step; an `eval` at --timing_eval_samples
samples gives the per-sample and per-image costs of the evaluation. The projection multiplies them out
for the program (`program_hours`). learning: rows (c), critic-gate (per-element) and (a) train for
--learning_epochs epochs at the candidate's size (the same schedule, shortened) and are evaluated at
N = 1,000 (FID against the first 1,000 test images, biased upwards at this N; sample grid, SW2,
training curves), to show that the networks learn.
Writes <out>/pilot.json (merged across parts) and copies the figures next to it.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from typing import Sequence

from absl import app, flags, logging

from cgdiff import records
from cgdiff.train import writers
from configs import fmnist_base
from experiments import common, fmnist_records, fmnist_rows

# Candidate sizes: overrides of fmnist_base. FLOPs of a batch-128 train step (XLA's count): VAE
# (16, 32, 64) 5.1 GFLOP, (32, 64, 128) 19.8 GFLOP; UNet base 32 (1, 2, 2) with 1 ResBlock per level
# 8.9 GFLOP, with 2 ResBlocks 13.6 GFLOP.
CANDIDATES = {
    "small": ("--config.vae.model.channels=(16,32,64)", "--config.score_net.num_res_blocks=1"),
    "medium": ("--config.vae.model.channels=(32,64,128)", "--config.score_net.num_res_blocks=2"),
}
# (stage kind, row whose config runs it, stage)
TIMED_STAGES = (
    ("vae", "c", "vae"),
    ("ldm", "c", "ldm"),
    ("ldm_gate", "cg_element", "ldm"),
    ("cotrain", "a", "cotrain"),
)
LEARNING_ROWS = ("c", "cg_element", "a")

flags.DEFINE_enum("part", "timing", ["timing", "learning"], "Which part of the pilot to run.")
flags.DEFINE_list("candidates", list(CANDIDATES), "Candidate sizes to time.")
flags.DEFINE_string("candidate", "small", "The size the learning part trains.")
flags.DEFINE_integer("timing_steps", 60, "Steps per timed stage.")
flags.DEFINE_integer("timing_eval_samples", 500, "Samples (and reconstructions) of the timed eval.")
flags.DEFINE_integer("learning_epochs", 3, "Epochs of the learning part.")
flags.DEFINE_string("workdir", "runs/fmnist_pilot", "Where the pilot's runs go.")
flags.DEFINE_string("out", "experiments/results/fmnist/pilot", "Where pilot.json and its figures go.")
FLAGS = flags.FLAGS


def run_row(row: str, workdir: str, overrides: Sequence[str], log_path: str) -> float:
  """`python -m experiments.run` of a row's config with `overrides`; returns its wall seconds."""
  command = [sys.executable, "-m", "experiments.run", f"--config={fmnist_rows.BY_NAME[row].config}",
             f"--workdir={workdir}", *overrides]
  logging.info("%s", " ".join(command))
  os.makedirs(os.path.dirname(log_path), exist_ok=True)
  start = time.perf_counter()
  with open(log_path, "a") as out:
    subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=True)
  return time.perf_counter() - start


def seconds_per_step(metrics_path: str) -> dict[str, float]:
  """Median and best seconds per step over the logged intervals of a metrics.jsonl."""
  rates = [record["steps_per_sec"] for record in writers.read_metrics(metrics_path)]
  return {"median": 1.0 / statistics.median(rates), "best": 1.0 / max(rates), "intervals": len(rates)}


def steps(group: str, count: int, log_every: int) -> list[str]:
  """A `group`'s training cut to `count` steps with the schedule's shape kept: the warm-up and the EMA's
  horizon 1 / (1 - decay) scale with the steps. (Unscaled, an EMA of decay 0.999 over 1,404 steps keeps
  25% of the initial parameters, and the networks it samples from are a quarter random.)"""
  full = fmnist_base.get_config()[group].training
  scale = count / full.num_steps
  ema_decay = max(0.0, 1.0 - (1.0 - full.ema_decay) / scale)
  return [f"--config.{group}.training.num_steps={count}", f"--config.{group}.training.log_every={log_every}",
          f"--config.{group}.training.warmup_steps={round(full.warmup_steps * scale)}",
          f"--config.{group}.training.ema_decay={ema_decay:.6g}",
          f"--config.{group}.training.checkpoint_every={count}"]


def all_steps(count: int, log_every: int) -> list[str]:
  return [arg for group in common.TRAINING_STAGES for arg in steps(group, count, log_every)]


def timing(candidate: str) -> dict:
  """Seconds per step of every stage kind and the eval's costs at one candidate size."""
  root = os.path.join(FLAGS.workdir, "timing", candidate)
  count, log_every = FLAGS.timing_steps, max(FLAGS.timing_steps // 12, 1)
  # Every run gets every training group's settings: a later stage checks the VAE it reads against them.
  sizes, out = [*CANDIDATES[candidate], *all_steps(count, log_every)], {}
  vae_workdir = os.path.join(root, "c")
  for kind, row, stage in TIMED_STAGES:
    workdir = os.path.join(root, row)
    extra = [f"--config.vae_workdir={vae_workdir}"] if stage == "ldm" else []
    wall = run_row(row, workdir, [*sizes, *extra, f"--stages={stage}"], os.path.join(root, "pilot.log"))
    home = vae_workdir if stage == "vae" else workdir
    out[kind] = {**seconds_per_step(os.path.join(home, stage, writers.METRICS_FILE)), "wall_seconds": wall}
  n = FLAGS.timing_eval_samples
  run_row("c", os.path.join(root, "c"), [*sizes, "--stages=eval", f"--config.eval.num_samples={n}",
                                         f"--config.eval.num_reconstructions={n}",
                                         f"--config.eval.num_reference={n}"],
          os.path.join(root, "pilot.log"))
  _, record = eval_record(os.path.join(root, "c"))
  out["eval"] = {"num_samples": n, "wall_seconds": record["wall_seconds"]}
  return out


def eval_seconds(eval_timing: dict, num_samples: int, num_images: int) -> float:
  """An eval of num_samples samples with num_images Inception images (samples, reconstructions and,
  once, the reference), scaled from the timed eval: sampling and decoding by samples, Inception by images,
  the rest (encoding, figures) as timed."""
  wall, n = eval_timing["wall_seconds"], eval_timing["num_samples"]
  # Inception features of n samples, n reconstructions and the n reference images.
  inception = sum(wall.get(k, 0.0) for k in ("fid_features", "recon_fid_features", "reference_statistics"))
  per_image = inception / (3 * n)
  rest = wall["total"] - inception - wall.get("sampling", 0.0)
  return wall.get("sampling", 0.0) * num_samples / n + per_image * num_images + rest


def program_hours(stage_seconds: dict, seeds: int = 2, which: str = "best") -> dict:
  """Hours of the program for `seeds` seeds: per seed, one two-stage VAE, LDMs for (c), LSI and (b),
  critic-gate LDMs for three rows, two co-trainings, eight evals of 10k samples (Inception on 10k
  samples each) and three of reconstructions (one per VAE)."""
  num_steps = fmnist_base.EPOCHS * fmnist_base.EPOCH_STEPS
  per = {kind: stage_seconds[kind][which] * num_steps / 3600 for kind, *_ in TIMED_STAGES}
  train = per["vae"] + 3 * per["ldm"] + 3 * per["ldm_gate"] + 2 * per["cotrain"]
  n = 10_000
  row_eval = eval_seconds(stage_seconds["eval"], n, n)
  evals = (8 * row_eval + 3 * eval_seconds(stage_seconds["eval"], 0, n)) / 3600
  return {"training_per_seed": train, "eval_per_seed": evals, "per_seed": train + evals,
          "program": seeds * (train + evals), "stage_hours": per, "num_steps": num_steps,
          "eval_seconds_per_row": row_eval}


def eval_record(workdir: str) -> tuple[str, dict]:
  """(path, record) of the eval stage's record in `workdir`; SystemExit naming the workdir if it has none."""
  found = fmnist_records.find_record(os.path.join(workdir, "eval"), "eval")
  if found is None:
    raise SystemExit(f"{workdir}/eval: no eval record.")
  return found


def learning(candidate: str) -> dict:
  """Rows (c), cg_element and (a) for a few epochs at `candidate`'s size; grids and curves."""
  root = os.path.join(FLAGS.workdir, "learning", candidate)
  count = FLAGS.learning_epochs * fmnist_base.EPOCH_STEPS
  out = {"epochs": FLAGS.learning_epochs, "num_steps": count, "rows": {}}
  vae_workdir = os.path.join(root, fmnist_rows.TWO_STAGE_VAE)
  for row in LEARNING_ROWS:
    workdir = os.path.join(root, row)
    extra = [f"--config.vae_workdir={vae_workdir}"] if fmnist_rows.BY_NAME[row].vae_home else []
    overrides = [*CANDIDATES[candidate], *extra, *all_steps(count, 50), "--config.eval.num_samples=1000",
                 "--config.eval.num_reconstructions=1000", "--config.eval.num_reference=1000"]
    wall = run_row(row, workdir, overrides, os.path.join(root, "pilot.log"))
    record_path, record = eval_record(workdir)
    target = os.path.join(FLAGS.out, f"learning_{candidate}_{row}")
    os.makedirs(target, exist_ok=True)
    for path in [record_path, *(os.path.join(os.path.dirname(record_path), name)
                                for name in record["figures"].values())]:
      shutil.copyfile(path, os.path.join(target, os.path.basename(path)))
    out["rows"][row] = {"wall_seconds": wall, "metrics": record["metrics"], "figures": target}
  return out


def main(argv):
  del argv
  path = os.path.join(FLAGS.out, "pilot.json")
  record = json.load(open(path)) if os.path.exists(path) else {}
  record["stage"] = "pilot"  # experiments.tables prints its tables
  if FLAGS.part == "timing":
    results = {name: timing(name) for name in FLAGS.candidates}
    projection = {name: program_hours(results[name]) for name in results}
    record["timing"] = {"steps_per_stage": FLAGS.timing_steps, "candidates": results,
                        "projection_hours_two_seeds": projection, "date": records.run_record({})["date"],
                        "git_commit": records.git_commit()}
    for name in results:
      logging.info("%s: %s", name, json.dumps(projection[name]))
  else:
    record["chosen"] = FLAGS.candidate  # the size the program runs: the one whose learning was shown
    record.setdefault("learning", {})[FLAGS.candidate] = {
        **learning(FLAGS.candidate), "git_commit": records.git_commit()}
  records.write_json(path, record)
  logging.info("-> %s", path)


if __name__ == "__main__":
  app.run(main)
