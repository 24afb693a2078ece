"""The results program: every row of the Fashion-MNIST table (experiments/fmnist_rows.py) for each seed,
in order, resumable across sessions (README "Protocol").

    nohup python -m experiments.program run --commit --readme README.md > runs/fmnist/program.out 2>&1 &
    python -m experiments.program status            # done, running, failed, left, and an ETA
    python -m experiments.program pause | resume    # SIGSTOP / SIGCONT the running row (for benchmarks)

Each (row, seed) is one `python -m experiments.run --config=<row config> --workdir=<root>/<row>/s<seed>
--config.seed=<seed> [--config.vae_workdir=<root>/<home>/s<seed>]`: the row's own command, which trains,
samples and evaluates, resuming whatever is done. Rows that share a VAE point at the workdir that holds
it. The order is seed 0 of every row, then seed 1 of every row, then a third seed of every row whose
FID is within twice the spread between seeds of another row's (`program_runs.third_seed_rows`), then
the sampler study (experiments.sampler_study) on the row of lowest mean FID, committed at the end. A
finished run leaves `done.json` in its workdir; its records, figures and training logs are copied to
<results>/<row>/s<seed>/, the figures across rows (experiments.row_figures) are drawn again and, with
--commit, all are committed at once; then experiments.far_latents studies its far latents while its
checkpoints are here (committed on its own). A run whose eval record is there is done
on any machine, its workdir there or not. A failed run is tried again once (a
hung one, killed by the stall watchdog, up to MAX_STALLS times), then left for the next `run` (its log
stays in <workdir>/run.log). A SIGTERM stops the driver: it passes the signal on to the running row, which
saves the training step it is in (cgdiff.train.loop), waits for it and exits; the next `run` resumes.

How jobs are run and watched (lock, stall watchdog, retries, signals) is experiments.program_jobs; what is
kept of a finished run (copies, figures, README tables, commits), experiments.program_artefacts.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import signal
import sys
import threading
from typing import Sequence

from experiments import (far_latents, fmnist_records, fmnist_rows, program_artefacts, program_costs, program_jobs,
                         program_runs, sampler_study, tables)

DEFAULT_ROOT = program_runs.DEFAULT_ROOT
DEFAULT_RESULTS = fmnist_records.FMNIST_RESULTS
FAR_LATENTS_FAILED = "far_latents_failed.json"  # in a workdir where experiments.far_latents made no record


def row_job(run: program_runs.Run, overrides: Sequence[str]) -> program_jobs.Job:
  return program_jobs.Job(run.name, run.command(overrides), os.path.join(run.workdir, "run.log"))


def study_job(run: program_runs.Run, root: str, results: str) -> program_jobs.Job:
  """The sampler study on `run` (experiments.sampler_study run: resumable, and it trains the run again
  first where its checkpoints are not on this machine)."""
  command = [sys.executable, "-m", "experiments.sampler_study", "run", f"--row={run.row.name}",
             f"--seed={run.seed}", f"--root={root}", f"--results={results}"]
  study_log = os.path.join(sampler_study.study_dir(run, root), "run.log")
  return program_jobs.Job(f"sampler study {run.name}", command, os.path.join(root, "sampler_study", "driver.log"),
                          watch=(study_log, os.path.join(run.workdir, "run.log")))


def mark_failed(run: program_runs.Run, marker: str = "failed.json", **why) -> None:
  """<workdir>/<marker>: failed.json, `status` shows the run as failed and the next `run` tries it again;
  FAR_LATENTS_FAILED, its far latents are not studied again."""
  with open(os.path.join(run.workdir, marker), "w") as f:
    json.dump({"failed": datetime.datetime.now().isoformat(timespec="seconds"), **why}, f)


def finish_run(run: program_runs.Run, seconds: float, results: str, do_commit: bool, readme: str | None) -> None:
  """Copies a finished run's artefacts, draws the figures across rows and writes the README's tables
  again, commits them, then marks it done."""
  differs = program_runs.vae_differs(run, program_runs.runs_for((run.seed,), run.root, results=results))
  if differs:
    why = (f"its VAE ({run.vae_workdir}) differs from the one of the committed {', '.join(differs)}: "
           "not committed (a shared VAE trained again must equal the committed one, bit for bit)")
    program_runs.log(f"{run.name}: {why}")
    mark_failed(run, why=why)
    return
  if os.path.exists(os.path.join(run.workdir, "failed.json")):
    os.remove(os.path.join(run.workdir, "failed.json"))
  record = program_runs.eval_record(run.workdir)
  written = program_artefacts.copy_artefacts(run) + program_artefacts.update_figures(results)
  if readme:
    written += program_artefacts.update_readme(readme, results)
  result = program_runs.summary(record) if record else "no eval record"
  program_runs.log(f"{run.name}: done in {seconds / 3600:.2f} h: {result}")
  if do_commit and written:
    program_artefacts.commit(written, f"Results {run.name} ({run.row.label}): {result}")
  # Last: a run whose artefacts were not copied and committed is not done (Run.done).
  with open(os.path.join(run.workdir, "done.json"), "w") as f:
    json.dump({"finished": datetime.datetime.now().isoformat(timespec="seconds"), "seconds": seconds}, f)


def far_latents_job(run: program_runs.Run, results: str) -> program_jobs.Job:
  return program_jobs.Job(f"far latents {run.name}",
                          [sys.executable, "-m", "experiments.far_latents", run.row.name, f"--seed={run.seed}",
                           f"--root={run.root}", f"--results={results}"],
                          os.path.join(run.workdir, "far_latents.log"))


def far_latents_pending(run: program_runs.Run, results: str) -> bool:
  """Whether `run` finished here and experiments.far_latents has neither studied it nor failed on it."""
  record = far_latents.out_path(results, run.row.name, run.seed) + ".json"
  return (run.finished_here() and not os.path.exists(record)
          and not os.path.exists(os.path.join(run.workdir, FAR_LATENTS_FAILED)))


def run_far_latents(run: program_runs.Run, results: str, do_commit: bool, stop: threading.Event,
                    readme: str | None) -> None:
  """experiments.far_latents on a run finished here, while its checkpoints and eval samples are on this
  machine (a later session may start without them); its record and figure are committed with the
  README's tables. Tried once: a run with no far latents, or one where it fails, is logged and marked
  (the command can be run by hand while the workdir is here); one a SIGTERM stopped is tried again."""
  job, out = far_latents_job(run, results), far_latents.out_path(results, run.row.name, run.seed)
  program_runs.log(f"{job.name}: start: {' '.join(job.command)}")
  status = program_jobs.run_one(job, run.root)
  if status != 0 or not os.path.exists(out + ".json"):
    if not stop.is_set():
      mark_failed(run, marker=FAR_LATENTS_FAILED, status=status)
    program_runs.log(f"{job.name}: exit status {status}, no record; see {job.log_path}")
    return
  with open(out + ".json") as f:
    record = json.load(f)
  written = sorted(glob.glob(out + ".*")) + (program_artefacts.update_readme(readme, results) if readme else [])
  steps = record["by_steps"]
  result = (f"{len(record['far_rows'])} of {record['num_compared']} latents beyond the real max at "
            f"{record['eval_record']['sampler']} x {steps[0]['steps']}, {steps[-1]['far']['beyond_real_max']} "
            f"still at x {steps[-1]['steps']}")
  program_runs.log(f"{job.name}: {result}")
  if do_commit:
    program_artefacts.commit(written, f"Far latents {run.name}: {result}")


def pending_study(root: str, results: str) -> program_runs.Run | None:
  """The run the sampler study is for once every planned run is done (the row with the lowest mean FID
  over its seeds, at a seed whose checkpoints are here if any), or None: runs are left, or its study
  is finished."""
  runs = program_runs.planned_runs(root, results)
  if not all(run.done() for run in runs):
    return None
  row = sampler_study.best_row(root, results)
  run = sampler_study.study_run(row, sampler_study.default_seed(row, root, results), root, results)
  return None if sampler_study.finished(sampler_study.study_dir(run, results)) else run


def run_sampler_study(run: program_runs.Run, root: str, results: str, do_commit: bool, stop: threading.Event,
                      readme: str | None = None) -> None:
  """The program's last step: the sampler study on `run`; its records, study.json and study.png
  (<results>/sampler_study/<row>_s<seed>/) are committed, with `readme`'s tables, which print it."""
  job = study_job(run, root, results)
  status, seconds = program_jobs.attempt(job, root, stop)
  if status != 0:
    why = "stopped by SIGTERM" if stop.is_set() else "failed"
    program_runs.log(f"{job.name}: {why} (exit status {status}); the next `run` resumes it")
    return
  out_dir = sampler_study.study_dir(run, results)
  program_runs.log(f"{job.name}: done in {seconds / 3600:.2f} h: {out_dir}")
  written = sorted(os.path.join(out_dir, name) for name in os.listdir(out_dir))
  if readme:
    written += program_artefacts.update_readme(readme, results)
  if do_commit and written:
    program_artefacts.commit(written, f"Sampler study {run.name} ({run.row.label}): "
                             f"{len(sampler_study.SAMPLERS)} samplers at N = {sampler_study.NUM_SAMPLES}")


