"""experiments.sampler_study: which row it studies, its workdir, resuming, and its summary. The row's
eval stage is replaced by a stand-in command that writes what `experiments.run --stages=eval` would."""

from __future__ import annotations

import json
import os
import sys

import pytest

from experiments import fmnist_tables, program_runs, sampler_study

# A stand-in for `experiments.run --stages=eval` with the study's overrides: one eval record and grid
# named as the eval stage names them, FID = steps (so the summary's order can be checked), and a line in
# calls.txt beside the study workdir.
FAKE_EVAL = r"""
import json, os, sys
args = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
workdir = args["--workdir"]
if args.get("--stages", "eval") != "eval":  # training again: a trained stage and a line in calls.txt
  os.makedirs(os.path.join(workdir, "ldm"), exist_ok=True)
  open(os.path.join(os.path.dirname(os.path.dirname(workdir)), "calls.txt"), "a").write(f"train_{args['--stages']}\n")
  sys.exit(0)
method = args["--config.sample.method"]
steps, n = int(args["--config.sample.num_steps"]), int(args["--config.eval.num_samples"])
assert os.path.islink(os.path.join(workdir, "ldm")), "the trained stage is linked in"
os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
name = os.path.join(workdir, "eval", f"ldm_{method}_{steps}_n{n}")
record = {"stage": "eval", "sampler": method, "steps": steps, "nfe": 4 * steps, "wall_seconds": {"sampling": 1.0},
          "metrics": {"fid": float(steps), "sw2_squared": 1e-3, "sw2_squared_real_vs_real_mean": 3e-4,
                      "sw2_squared_trimmed": 5e-4, "sw2_squared_trimmed_real_vs_real_mean": 2e-4},
          "sw2": {"tail": 0.01, "norms": {"generated_beyond_real_max": 100 // steps}}}
json.dump(record, open(name + ".json", "w"))
open(name + "_grid.png", "wb").write(b"png")
open(os.path.join(os.path.dirname(workdir), "calls.txt"), "a").write(f"{method}_{steps}\n")
"""


def finish(root, row: str, seed: int, fid: float) -> None:
  """A finished program run of `row` at `seed` with FID `fid` and a trained ldm stage."""
  workdir = root / row / f"s{seed}"
  os.makedirs(workdir / "eval")
  os.makedirs(workdir / "ldm")
  json.dump({"stage": "eval", "metrics": {"fid": fid}}, open(workdir / "eval" / "ldm_rk4_10_n10000.json", "w"))
  json.dump({}, open(workdir / "done.json", "w"))


def test_best_row_has_the_lowest_mean_fid_over_all_seeds_of_the_rows_with_both_first_seeds(tmp_path):
  with pytest.raises(SystemExit, match="no row has finished both seeds"):
    sampler_study.best_row(str(tmp_path))
  for row, fids in (("c", (12.0, 14.0)), ("lsi", (12.5, 12.7)), ("cg_element", (9.0,))):
    for seed, fid in enumerate(fids):
      finish(tmp_path, row, seed, fid)
  # cg_element has the lowest FID but one seed only; lsi's mean 12.6 beats c's 13.0.
  assert sampler_study.best_row(str(tmp_path)) == "lsi"
  finish(tmp_path, "c", 2, 10.0)  # a third seed counts, as in the README's lowest-mean line: c's mean 12.0
  assert sampler_study.best_row(str(tmp_path)) == "c"


def test_the_default_seed_is_one_whose_checkpoints_are_on_this_machine(tmp_path):
  results = tmp_path / "results"
  os.makedirs(results / "lsi" / "s0")  # seed 0 finished on an earlier machine: committed only
  json.dump({"stage": "eval", "metrics": {"fid": 12.0}}, open(results / "lsi" / "s0" / "ldm_rk4_10_n10000.json", "w"))
  assert sampler_study.default_seed("lsi", str(tmp_path), str(results)) == 0  # nothing here: trained again
  finish(tmp_path, "lsi", 1, 12.5)
  assert sampler_study.default_seed("lsi", str(tmp_path), str(results)) == 1


