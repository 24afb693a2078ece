"""The results program driver (experiments/program.py): order, resume, retries, artefacts, third seeds,
commits. Rows are replaced by a stand-in command that writes what `experiments.run` would (no JAX)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import shutil
import subprocess
import sys
import threading
import time

import pytest

from experiments import (fmnist_rows, program, program_artefacts, program_costs, program_jobs, program_runs,
                         sampler_study, tables)
from test_tables import write_diagnose_record

# A stand-in for `experiments.run`: writes an eval record with FID = 10 + seed and a training log, or
# fails while <workdir>/fail exists (and removes it, so the retry succeeds when FAIL_ONCE is set).
FAKE_RUN = r"""
import json, os, sys
workdir, seed = sys.argv[1], int(sys.argv[2])
if os.path.exists(os.path.join(workdir, "slow")):  # a long row that saves and exits 143 on SIGTERM, as
  import signal, time                               # experiments.run's training does
  signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
  open(os.path.join(workdir, "started"), "w").close()
  time.sleep(120)
fail = os.path.join(workdir, "fail")
if os.path.exists(fail):
  if open(fail).read() == "once":
    os.remove(fail)
  sys.exit(3)
os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
os.makedirs(os.path.join(workdir, "ldm"), exist_ok=True)
print("I1202 00:00:00.0 1 inception.py:390] Inception: real images: 50/100 images")
print("I1202 00:00:00.0 1 chunks.py:99] Inception: real images: rows 0..100 of 100 -> x.npy")
record = {"stage": "eval", "metrics": {"fid": 10.0 + seed, "recon_fid": 5.0, "sw2_squared": 1e-3},
          "networks": {"vae_sha256": os.environ.get("FAKE_VAE_SHA256", "vae" + str(seed))},
          "sw2": {"real_vs_real": {"values": [1e-4, 2e-4]}},
          "wall_seconds": {"total": 100.0, "reference_statistics": 25.0, "recon_fid_features": 15.0}}
json.dump(record, open(os.path.join(workdir, "eval", "ldm_rk4_10_n8.json"), "w"))
open(os.path.join(workdir, "eval", "ldm_rk4_10_n8_grid.png"), "wb").write(b"png")
open(os.path.join(workdir, "ldm", "metrics.jsonl"), "w").write(json.dumps({"step": 100, "steps_per_sec": 4.0}) + "\n")
with open(os.path.join(os.path.dirname(os.path.dirname(workdir)), "calls.txt"), "a") as f:
  f.write(f"{os.path.basename(os.path.dirname(workdir))}/s{seed}\n")
"""


# A stand-in for `experiments.far_latents` on a finished run: its record where <workdir>/far exists, else
# exit 1, as the real one does for a run none of whose latents lies beyond the real maximum.
FAKE_FAR_LATENTS = r"""
import json, os, sys
workdir, out = sys.argv[1], sys.argv[2]
if not os.path.exists(os.path.join(workdir, "far")):
  sys.exit("no generated latent lies beyond the real maximum norm")
os.makedirs(os.path.dirname(out), exist_ok=True)
step = lambda steps, far: {"steps": steps, "far": {"beyond_real_max": far}}
json.dump({"far_rows": [3, 7], "num_compared": 8, "eval_record": {"sampler": "rk4"},
           "by_steps": [step(10, 2), step(80, 1)]}, open(out + ".json", "w"))