def run_program(root: str, results: str, overrides: Sequence[str], do_commit: bool,
                seeds: Sequence[int] | None = None, rows: Sequence[str] | None = None,
                readme: str | None = None) -> None:
  """Runs every planned run that is not done, in order (only `seeds` / `rows` where given); with
  `readme`, writes the tables of `results` into it as each run finishes (committed with the run). The
  whole program (no `seeds`, `rows` or `overrides`) ends with the sampler study once every run is done."""
  attempted: set[str] = set()
  with program_jobs.driving(root) as stop:
    while not stop.is_set():
      runs = (program_runs.runs_for(seeds, root, results=results) if seeds is not None
              else program_runs.planned_runs(root, results))
      if rows is not None:
        runs = [r for r in runs if r.row.name in rows]
      for done_here in [r for r in runs if far_latents_pending(r, results)]:
        if not stop.is_set():
          run_far_latents(done_here, results, do_commit, stop, readme)
      if stop.is_set():
        break
      todo = [r for r in runs if not r.done() and r.name not in attempted]
      if not todo:
        break
      run = todo[0]
      attempted.add(run.name)
      if program_runs.vae_trained_again(run, program_runs.runs_for((run.seed,), root, results=results)):
        program_runs.log(f"{run.name}: its VAE ({run.vae_workdir}) was trained on an earlier machine and is "
                         "gone; trained again")
      status, seconds = program_jobs.attempt(row_job(run, overrides), root, stop)
      if stop.is_set() and status != 0:
        program_runs.log(f"{run.name}: stopped by SIGTERM (exit status {status}); the next `run` resumes it")
        break
      if status != 0:
        mark_failed(run, status=status)
        continue
      finish_run(run, seconds, results, do_commit, readme)
    whole_program = seeds is None and rows is None and not overrides
    study = pending_study(root, results) if whole_program and not stop.is_set() else None
    if study is not None:
      run_sampler_study(study, root, results, do_commit, stop, readme)