def test_the_study_runs_every_sampler_once_from_the_row_s_trained_stages_and_resumes(tmp_path, monkeypatch):
  script = tmp_path / "fake_eval.py"
  script.write_text(FAKE_EVAL)
  monkeypatch.setattr(program_runs.Run, "command", lambda self, overrides=(): [
      sys.executable, str(script), f"--workdir={self.workdir}", f"--config.seed={self.seed}", *overrides])
  root, results = tmp_path / "runs", tmp_path / "results"
  with pytest.raises(SystemExit, match="has not finished"):
    sampler_study.run_study("c", 0, str(root), str(results))
  finish(root, "c", 0, 13.0)
  out_dir = sampler_study.run_study("c", 0, str(root), str(results))
  calls = open(root / "sampler_study" / "calls.txt").read().split()
  assert calls == [f"{method}_{steps}" for method, steps in sampler_study.SAMPLERS]
  # The row's own workdir keeps its one eval record; the study's records are copied to the results.
  assert os.listdir(root / "c" / "s0" / "eval") == ["ldm_rk4_10_n10000.json"]
  study = json.load(open(os.path.join(out_dir, "study.json")))
  assert [(r["sampler"], r["steps"]) for r in study["samplers"]] == list(sampler_study.SAMPLERS)
  assert os.path.exists(os.path.join(out_dir, "study.png"))
  table = fmnist_tables.sampler_study_table(out_dir)
  assert "| rk4 | 5 | 20 | 5.00 | 1.00e-03 | 5.00e-04 | 20 | 1 |" in table
  assert "trimmed: 2.00e-04 (the trimmed SW2^2 leaves out the outer 0.01 of" in table
  assert "The sampler study on c/s0" in fmnist_tables.readme_tables(str(results))  # the README's tables
  sampler_study.run_study("c", 0, str(root), str(results))  # everything evaluated: nothing runs again
  assert len(open(root / "sampler_study" / "calls.txt").read().split()) == len(sampler_study.SAMPLERS)


def test_a_row_finished_on_an_earlier_machine_is_trained_again_before_the_study(tmp_path, monkeypatch):
  """Its committed eval record is here, its checkpoints are not: its own command trains its training
  stages (same seed) into its workdir, then the study runs as usual."""
  script = tmp_path / "fake_eval.py"
  script.write_text(FAKE_EVAL)
  monkeypatch.setattr(program_runs.Run, "command", lambda self, overrides=(): [
      sys.executable, str(script), f"--workdir={self.workdir}", f"--config.seed={self.seed}", *overrides])
  root, results = tmp_path / "runs", tmp_path / "results"
  os.makedirs(results / "lsi" / "s1")
  json.dump({"stage": "eval", "metrics": {"fid": 12.0}}, open(results / "lsi" / "s1" / "ldm_rk4_10_n10000.json", "w"))
  sampler_study.run_study("lsi", 1, str(root), str(results))
  calls = open(root / "calls.txt").read().split()
  assert calls == ["train_vae,ldm"]
  study_calls = open(root / "sampler_study" / "calls.txt").read().split()
  assert len(study_calls) == len(sampler_study.SAMPLERS)


def test_the_table_reads_the_committed_study_whatever_seed_it_ran_at(tmp_path, capsys):
  """`table` needs no checkpoints: without --seed it prints every committed study of the row (here seed
  2's, where `run` on this machine would pick seed 0; a row name holding "_s" as its run's name says), and
  it names a study that is not there."""
  results = tmp_path / "results"
  out_dir = results / "sampler_study" / "cg_scalar_s2"
  os.makedirs(out_dir)
  json.dump({"num_samples": 5000, "samplers": [
      {"sampler": "rk4", "steps": 10, "nfe": 40, "fid": 36.0, "sw2_squared": 1e-3, "sw2_squared_floor_mean": 3e-4,
       "sw2_squared_trimmed": 5e-4, "sw2_squared_trimmed_floor_mean": 2e-4, "sw2_tail": 0.01,
       "beyond_real_max": 3, "sampling_seconds": 60.0}]}, open(out_dir / "study.json", "w"))
  args = ["table", "--row", "cg_scalar", "--root", str(tmp_path / "runs"), "--results", str(results)]
  sampler_study.main(args)
  printed = capsys.readouterr().out
  assert printed.startswith("The sampler study on cg_scalar/s2 ") and "| rk4 | 10 | 40 | 36.00 |" in printed
  with pytest.raises(SystemExit, match="no sampler study of cg_scalar at seed 0"):
    sampler_study.main([*args, "--seed", "0"])
  with pytest.raises(SystemExit, match="no sampler study of c under"):
    sampler_study.main(["table", "--row", "c", "--results", str(results)])