open(out + ".png", "wb").write(b"png")
"""


@pytest.fixture
def fake_rows(monkeypatch, tmp_path):
  script, far_script = tmp_path / "fake_run.py", tmp_path / "fake_far_latents.py"
  script.write_text(FAKE_RUN)
  far_script.write_text(FAKE_FAR_LATENTS)
  monkeypatch.setattr(program_runs.Run, "command",
                      lambda self, overrides=(): [sys.executable, str(script), self.workdir, str(self.seed)])
  real_far_job = program.far_latents_job

  def far_latents_job(run, results):
    out = os.path.join(results, "far_latents", f"{run.row.name}_s{run.seed}")
    return dataclasses.replace(real_far_job(run, results), command=[sys.executable, str(far_script), run.workdir, out])

  monkeypatch.setattr(program, "far_latents_job", far_latents_job)
  return tmp_path


def calls(root) -> list[str]:
  path = os.path.join(root, "calls.txt")
  return open(path).read().split() if os.path.exists(path) else []


def test_program_order_is_seed_by_seed_with_b_after_a():
  names = [run.name for run in program_runs.runs_for((0, 1), "runs")]
  rows = [row.name for row in fmnist_rows.ROWS]
  assert names == [f"{r}/s0" for r in rows] + [f"{r}/s1" for r in rows]
  assert rows.index("b") > rows.index("a")


def test_shared_vae_rows_point_at_the_same_workdir_of_their_seed():
  runs = {run.name: run for run in program_runs.runs_for((0, 1), "runs")}
  assert runs["c/s0"].vae_workdir == runs["cg_prior/s0"].vae_workdir == "runs/two_stage_vae/s0"
  assert runs["c/s1"].vae_workdir == "runs/two_stage_vae/s1"
  assert runs["b/s1"].vae_workdir == runs["a/s1"].workdir
  assert runs["a/s0"].vae_workdir is None
  assert "--config.vae_workdir=runs/a/s0" in runs["b/s0"].command()
  assert not any(arg.startswith("--config.vae_workdir") for arg in runs["d/s0"].command())


def test_program_runs_each_row_once_copies_its_artefacts_and_resumes(fake_rows):
  root, results = str(fake_rows / "runs"), str(fake_rows / "results")
  program.run_program(root, results, (), do_commit=False, seeds=(0,), rows=("c", "lsi"))
  assert calls(root) == ["c/s0", "lsi/s0"]
  for row in ("c", "lsi"):
    assert os.path.exists(os.path.join(root, row, "s0", "done.json"))
    copied = sorted(os.listdir(os.path.join(results, row, "s0")))
    assert copied == ["ldm", "ldm_rk4_10_n8.json", "ldm_rk4_10_n8_grid.png", "run.log"]
    log = open(os.path.join(results, row, "s0", "run.log")).read()
    assert "rows 0..100 of 100" in log and "50/100 images" not in log
  program.run_program(root, results, (), do_commit=False, seeds=(0,), rows=("c", "lsi"))
  assert calls(root) == ["c/s0", "lsi/s0"]  # nothing run again
  assert not os.path.exists(os.path.join(root, program_jobs.LOCK))


def test_each_finished_run_gets_its_far_latents_studied_while_its_checkpoints_are_here(fake_rows, capsys):
  """After a run is done, experiments.far_latents runs on it once; a run with no far latents is logged
  and stays done."""
  root, results = str(fake_rows / "runs"), str(fake_rows / "results")
  os.makedirs(os.path.join(root, "c", "s0"))
  open(os.path.join(root, "c", "s0", "far"), "w").close()
  program.run_program(root, results, (), do_commit=False, seeds=(0,), rows=("c", "lsi"))
  assert sorted(os.listdir(os.path.join(results, "far_latents"))) == ["c_s0.json", "c_s0.png"]
  out = capsys.readouterr().out
  assert "far latents c/s0: 2 of 8 latents beyond the real max at rk4 x 10, 1 still at x 80" in out
  assert "far latents lsi/s0: exit status 1, no record" in out
  assert "no generated latent" in open(os.path.join(root, "lsi", "s0", "far_latents.log")).read()
  assert os.path.exists(os.path.join(root, "lsi", "s0", "done.json"))
  assert os.path.exists(os.path.join(root, "lsi", "s0", program.FAR_LATENTS_FAILED))
  program.run_program(root, results, (), do_commit=False, seeds=(0,), rows=("c", "lsi"))
  assert "far latents" not in capsys.readouterr().out  # each tried once
  # One that a SIGTERM stopped is not marked: the next driver tries it again.
  os.remove(os.path.join(root, "lsi", "s0", program.FAR_LATENTS_FAILED))
  stopped = threading.Event()
  stopped.set()
  lsi = program_runs.runs_for((0,), root, results=results)[1]
  program.run_far_latents(lsi, results, do_commit=False, stop=stopped, readme=None)
  assert program.far_latents_pending(lsi, results)


def test_a_failing_row_is_retried_once_then_left_for_the_next_run(fake_rows):
  root, results = str(fake_rows / "runs"), str(fake_rows / "results")
  os.makedirs(os.path.join(root, "c", "s0"))
  open(os.path.join(root, "c", "s0", "fail"), "w").write("always")
  program.run_program(root, results, (), do_commit=False, seeds=(0,), rows=("c", "lsi"))
  assert calls(root) == ["lsi/s0"]  # c failed twice; the program went on
  log = open(os.path.join(root, "c", "s0", "run.log")).read()
  assert log.count("=== ") == 2
  assert os.path.exists(os.path.join(root, "c", "s0", "failed.json"))
  assert "failed" in program.status(root, results).split("c/s0")[0].splitlines()[-1]
  open(os.path.join(root, "c", "s0", "fail"), "w").write("once")
  program.run_program(root, results, (), do_commit=False, seeds=(0,), rows=("c", "lsi"))
  assert calls(root) == ["lsi/s0", "c/s0"]
  assert not os.path.exists(os.path.join(root, "c", "s0", "failed.json"))


def test_a_hung_row_is_retried_up_to_max_stalls_times(monkeypatch, fake_rows):
  root, results = str(fake_rows / "runs"), str(fake_rows / "results")
  real_run_one, attempts = program_jobs.run_one, {}

  def run_one(job, root):  # hangs `stalls` times, then runs for real
    os.makedirs(os.path.dirname(job.log_path), exist_ok=True)
    attempts[job.name] = attempts.get(job.name, 0) + 1
    stalls = {"c/s0": program_jobs.MAX_STALLS, "lsi/s0": program_jobs.MAX_STALLS + 1}.get(job.name, 0)
    return program_jobs.STALLED if attempts[job.name] <= stalls else real_run_one(job, root)

  monkeypatch.setattr(program_jobs, "run_one", run_one)
  program.run_program(root, results, (), do_commit=False, seeds=(0,), rows=("c", "lsi"))
  assert attempts == {"c/s0": program_jobs.MAX_STALLS + 1, "lsi/s0": program_jobs.MAX_STALLS + 1,
                      "far latents c/s0": 1}  # tried once, after c/s0 was done
  assert calls(root) == ["c/s0"]
  assert os.path.exists(os.path.join(root, "c", "s0", "done.json"))
  assert os.path.exists(os.path.join(root, "lsi", "s0", "failed.json"))


def test_sigterm_stops_the_driver_after_its_row_with_nothing_marked_failed(fake_rows):
  """A SIGTERM to the driver reaches the running row (in a session of its own, so only the driver can
  pass it on); the driver waits for it, runs nothing more, marks nothing failed, and the next run
  resumes with that row."""
  root, results = str(fake_rows / "runs"), str(fake_rows / "results")
  os.makedirs(os.path.join(root, "c", "s0"))
  open(os.path.join(root, "c", "s0", "slow"), "w").close()
  started = os.path.join(root, "c", "s0", "started")

  def send_sigterm_once_the_row_runs():
    while not os.path.exists(started):
      time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGTERM)  # the driver runs in this (pytest's main) thread

  threading.Thread(target=send_sigterm_once_the_row_runs, daemon=True).start()
  handler_before, begin = signal.getsignal(signal.SIGTERM), time.time()
  program.run_program(root, results, (), do_commit=False, seeds=(0,), rows=("c", "lsi"))
  assert time.time() - begin < 60  # not the row's 120 s: the row got the signal
  assert signal.getsignal(signal.SIGTERM) is handler_before
  assert calls(root) == [] and not os.path.exists(os.path.join(root, "lsi"))
  assert not os.path.exists(os.path.join(root, "c", "s0", "failed.json"))
  assert not os.path.exists(os.path.join(root, program_jobs.LOCK))
  os.remove(os.path.join(root, "c", "s0", "slow"))
  program.run_program(root, results, (), do_commit=False, seeds=(0,), rows=("c", "lsi"))
  assert calls(root) == ["c/s0", "lsi/s0"]


def test_third_seeds_for_rows_within_twice_the_spread_of_another():
  # c and lsi: means 11 and 11.25, spread sd(10, 12) = 1.41: within 2.83 of each other. a: far from both.
  fids = {"c": [10.0, 12.0], "lsi": [11.0, 11.5], "a": [5.0, 5.1], "d": [11.0]}
  assert program_runs.third_seed_rows(fids) == ["c", "lsi"]
  assert program_runs.third_seed_rows({"c": [10.0, 10.0], "lsi": [10.0, 10.0]}) == []  # no spread, no tie
  assert program_runs.third_seed_rows({"c": [10.0, 10.2], "lsi": [10.1, 10.3]}) == ["c", "lsi"]


def test_planned_runs_add_third_seeds_once_two_seeds_are_done(fake_rows):
  root, results = str(fake_rows / "runs"), str(fake_rows / "results")
  assert len(program_runs.planned_runs(root)) == 2 * len(fmnist_rows.ROWS)
  program.run_program(root, results, (), do_commit=False, seeds=(0, 1), rows=("c", "lsi"))
  # The stand-in gives every row FID 10 + seed: equal means, spread 0.71: both need a third seed.
  planned = [run.name for run in program_runs.planned_runs(root)]
  assert planned[-2:] == ["c/s2", "lsi/s2"]


def test_status_counts_what_is_left_with_the_measured_costs(fake_rows):
  root, results = str(fake_rows / "runs"), str(fake_rows / "results")
  program.run_program(root, results, (), do_commit=False, seeds=(0,), rows=("c",))
  text = program.status(root, results)
  assert "done     c/s0" in text and "FID 10.00" in text
  costs = program_costs.measured_costs(root)
  # The stand-in's eval: 100 s in all, of which 25 s the reference statistics and 15 s reconstructions
  # (too short to be the row that computed them: not a reconstruction cost).
  assert costs["ldm"] == pytest.approx(0.25) and costs["eval"] == pytest.approx(60.0)
  assert "recon" not in costs


def commit_record(results: str, row: str, seed: int, fid: float, steps_per_sec: float,
                  vae_sha256: str | None = None) -> None:
  """What an earlier machine's driver committed for row/s<seed> (an eval record and the training log),
  its workdir gone."""
  target = os.path.join(results, row, f"s{seed}")
  os.makedirs(os.path.join(target, "ldm"))
  json.dump({"stage": "eval", "metrics": {"fid": fid}, "wall_seconds": {"total": 80.0},
             "networks": {"vae_sha256": vae_sha256}},
            open(os.path.join(target, "ldm_rk4_10_n10000.json"), "w"))
  with open(os.path.join(target, "ldm", "metrics.jsonl"), "w") as log:
    log.write(json.dumps({"step": 100, "steps_per_sec": steps_per_sec}) + "\n")


def test_runs_committed_on_an_earlier_machine_are_done_and_count(fake_rows, capsys):
  """A fresh machine has the committed results but none of the workdirs: the committed runs are not run
  again, count for the third seeds and the costs, and a row sharing their VAE says it trains it again."""
  root, results = str(fake_rows / "runs"), str(fake_rows / "results")
  commit_record(results, "c", 0, 10.0, steps_per_sec=2.0)
  commit_record(results, "c", 1, 11.0, steps_per_sec=2.0)
  runs = {run.name: run for run in program_runs.runs_for((0,), root, results=results)}
  assert runs["c/s0"].done() and not runs["c/s0"].finished_here() and not runs["lsi/s0"].done()
  assert program_runs.vae_trained_again(runs["lsi/s0"], list(runs.values()))
  assert not program_runs.vae_trained_again(runs["a/s0"], list(runs.values()))  # its own VAE
  program.run_program(root, results, (), do_commit=False, seeds=(0,), rows=("c", "lsi"))
  assert calls(root) == ["lsi/s0"]
  assert "lsi/s0: its VAE" in capsys.readouterr().out
  os.makedirs(os.path.join(root, fmnist_rows.TWO_STAGE_VAE, "s0", "vae", "checkpoints"))
  assert not program_runs.vae_trained_again(runs["cg_scalar/s0"], list(runs.values()))
  assert program_runs.fids_by_row(root, (0, 1), results)["c"] == [10.0, 11.0]
  assert "done     c/s0" in program.status(root, results) and "committed; workdir not" in program.status(root, results)
  # ldm rates: c/s0's and c/s1's committed logs (2 steps/s) and lsi/s0's workdir (4 steps/s).
  costs = program_costs.measured_costs(root, results)
  assert costs["ldm"] == pytest.approx(1 / 2.0)


def test_a_shared_vae_trained_again_must_be_the_one_the_committed_rows_were_evaluated_on(
    fake_rows, monkeypatch, capsys):
  """lsi/s0 trains the two-stage VAE of seed 0 again after c/s0 was committed on an earlier machine: with
  the same VAE hash it is committed; with another it is marked failed, says why, and is not copied."""
  root, results = str(fake_rows / "runs"), str(fake_rows / "results")
  commit_record(results, "c", 0, 10.0, steps_per_sec=2.0, vae_sha256="vae0")
  program.run_program(root, results, (), do_commit=False, seeds=(0,), rows=("c", "lsi"))
  assert os.path.exists(os.path.join(root, "lsi", "s0", "done.json"))
  monkeypatch.setenv("FAKE_VAE_SHA256", "another")
  program.run_program(root, results, (), do_commit=False, seeds=(0,), rows=("c", "cg_scalar", "d"))
  assert calls(root) == ["lsi/s0", "cg_scalar/s0", "d/s0"]
  assert "cg_scalar/s0: its VAE (" in capsys.readouterr().out
  assert not os.path.exists(os.path.join(root, "cg_scalar", "s0", "done.json"))
  assert not os.path.exists(os.path.join(results, "cg_scalar", "s0"))
  assert os.path.exists(os.path.join(root, "d", "s0", "done.json"))  # its own VAE: nothing to compare
  line = program.status(root, results).split("cg_scalar/s0")[1].splitlines()[0]
  assert "differs from the one of the committed c/s0 (vae0), lsi/s0 (vae0): not committed" in line
  runs = program_runs.runs_for((0,), root, results=results)
  assert program_runs.vae_differs(runs[2], runs) == ["c/s0 (vae0)", "lsi/s0 (vae0)"]


def test_a_shared_vae_s_logs_are_copied_to_its_committed_home_and_costed_from_the_workdir(tmp_path):
  """lsi/s1 uses the two-stage VAE of seed 1: its own stage's log and settings go to results/lsi/s1, the
  VAE's to results/two_stage_vae/s1; the costs read each stage's log from the workdir first."""
  root, results = str(tmp_path / "runs"), str(tmp_path / "results")
  run = program_runs.Run(fmnist_rows.BY_NAME["lsi"], 1, root, results)
  for directory, stage, rate in ((run.workdir, "ldm", 4.0), (run.vae_workdir, "vae", 8.0)):
    os.makedirs(os.path.join(directory, stage))
    for name, text in (("metrics.jsonl", json.dumps({"step": 10, "steps_per_sec": rate}) + "\n"),
                       ("config.json", "{}")):
      with open(os.path.join(directory, stage, name), "w") as f:
        f.write(text)
  open(os.path.join(run.workdir, "run.log"), "w").close()
  written = program_artefacts.copy_artefacts(run)
  vae_home = os.path.join(results, fmnist_rows.TWO_STAGE_VAE, "s1")
  homes = (("lsi/s1", "ldm"), (os.path.relpath(vae_home, results), "vae"))
  assert sorted(os.path.relpath(path, results) for path in written if "run.log" not in path) == sorted(
      os.path.join(home, stage, name) for home, stage in homes for name in ("metrics.jsonl", "config.json"))
  assert [home.label for home in run.homes()] == ["", f"{fmnist_rows.TWO_STAGE_VAE}/"]
  with open(os.path.join(vae_home, "vae", "metrics.jsonl"), "w") as f:  # a stale committed copy
    f.write(json.dumps({"step": 5, "steps_per_sec": 1.0}) + "\n")
  # Copied again (the VAE trained again on a new machine): the committed VAE log of its first training
  # stays; the row's own files are copied.
  written = program_artefacts.copy_artefacts(run)
  assert not any(path.startswith(vae_home) for path in written)
  assert '"step": 5' in open(os.path.join(vae_home, "vae", "metrics.jsonl")).read()
  assert os.path.join(results, "lsi", "s1", "ldm", "metrics.jsonl") in written
  assert program_costs._training_logs(run) == [("ldm", os.path.join(run.workdir, "ldm", "metrics.jsonl")),
                                              ("vae", os.path.join(run.vae_workdir, "vae", "metrics.jsonl"))]


def test_eval_costs_count_every_attempt_of_a_resumed_evaluation():
  """c/s0's evaluation was resumed: its last attempt loaded the latents (0.02 s of sampling) that a killed
  attempt computed in 300 s; the stores' compute_seconds put those back in the cost."""
  wall = {"sampling": 0.02, "fid_features": 700.0, "reference_statistics": 30.0, "recon_fid_features": 650.0,
          "figures": 10.0}
  wall["total"] = sum(wall.values())
  record = {"wall_seconds": wall, "compute_seconds": {"samples": 300.0, "sample_features": 720.0,
                                                      "reconstruction_features": 900.0},
            "chunks": {"computed": {"samples": 0, "sample_features": 2, "reconstruction_features": 3}}}
  assert program_costs.eval_costs(record) == pytest.approx((300.0 + 720.0 + 10.0, 900.0))
  record["chunks"]["computed"]["reconstruction_features"] = 0  # another row's reconstructions, loaded
  assert program_costs.eval_costs(record)[1] is None
  old = {"wall_seconds": wall}  # before compute_seconds and chunk counts: the wall times
  assert program_costs.eval_costs(old) == pytest.approx((0.02 + 700.0 + 10.0, 650.0))


