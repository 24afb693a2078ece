"""experiments.replicate: a committed run trained again, compared interval by interval and record by record."""

from __future__ import annotations

import json
import os
import sys

import pytest

from conftest import ldm_log, write_jsonl
from experiments import fmnist_rows, program_jobs, program_runs, replicate


def test_equal_logs_are_bit_for_bit_and_the_machine_s_timing_does_not_count():
  replica = [dict(record, steps_per_sec=record["steps_per_sec"] + 1.0) for record in ldm_log(5)]
  logs = replicate.compare_logs(ldm_log(5), replica)
  assert logs["identical"] and logs["first_difference"] is None
  assert logs["intervals_compared"] == 5 and logs["last_step_compared"] == 500
  assert logs["largest_relative_difference"]["loss"] == 0.0


def test_the_first_difference_and_the_largest_and_last_relative_differences():
  replica = ldm_log(5)
  replica[1] = dict(replica[1], loss=replica[1]["loss"] * (1 + 1e-3))  # step 200
  replica[4] = dict(replica[4], loss=replica[4]["loss"] * (1 + 1e-6), score_loss=0.0)  # step 500
  logs = replicate.compare_logs(ldm_log(5), replica)
  assert not logs["identical"] and logs["first_difference"] == {"step": 200, "keys": ["loss"]}
  assert logs["largest_relative_difference"]["loss"] == pytest.approx(1e-3)
  assert logs["last_relative_difference"]["loss"] == pytest.approx(1e-6)
  assert logs["largest_relative_difference"]["score_loss"] == 1.0  # 1.2 -> 0: |0 - 1.2| / 1.2


def test_intervals_cut_by_a_sigterm_are_left_out_and_a_replica_in_progress_compares_what_it_logged():
  # The committed run was stopped at step 250 (its interval 200-250 averages 50 steps) and resumed: its
  # intervals (200, 250] and (250, 300] are not the replica's (200, 300], which is not compared either.
  committed = ldm_log(5)
  committed.insert(2, {**committed[2], "step": 250, "loss": 9.0})
  committed[3] = {**committed[3], "loss": 8.0}  # step 300, the short interval after the resume
  logs = replicate.compare_logs(committed, ldm_log(4))
  assert logs["intervals_logged"] == {"committed": 6, "replica": 4}
  assert logs["intervals_compared"] == 3 and logs["identical"]  # steps 100, 200, 400
  assert logs["last_step_compared"] == 400
  nothing = replicate.compare_logs(committed, [])
  assert nothing["intervals_compared"] == 0 and nothing["identical"] is None


def write_committed_and_replica(results, root, *, vae_hash: str, fid: float, evaluated: bool = True):
  """Row (c) at seed 0: the committed record and logs under `results`, a replica under `root`."""
  record = {"stage": "eval", "git_commit": "abc", "machine": {"platform": "committed-machine"},
            "networks": {"vae_sha256": "v", "score_sha256": "s", "gate_sha256": None},
            "metrics": {"fid": 36.5, "recon_fid": 28.3, "sw2_squared_real_vs_real_std": None}}
  os.makedirs(results / "c" / "s0")
  json.dump(record, open(results / "c" / "s0" / "ldm_rk4_10_n10000.json", "w"))
  write_jsonl(results / "c" / "s0" / "ldm" / "metrics.jsonl", ldm_log(3))
  write_jsonl(results / "two_stage_vae" / "s0" / "vae" / "metrics.jsonl", ldm_log(3))
  write_jsonl(root / "c" / "s0" / "ldm" / "metrics.jsonl", ldm_log(3))
  write_jsonl(root / "two_stage_vae" / "s0" / "vae" / "metrics.jsonl", ldm_log(2))
  if evaluated:
    mine = {**record, "machine": {"platform": "this-machine"}, "git_commit": "def",
            "networks": {**record["networks"], "vae_sha256": vae_hash}, "metrics": {"fid": fid, "recon_fid": 28.3}}
    os.makedirs(root / "c" / "s0" / "eval")
    json.dump(mine, open(root / "c" / "s0" / "eval" / "ldm_rk4_10_n10000.json", "w"))


