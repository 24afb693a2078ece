"""experiments.row_report: the facts of one committed row and seed, from its records and training logs."""

from __future__ import annotations

import json
import os

import pytest

from conftest import ldm_log, write_jsonl
from experiments import row_report


def test_report_reads_the_row_and_the_vae_it_shares(tmp_path, capsys):
  results = tmp_path / "results"
  with pytest.raises(SystemExit, match="no eval record"):
    row_report.report("b", 0, str(results))
  os.makedirs(results / "b" / "s0")
  json.dump({"stage": "eval", "training_step": 20, "wall_seconds": {"total": 5.0},
             "metrics": {"fid": 12.5, "recon_fid": 9.0, "sw2_squared": 1e-3, "sw2_tail_share": 0.9},
             "sw2": {"norms": {"generated_beyond_real_max": 7}}},
            open(results / "b" / "s0" / "ldm_rk4_10_n10000.json", "w"))
  write_jsonl(results / "b" / "s0" / "ldm" / "metrics.jsonl", ldm_log(12))
  write_jsonl(results / "a" / "s0" / "cotrain" / "metrics.jsonl",
              [{"step": 100, "loss": 0.5, "kl": 4.0, "steps_per_sec": 2.0}])
  facts = row_report.report("b", 0, str(results))
  assert facts["eval"]["fid"] == 12.5 and facts["diagnose"] is None
  assert facts["eval"]["sw2_tail_share"] == 0.9 and facts["eval"]["beyond_real_max"] == 7
  assert "sw2_squared_trimmed" not in facts["eval"]  # not in this record
  assert sorted(facts["training"]) == ["a/cotrain", "ldm"]
  assert facts["training"]["a/cotrain"]["kl"] == {"first": 4.0, "step_1000": 4.0, "final": 4.0}
  row_report.main(["b", "--results", str(results)])
  out = capsys.readouterr().out
  assert out.startswith('b/s0: eval {"fid": 12.5') and "training a/cotrain:" in out


def test_the_prior_csem_row_has_no_distance_to_lsi_from_its_loss(tmp_path):
  results = tmp_path / "results"
  os.makedirs(results / "cg_prior" / "s0")
  json.dump({"stage": "eval", "wall_seconds": {"total": 5.0}, "metrics": {"fid": 170.0}, "sw2": {}},
            open(results / "cg_prior" / "s0" / "ldm_rk4_10_n10000.json", "w"))
  write_jsonl(results / "cg_prior" / "s0" / "ldm" / "metrics.jsonl", ldm_log(12))
  assert "net_to_lsi_final" not in row_report.report("cg_prior", 0, str(results))["training"]["ldm"]