def test_a_shared_vae_is_counted_once_in_what_is_left(tmp_path):
  """Five two-stage rows of a seed share one VAE: the first needs its steps, the others only their LDMs."""
  root = str(tmp_path / "runs")
  costs = {"vae": 1.0, "ldm": 0.5, "ldm_gate": 0.5, "cotrain": 2.0, "eval": 100.0, "recon": 30.0}
  runs = {run.name: run for run in program_runs.runs_for((0,), root)}
  counted: set[str] = set()
  c = program_costs.remaining_seconds(runs["c/s0"], costs, 10, counted)
  lsi = program_costs.remaining_seconds(runs["lsi/s0"], costs, 10, counted)
  assert (c, lsi) == (10 * 1.0 + 10 * 0.5 + 100.0 + 30.0, 10 * 0.5 + 100.0)
  gated = program_costs.remaining_seconds(runs["cg_prior/s0"], {**costs, "ldm_gate": 0.75}, 10, counted)
  assert gated == 10 * 0.75 + 100.0  # its target needs a gate network: costed as a gated LDM
  a = program_costs.remaining_seconds(runs["a/s0"], costs, 10, counted)
  b = program_costs.remaining_seconds(runs["b/s0"], costs, 10, counted)  # (a)'s co-trained VAE: counted with (a)
  assert (a, b) == (10 * 2.0 + 100.0 + 30.0, 10 * 0.5 + 100.0)


