"""experiments.training_logs and the results' training table: the end of training of a committed run, from
its own and its shared VAE's stage logs."""

from __future__ import annotations

import json
import os

import pytest

from conftest import ldm_log, write_jsonl
from experiments import fmnist_tables, training_logs


def test_training_summary_first_step_1000_and_mean_of_the_last_intervals():
  summary = training_logs.training_summary(ldm_log(20))
  last = range(20 - training_logs.LAST_INTERVALS + 1, 21)
  assert summary["loss"]["first"] == 2.0 and summary["loss"]["step_1000"] == pytest.approx(1.1)
  assert summary["loss"]["final"] == pytest.approx(1 + sum(1 / k for k in last) / len(last))
  assert summary["net_to_lsi_final"] == pytest.approx(1.0)
  assert summary["nonfinite"] == 1.0 and summary["median_steps_per_sec"] == 10.5 and summary["steps"] == 2000
  assert "kl" not in summary and summary["step_1000_logged_at"] == 1000
  # 001's prior CSEM: its target's conditional mean is not eps_LSI, so loss - excess measures nothing.
  assert "net_to_lsi_final" not in training_logs.training_summary(ldm_log(20), lsi_mean_target=False)
  with pytest.raises(ValueError, match="no logged intervals"):
    training_logs.training_summary([])


def vae_log(num_intervals: int, logvar: float) -> list[dict]:
  return [{"step": 100 * k, "loss": 0.1, "reconstruction": 0.02, "kl": 3.0, "posterior_logvar_mean": logvar,
           "steps_per_sec": 5.0} for k in range(1, num_intervals + 1)]


def write_run(results, row: str, seed: int, stage: str = "ldm") -> None:
  """A committed eval record and score-stage log of `row` at `seed`."""
  directory = results / row / f"s{seed}"
  os.makedirs(directory, exist_ok=True)
  json.dump({"stage": "eval", "metrics": {"fid": 10.0}}, open(directory / f"{stage}_rk4_10_n10000.json", "w"))
  write_jsonl(directory / stage / "metrics.jsonl", ldm_log(12))


def test_end_of_training_takes_the_vae_from_its_stage_and_the_score_from_the_run_s_own():
  # (b): its own LDM, (a)'s co-trained VAE, whose log also has a score loss that is (a)'s, not (b)'s.
  cotrain = [dict(m, score_loss=7.0, target_excess_over_lsi=0.0) for m in vae_log(12, -1.0)]
  # The shared log first: the score network's columns must still come from the run's own stage.
  training = {"a/cotrain": training_logs.training_summary(cotrain),
              "ldm": training_logs.training_summary(ldm_log(12))}
  end = training_logs.end_of_training(training)
  last = range(2, 13)  # the last 11 of 12 intervals
  assert end["posterior_logvar_mean"] == -1.0 and end["kl"] == 3.0 and end["reconstruction"] == 0.02
  assert end["score_loss"] == pytest.approx(1 + sum(1 / k for k in last) / 11)
  assert end["net_to_lsi"] == pytest.approx(1.0)
  with pytest.raises(ValueError, match="no autoencoder log among \\['ldm'\\]"):
    training_logs.end_of_training({"ldm": training["ldm"]})
  with pytest.raises(ValueError, match="no score network log"):
    training_logs.end_of_training({"two_stage_vae/vae": training_logs.training_summary(vae_log(12, -5.0))})


def test_training_table_means_over_seeds_and_no_lsi_distance_for_the_prior_csem(tmp_path):
  for seed, logvar in ((0, -5.0), (1, -6.0)):
    write_jsonl(tmp_path / "two_stage_vae" / f"s{seed}" / "vae" / "metrics.jsonl", vae_log(12, logvar))
    write_run(tmp_path, "c", seed)
  write_run(tmp_path, "cg_prior", 0)
  write_jsonl(tmp_path / "lsi" / "s0" / "ldm" / "metrics.jsonl", ldm_log(12))  # a log without an eval record
  lines = fmnist_tables.training_table(str(tmp_path)).splitlines()
  (c,) = [line for line in lines if line.startswith("| (c)")]
  # Log-variances -5 and -6: mean -5.5, sample sd 0.71; loss - excess = 1 at both seeds.
  assert "| 0.0200 ± 0.0000 (2) | 3.00 ± 0.00 (2) | -5.50 ± 0.71 (2) |" in c
  assert c.endswith("| 1.0000 ± 0.0000 (2) |")
  (prior,) = [line for line in lines if line.startswith("| two-stage critic-gate, prior CSEM")]
  assert prior.endswith(" (1) | - |") and "-5.00 (1)" in prior
  assert not any(line.startswith("| two-stage LSI") for line in lines)
  assert lines[-1].endswith("network's own mean squared distance to the LSI target.")
  # An evaluated run whose logs are not all committed is named, not averaged in, nor does it stop the tables.
  write_run(tmp_path, "lsi", 2)  # no two-stage VAE of seed 2
  assert fmnist_tables.training_table(str(tmp_path)).endswith(
      "Evaluated runs left out, their logs incomplete: lsi/s2 (no autoencoder log among ['ldm']).")
  assert fmnist_tables.training_table(str(tmp_path / "none")) == ""