def status(root: str, results: str) -> str:
  from configs import fmnist_base  # pylint: disable=g-import-not-at-top
  costs = {**program_costs.pilot_costs(results), **program_costs.measured_costs(root, results)}
  lock = program_jobs.read_lock(root)
  running = lock.get("run") if lock else None
  lines, left, unknown, counted = [], 0.0, False, set()
  whole, whole_counted = 0.0, set()
  for run in program_runs.planned_runs(root, results):
    seconds = program_costs.remaining_seconds(run, costs, counted=counted)
    run_whole = program_costs.remaining_seconds(run, costs, counted=whole_counted, whole=True)
    unknown |= run_whole is None
    whole += run_whole or 0.0
    if run.done():
      record = run.record()
      where = "" if run.finished_here() else " (committed; workdir not on this machine)"
      lines.append(f"  done     {run.name:16s} {program_runs.summary(record) if record else ''}{where}")
      continue
    unknown |= seconds is None
    left += seconds or 0.0
    why = ""
    if run.name == running:
      state = "running"
    elif os.path.exists(os.path.join(run.workdir, "failed.json")):
      state = "failed"
      with open(os.path.join(run.workdir, "failed.json")) as f:
        why = json.load(f).get("why", "")
      why = why and f": {why}"
    else:
      state = "started" if os.path.exists(os.path.join(run.workdir, "run.log")) else "left"
    eta = "?" if seconds is None else f"{seconds / 3600:.1f} h"
    lines.append(f"  {state:8s} {run.name:16s} ~{eta}{why}")
  study, study_left, study_whole = study_status(root, results, costs, running)
  unknown |= study_whole is None
  left += study_left or 0.0
  whole += study_whole or 0.0
  lines.append(f"  {study}")
  head = f"program in {root}: " + (f"driver pid {lock['pid']}, running {running}" if lock else "not running")
  unknown_part = " (+ runs of unknown cost)" if unknown else ""
  total = (f"left: ~{left / 3600:.1f} h{unknown_part}; the whole program at these costs: ~{whole / 3600:.1f} h"
           f"{unknown_part} of this machine (budget: {fmnist_base.PROGRAM_BUDGET_HOURS} h)")
  third = program_runs.third_seed_rows(program_runs.fids_by_row(root, program_runs.FIRST_SEEDS, results))
  return "\n".join([head, *lines, total, f"third seeds called for: {third or 'none (yet)'}",
                    "costs (s/step by stage kind; s per eval, per VAE's reconstructions; an eval's s per sample and "
                    "its sampling's per sample and NFE): "
                    + json.dumps({k: float(f"{v:.3g}") for k, v in costs.items()})])