def test_the_whole_program_counts_every_step_where_what_is_left_counts_from_the_checkpoint(tmp_path):
  """(c)/s0 saved step 6 of its VAE's 10: 4 VAE steps are left, but the program's total pays all 10."""
  root = str(tmp_path / "runs")
  costs = {"vae": 1.0, "ldm": 0.5, "ldm_gate": 0.5, "cotrain": 2.0, "eval": 100.0, "recon": 30.0}
  c = {run.name: run for run in program_runs.runs_for((0,), root)}["c/s0"]
  os.makedirs(os.path.join(c.vae_workdir, "vae", "checkpoints", "6"))
  assert program_costs.remaining_seconds(c, costs, 10) == 4 * 1.0 + 10 * 0.5 + 100.0 + 30.0
  assert program_costs.remaining_seconds(c, costs, 10, whole=True) == 10 * 1.0 + 10 * 0.5 + 100.0 + 30.0


def git_repo(repo):
  """A new git repository at `repo`; returns a function running git there (its stdout)."""
  repo.mkdir()
  git = lambda *args: subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True)
  git("init", "-q")
  git("config", "user.email", "t@example.com")
  git("config", "user.name", "t")
  return git


def repo_with_readme(repo):
  """A git repository at `repo` with a committed README.md holding the tables' markers: (git, its path)."""
  git = git_repo(repo)
  readme = repo / "README.md"
  readme.write_text(f"# results\n{tables.README_BEGIN}\n{tables.README_END}\n")
  git("add", "README.md")
  git("commit", "-q", "-m", "README")
  return git, readme