def test_compare_a_replica_with_its_committed_run_and_its_shared_vae(tmp_path):
  results, root = tmp_path / "results", tmp_path / "replica"
  write_committed_and_replica(results, root, vae_hash="other", fid=36.7)
  run = program_runs.Run(fmnist_rows.BY_NAME["c"], 0, str(root), str(results))
  comparison = replicate.compare(run)
  assert set(comparison["training"]) == {"ldm", "two_stage_vae/vae"}
  assert comparison["training"]["two_stage_vae/vae"]["intervals_compared"] == 2
  assert comparison["training"]["ldm"]["identical"]
  evaluation = comparison["eval"]
  assert evaluation["networks"]["vae_sha256"] == {"committed": "v", "replica": "other", "equal": False}
  assert evaluation["networks"]["score_sha256"]["equal"] and "gate_sha256" not in evaluation["networks"]
  assert not evaluation["identical_networks"]
  assert evaluation["metrics"]["fid"]["difference"] == pytest.approx(0.2)
  assert "sw2_squared_real_vs_real_std" not in evaluation["metrics"]  # None in the record: not a number
  assert comparison["committed_machine"] == "committed-machine"
  assert evaluation["machine"]["replica"]["platform"] == "this-machine"
  assert "--config.vae_workdir=" + os.path.join(str(root), "two_stage_vae", "s0") in comparison["command"]
  text = replicate.summary(comparison)
  assert "| two_stage_vae/vae | 2 of 3 (to step 200) | yes |" in text and "vae no, score yes" in text


def test_compare_before_the_replica_is_evaluated_and_without_a_committed_run(tmp_path):
  results, root = tmp_path / "results", tmp_path / "replica"
  write_committed_and_replica(results, root, vae_hash="v", fid=36.5, evaluated=False)
  comparison = replicate.compare(program_runs.Run(fmnist_rows.BY_NAME["c"], 0, str(root), str(results)))
  assert comparison["eval"] is None and "Not evaluated yet." in replicate.summary(comparison)
  with pytest.raises(FileNotFoundError, match="no committed eval record"):
    replicate.compare(program_runs.Run(fmnist_rows.BY_NAME["c"], 1, str(root), str(results)))
  with pytest.raises(SystemExit, match="nothing to replicate"):
    replicate.main(["compare", "c", "--seed", "1", f"--root={root}", f"--results={results}"])


def test_the_cli_writes_the_comparison_beside_the_results(tmp_path, capsys):
  results, root = tmp_path / "results", tmp_path / "replica"
  write_committed_and_replica(results, root, vae_hash="v", fid=36.5)
  replicate.main(["compare", "c", "--seed", "0", f"--root={root}", f"--results={results}"])
  with open(results / "replicas" / "c_s0.json") as f:
    written = json.load(f)
  assert written["eval"]["identical_networks"] and written["eval"]["metrics"]["fid"]["difference"] == 0.0
  assert "vae yes, score yes" in capsys.readouterr().out


# A stand-in for the row's `experiments.run`: its eval record with FID 36.5 + <workdir>/fid_offset, or
# exit status 3 while <workdir>/fail exists.
FAKE_ROW = r"""
import json, os, sys
workdir = sys.argv[1]
if os.path.exists(os.path.join(workdir, "fail")):
  sys.exit(3)
offset = os.path.join(workdir, "fid_offset")
fid = 36.5 + (float(open(offset).read()) if os.path.exists(offset) else 0.0)
record = {"stage": "eval", "git_commit": "def", "machine": {"platform": "this-machine"},
          "networks": {"vae_sha256": "v", "score_sha256": "s", "gate_sha256": None},
          "metrics": {"fid": fid, "recon_fid": 28.3}}
os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
json.dump(record, open(os.path.join(workdir, "eval", "ldm_rk4_10_n10000.json"), "w"))
print("evaluated")
"""


def test_run_trains_the_replica_as_a_program_job_then_compares_and_a_failure_names_its_log(tmp_path, monkeypatch,
                                                                                           capsys):
  results, root = tmp_path / "results", tmp_path / "replica"
  write_committed_and_replica(results, root, vae_hash="v", fid=36.5, evaluated=False)
  script = tmp_path / "fake_row.py"
  script.write_text(FAKE_ROW)
  monkeypatch.setattr(program_runs.Run, "command",
                      lambda self, overrides=(): [sys.executable, str(script), self.workdir])
  (root / "c" / "s0" / "fid_offset").write_text("0.25")
  replicate.main(["run", "c", "--seed", "0", f"--root={root}", f"--results={results}"])
  with open(results / "replicas" / "c_s0.json") as f:
    written = json.load(f)
  assert written["eval"]["metrics"]["fid"]["difference"] == pytest.approx(0.25)
  assert "evaluated" in (root / "c" / "s0" / "run.log").read_text()  # the job's output goes to its log
  assert not (root / program_jobs.LOCK).exists()  # released, as the program's driver releases it
  assert "| fid | 36.5 | 36.75 | 0.25 |" in capsys.readouterr().out

  (root / "c" / "s0" / "fail").write_text("")
  with pytest.raises(SystemExit, match=r"c/s0: the replica failed \(exit status 3\) \(its log: .*run.log\)"):
    replicate.main(["run", "c", "--seed", "0", f"--root={root}", f"--results={results}"])
  # Tried twice, as a program row is (a crash once more), then left for the same command to resume.
  assert (root / "c" / "s0" / "run.log").read_text().count("=== ") == 3
  assert not (root / program_jobs.LOCK).exists()
