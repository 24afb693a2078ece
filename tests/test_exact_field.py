"""The demo stage end to end on a tiny configuration, and the modules it composes (toy field,
variance diagnostics, records)."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cgdiff import diagnostics, records, schedules
from cgdiff.data import toy2d
from configs import demo
from experiments import run as run_lib
from experiments import tables


def test_fractal_tree_has_004_structure_and_normalisation():
  depth, per_branch = 3, 4
  means, logvars, log_weights = toy2d.fractal_tree_field(depth=depth, components_per_branch=per_branch)
  k = (2 ** (depth + 1) - 1) * per_branch
  assert means.shape == (k, 2) and logvars.shape == (k, 2) and log_weights.shape == (k,)
  w = np.exp(log_weights)
  np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-12)
  # Mixture moments are exact sums over components: mean 0 and per-axis std 0.5 by construction.
  np.testing.assert_allclose(w @ means, 0.0, atol=1e-12)
  np.testing.assert_allclose(np.sqrt(w @ (np.exp(logvars) + means**2)), 0.5, rtol=1e-12)
  # Each split halves the weight per component: the leaves carry 2^-depth of the trunk's weight.
  assert np.isclose(w.max() / w.min(), 2.0**depth)


def test_fractal_tree_rejects_bad_arguments():
  with pytest.raises(ValueError, match="depth"):
    toy2d.fractal_tree_field(depth=-1)


def test_variance_profile_orders_targets_as_rao_blackwell_says():
  means, logvars, log_weights = toy2d.fractal_tree_field(depth=2, components_per_branch=4)
  schedule = schedules.cosine()
  times = jnp.array([1e-3, 0.5, 0.95])
  # Identity 4: CSEM has the lower variance where sigma^2 < alpha^2 v. At t = 1e-3, sigma^2 = 4e-5 is
  # below every component variance of this field, so CSEM must win there.
  assert schedule.sigma(times[0]) ** 2 < np.exp(logvars).min()
  profile = diagnostics.target_variance_profile(jax.random.PRNGKey(0), means, logvars, log_weights,
                                                schedule, times, num_points=4, num_draws=256)
  lsi, tweedie, csem = (np.asarray(profile[k]) for k in ("lsi", "tweedie", "csem"))
  # Identity 2 holds per z_t for the exact conditional variances; with 256 draws the sample variances
  # carry a relative error of about sqrt(2/256) = 9%, so allow 3 of those (27%) on the ordering.
  assert np.all(lsi <= 1.27 * np.minimum(tweedie, csem))
  assert csem[0] < tweedie[0] and tweedie[-1] < csem[-1]
  gate = np.asarray(profile["oracle_gate"])
  assert np.all((gate >= 0) & (gate <= 1)) and gate[0] < gate[-1]


def test_records_have_provenance_and_are_written_atomically(tmp_path):
  config = demo.get_config()
  record = records.run_record(config, stage="x", value=1.5)
  for field in ("date", "git_commit", "config_hash", "config", "machine", "stage", "value"):
    assert field in record
  assert records.config_hash(config) == records.config_hash(config.to_dict())
  changed = demo.get_config()
  changed.seed = 1
  assert records.config_hash(changed) != records.config_hash(config)
  path = records.write_json(str(tmp_path / "sub" / "r.json"), record)
  assert json.load(open(path))["value"] == 1.5
  assert not os.path.exists(path + ".tmp")


def tiny_demo_config():
  return demo.get_config("tiny")


def test_demo_stage_runs_end_to_end(tmp_path):
  run_lib.run_stages(tiny_demo_config(), str(tmp_path))
  record = json.load(open(tmp_path / "exact_field.json"))
  assert len(record["target_variance"]["lsi"]) == 3
  results = record["sampling"]["results"]
  assert [(r["method"], r["nfe"]) for r in results] == [("heun_pc", 8), ("rk4", 16)]
  assert all(np.isfinite(r["sw2_squared"]) for r in results)
  for name in ("target_variance.png", "samples.png"):
    assert os.path.getsize(tmp_path / name) > 1000
  table = tables.exact_field_table(record)
  assert "| heun_pc | " in table and "| rk4 | " in table and "exact vs exact (2 sets)" in table
  assert tables.target_variance_table(record, every=2).count("\n") == 2 + 2 - 1  # rows 0 and 2


def test_unknown_stage_is_a_clear_error(tmp_path):
  config = tiny_demo_config()
  config.stages = ("exact_field", "nonsense")
  with pytest.raises(ValueError, match="nonsense"):
    run_lib.run_stages(config, str(tmp_path))