def test_with_readme_each_finished_run_commits_the_readme_s_tables_too(fake_rows, capsys):
  repo = fake_rows / "repo"
  git, readme = repo_with_readme(repo)
  root, results = str(fake_rows / "runs"), str(repo / "results")
  program.run_program(root, results, (), do_commit=True, seeds=(0,), rows=("c",), readme=str(readme))
  assert "README.md" in git("show", "--name-only", "--format=", "HEAD").stdout.split()
  assert "| 10.00 (1) |" in readme.read_text() and git("status", "--porcelain").stdout == ""
  readme.write_text(readme.read_text() + "an edit in progress\n")  # uncommitted: left alone
  program.run_program(root, results, (), do_commit=True, seeds=(0,), rows=("lsi",), readme=str(readme))
  assert "README.md" not in git("show", "--name-only", "--format=", "HEAD").stdout.split()
  assert "| 10.00 (1) |" not in readme.read_text().split("two-stage LSI")[1].split("\n")[0]
  assert "has uncommitted changes: its tables are not updated" in capsys.readouterr().out


def test_a_readme_that_cannot_take_the_tables_does_not_keep_a_finished_run_from_its_commit(fake_rows, capsys):
  """The README lost its markers while the driver ran: the run's records are committed, the README is not."""
  repo = fake_rows / "repo"
  git, readme = repo_with_readme(repo)
  with pytest.raises(SystemExit, match="--readme: .*no such README"):
    program.main(["run", "--readme", str(repo / "READ_ME.md")])
  readme.write_text("# results, no markers\n")
  git("commit", "-q", "-am", "README without markers")
  root, results = str(fake_rows / "runs"), str(repo / "results")
  program.run_program(root, results, (), do_commit=True, seeds=(0,), rows=("c",), readme=str(readme))
  committed = git("show", "--name-only", "--format=", "HEAD").stdout.split()
  assert "README.md" not in committed and any(path.startswith("results/c/s0/") for path in committed)
  assert "README tables not updated:" in capsys.readouterr().out