def study_status(root: str, results: str, costs: dict[str, float],
                 running: str | None) -> tuple[str, float | None, float | None]:
  """The sampler study's line of `status` (done, where its records are; running, with its cost; or left,
  with its cost), its seconds left (0 once done; its whole cost while it runs: its progress is not
  counted) and its whole cost, at `costs` (None where they do not give it)."""
  seconds = program_costs.study_seconds(costs)
  eta = "?" if seconds is None else f"{seconds / 3600:.1f} h"
  done = sorted(os.path.basename(os.path.dirname(path)) for path in
                glob.glob(os.path.join(results, "sampler_study", "*", "study.json"))
                if sampler_study.finished(os.path.dirname(path)))
  if done:
    return f"done     sampler study    {', '.join(done)} ({os.path.join(results, 'sampler_study')})", 0.0, seconds
  if running and running.startswith("sampler study"):
    return f"running  {running}  ~{eta} in all", seconds, seconds
  row = sampler_study.lowest_mean_fid_row(root, results)
  best = f", on the row of lowest mean FID (now {row})" if row else ""
  return f"left     sampler study    ~{eta} (after the runs{best})", seconds, seconds


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("action", choices=("run", "status", "pause", "resume"))
  parser.add_argument("--root", default=DEFAULT_ROOT, help="where the workdirs go")
  parser.add_argument("--results", default=DEFAULT_RESULTS, help="where the small artefacts are copied")
  parser.add_argument("--commit", action="store_true", help="commit each finished run's artefacts")
  parser.add_argument("--readme", default=None,
                      help="write the results' tables into this README as runs finish (experiments.tables)")
  parser.add_argument("--seeds", default=None,
                      help="only these seeds, e.g. 0 or 0,1 (default: the program: 0, 1, then third seeds)")
  parser.add_argument("--rows", default=None, help="only these rows, e.g. c,lsi (default: every row)")
  parser.add_argument("--override", action="append", default=[],
                      help="an extra --config.key=value for every run (tests, pilots)")
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
  args = parse_args(argv)
  if args.action == "run":
    seeds = None if args.seeds is None else [int(s) for s in args.seeds.split(",")]
    rows = None if args.rows is None else args.rows.split(",")
    unknown = sorted(set(rows or ()) - set(fmnist_rows.BY_NAME))
    if unknown:
      raise SystemExit(f"unknown row(s) {unknown}; the rows are {sorted(fmnist_rows.BY_NAME)}.")
    if args.readme:
      try:
        tables.check_readme(args.readme)
      except ValueError as error:
        raise SystemExit(f"--readme: {error}") from None
    run_program(args.root, args.results, args.override, args.commit, seeds, rows, args.readme)
  elif args.action == "status":
    print(status(args.root, args.results))
  else:
    print(program_jobs.signal_running(args.root, signal.SIGSTOP if args.action == "pause" else signal.SIGCONT))


if __name__ == "__main__":
  main()