def test_a_run_whose_commit_failed_is_not_done_and_is_finished_by_the_next_driver(fake_rows, monkeypatch):
  """The driver died in the commit (its artefacts already copied): done.json, written last, is absent, so
  the next driver runs the row's command again (it resumes; nothing is lost) and commits the run."""
  repo = fake_rows / "repo"
  git, readme = repo_with_readme(repo)
  root, results = str(fake_rows / "runs"), str(repo / "results")
  real_commit = program_artefacts.commit

  def failing_commit(paths, message, attempts=5):
    raise subprocess.CalledProcessError(128, "git commit")

  monkeypatch.setattr(program_artefacts, "commit", failing_commit)
  with pytest.raises(subprocess.CalledProcessError):
    program.run_program(root, results, (), do_commit=True, seeds=(0,), rows=("c",), readme=str(readme))
  run = program_runs.Run(fmnist_rows.BY_NAME["c"], 0, root, results)
  assert run.committed_record() is not None and not run.finished_here() and not run.done()
  monkeypatch.setattr(program_artefacts, "commit", real_commit)
  program.run_program(root, results, (), do_commit=True, seeds=(0,), rows=("c",), readme=str(readme))
  assert calls(root) == ["c/s0", "c/s0"] and run.done()
  committed = git("show", "--name-only", "--format=", "HEAD").stdout.split()
  assert any(path.startswith("results/c/s0/") for path in committed)
  # A run finished on an earlier machine (its workdir gone, its record committed) is done.
  shutil.rmtree(os.path.join(root, "c", "s0"))
  assert run.done()


def test_each_finished_run_draws_the_figures_across_rows_again(fake_rows, capsys):
  repo = fake_rows / "repo"
  git = git_repo(repo)
  root, results = str(fake_rows / "runs"), str(repo / "results")
  program.run_program(root, results, (), do_commit=True, seeds=(0,), rows=("c",))  # no diagnose record yet
  out = capsys.readouterr().out
  assert "figures across rows: gates_by_row not drawn: no diagnose record" in out
  assert "samples_by_row not drawn: " in out and "not a readable PNG" in out  # the stand-in's grid is b"png"
  write_diagnose_record(repo / "results", "lsi", 0, None)  # committed by an earlier run
  program.run_program(root, results, (), do_commit=True, seeds=(0,), rows=("lsi",))
  assert "results/figures/gates_by_row.png" in git("show", "--name-only", "--format=", "HEAD").stdout.split()


def test_commit_takes_only_the_given_paths(tmp_path):
  repo = tmp_path / "repo"
  git = git_repo(repo)
  (repo / "other.txt").write_text("staged, not committed\n")
  git("add", "other.txt")
  (repo / "record.json").write_text("{}\n")
  program_artefacts.commit([str(repo / "record.json")], "Results c/s0")
  assert git("log", "--format=%s").stdout.strip() == "Results c/s0"
  assert git("show", "--name-only", "--format=", "HEAD").stdout.split() == ["record.json"]
  assert "A  other.txt" in git("status", "--porcelain").stdout


def test_a_run_whose_log_stops_growing_is_killed_as_stalled_unless_paused(monkeypatch, tmp_path):
  hang = [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(600)"]
  monkeypatch.setattr(program_runs.Run, "command", lambda self, overrides=(): hang)
  root = str(tmp_path / "runs")
  os.makedirs(root)
  run = program_runs.runs_for((0,), root)[0]
  status = program_jobs.run_one(program.row_job(run, ()), root, stall_seconds=2.0, poll_seconds=0.5)
  assert status == program_jobs.STALLED
  assert "started" in open(os.path.join(run.workdir, "run.log")).read()
  # Paused (program pause): the silence is expected; the run finishes on its own, here within the window.
  quick = [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(3)"]
  monkeypatch.setattr(program_runs.Run, "command", lambda self, overrides=(): quick)
  open(os.path.join(root, program_jobs.PAUSED), "w").close()
  assert program_jobs.run_one(program.row_job(run, ()), root, stall_seconds=1.0, poll_seconds=0.5) == 0


def test_output_in_any_watched_log_is_progress(tmp_path):
  """The sampler study's evals and a row trained again for it write their own logs, not the study
  driver's: growth there keeps the watchdog off."""
  root, other = str(tmp_path / "runs"), str(tmp_path / "child.log")
  os.makedirs(root)
  writes_elsewhere = [sys.executable, "-c", "import time\nfor _ in range(8):\n  open(%r, 'a').write('x')\n"
                      "  time.sleep(0.5)" % other]
  job = program_jobs.Job("study", writes_elsewhere, str(tmp_path / "driver.log"), watch=(other,))
  assert program_jobs.run_one(job, root, stall_seconds=2.0, poll_seconds=0.5) == 0
  silent = program_jobs.Job("study", writes_elsewhere, str(tmp_path / "driver2.log"))
  assert program_jobs.run_one(silent, root, stall_seconds=2.0, poll_seconds=0.5) == program_jobs.STALLED


# A stand-in for `experiments.sampler_study run`: a study.json of every sampler in the run's results
# directory, and a line in calls.txt.
FAKE_STUDY = r"""
import json, os, sys
out_dir, root, name = sys.argv[1:4]
os.makedirs(out_dir, exist_ok=True)
samplers = [{"sampler": method, "steps": steps, "nfe": 4 * steps, "fid": 20.0, "sw2_squared": 1e-3,
             "sw2_squared_floor_mean": 1e-4, "sampling_seconds": 1.0} for method, steps in json.loads(sys.argv[4])]
json.dump({"num_samples": 8, "samplers": samplers}, open(os.path.join(out_dir, "study.json"), "w"))
open(os.path.join(root, "calls.txt"), "a").write(f"study:{name}\n")
"""


def test_the_whole_program_ends_with_the_sampler_study_on_its_best_row_once(fake_rows, monkeypatch):
  repo = fake_rows / "repo"
  git, readme = repo_with_readme(repo)
  root, results = str(fake_rows / "runs"), str(repo / "results")
  two_rows = [fmnist_rows.BY_NAME["c"], fmnist_rows.BY_NAME["lsi"]]
  # The plan: two rows at two seeds (FIDs 10 and 11 in both, the stand-in's; their third seeds left out).
  monkeypatch.setattr(program_runs, "planned_runs",
                      lambda root, results=None: program_runs.runs_for((0, 1), root, two_rows, results))
  script = fake_rows / "fake_study.py"
  script.write_text(FAKE_STUDY)

  def fake_study_job(run, root, results):
    out_dir = sampler_study.study_dir(run, results)
    command = [sys.executable, str(script), out_dir, root, run.name, json.dumps(sampler_study.SAMPLERS)]
    return program_jobs.Job(f"sampler study {run.name}", command, os.path.join(root, "sampler_study", "driver.log"))

  monkeypatch.setattr(program, "study_job", fake_study_job)
  assert "left     sampler study" in program.status(root, results)
  program.run_program(root, results, ("--config.x=1",), do_commit=True)  # overrides: not the program
  assert calls(root) == ["c/s0", "lsi/s0", "c/s1", "lsi/s1"]
  program.run_program(root, results, (), do_commit=True, readme=str(readme))
  assert calls(root)[4:] == ["study:c/s0"]  # the best row (a tie: the first), at its first seed here
  assert git("log", "-1", "--format=%s").stdout.startswith("Sampler study c/s0")
  assert git("show", "--name-only", "--format=", "HEAD").stdout.split() == [
      "README.md", "results/sampler_study/c_s0/study.json"]
  assert "The sampler study on c/s0" in readme.read_text()
  assert "done     sampler study    c_s0" in program.status(root, results)
  # Done, it counts nothing left and its cost in the whole program's.
  costs = {"eval_per_sample": 0.1, "sampling_per_nfe_sample": 1e-3}
  _, left, whole = program.study_status(root, results, costs, running=None)
  assert left == 0.0 and whole == program_costs.study_seconds(costs) > 0
  program.run_program(root, results, (), do_commit=True)
  assert calls(root)[4:] == ["study:c/s0"]  # finished: not run again


def test_the_sampler_study_is_costed_per_sample_and_network_evaluation(tmp_path, monkeypatch):
  """A study of the protocol's own sampler (RK4 x 10, 40 NFE) at the eval's N costs what the eval did;
  twice the NFE adds the sampling's cost once more."""
  root, results = str(tmp_path / "runs"), str(tmp_path / "results")
  target = os.path.join(results, "c", "s0")
  os.makedirs(target)
  record = {"stage": "eval", "metrics": {"fid": 10.0}, "nfe": 40, "num_samples": 10,
            "wall_seconds": {"sampling": 4.0, "total": 10.0}, "compute_seconds": {"samples": 4.0}}
  json.dump(record, open(os.path.join(target, "ldm_rk4_10_n10.json"), "w"))
  costs = program_costs.measured_costs(root, results)
  assert program_costs.study_seconds({}) is None
  monkeypatch.setattr(sampler_study, "NUM_SAMPLES", 10)
  monkeypatch.setattr(sampler_study, "SAMPLERS", (("rk4", 10),))
  assert program_costs.study_seconds(costs) == pytest.approx(costs["eval"]) == pytest.approx(10.0)
  monkeypatch.setattr(sampler_study, "SAMPLERS", (("rk4", 20),))
  assert program_costs.study_seconds(costs) == pytest.approx(10.0 + 4.0)
