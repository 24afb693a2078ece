"""Every stage of experiments.run end to end on tiny configurations (a few steps each): the image
pipeline (vae, stats, ldm for each objective, cotrain, sample from both sources) and the 2-D toy."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import quickstart, toy
from experiments import common
from experiments import run as run_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_images():
  """configs/quickstart.py:tiny, unlocked for the tests' changes."""
  config = quickstart.get_config("tiny")
  config.unlock()
  return config


@pytest.fixture(scope="module")
def image_workdir(tmp_path_factory):
  """Every image stage once: vae, stats, critic-gate LDM with 001's prior CSEM (needs the stats),
  co-training, then samples from the LDM and from the co-trained score network."""
  workdir = str(tmp_path_factory.mktemp("quickstart"))
  config = tiny_images()
  config.ldm.target = "critic_gate_prior"
  config.stages = ("vae", "stats", "ldm", "cotrain", "sample")
  run_lib.run_stages(config, workdir)
  config.sample.score_source = "cotrain"
  config.stages = ("sample",)
  run_lib.run_stages(config, workdir)
  return workdir


def test_image_pipeline_writes_checkpoints_stats_and_samples(image_workdir):
  for path in ("vae/checkpoints/2", "ldm/checkpoints/2", "cotrain/checkpoints/2",
               "stats/latent_stats.npz", "vae/metrics.jsonl", "samples/ldm_heun_pc_2.npz",
               "samples/ldm_heun_pc_2.png", "samples/cotrain_heun_pc_2.png"):
    assert os.path.exists(os.path.join(image_workdir, path)), path
  samples = np.load(os.path.join(image_workdir, "samples/ldm_heun_pc_2.npz"))
  assert samples["latents"].shape == (4, 8, 8, 4) and samples["images"].shape == (4, 32, 32, 3)
  assert samples["images"].dtype == np.uint8
  record = json.load(open(os.path.join(image_workdir, "samples/ldm_heun_pc_2.json")))
  assert record["nfe"] == 4 and record["git_commit"] and record["config_hash"]


def test_stage_metrics_are_logged(image_workdir):
  read = lambda stage: [json.loads(line) for line in open(os.path.join(image_workdir, stage, "metrics.jsonl"))]
  ldm, cotrain = read("ldm"), read("cotrain")
  assert len(ldm) == 2 and all(np.isfinite(m["loss"]) for m in ldm)
  assert 0.0 <= ldm[-1]["gate_min"] <= ldm[-1]["gate_mean"] <= ldm[-1]["gate_max"] <= 1.0
  assert {"reconstruction", "kl", "score_loss", "target_excess_over_lsi"} <= set(cotrain[-1])


EVAL_FIELDS = ("date", "git_commit", "config_hash", "config", "training_step", "dataset", "score_source",
               "sampler", "steps", "nfe", "num_samples", "networks", "banks", "sampling", "reference", "sw2",
               "metrics", "stores", "wall_seconds", "chunks", "compute_seconds", "figures")


def test_eval_stage_writes_a_complete_record_and_every_figure(image_workdir, tmp_path):
  config = tiny_images()
  config.ldm.target = "critic_gate_prior"
  config.eval.bank_dir = str(tmp_path)  # not the user's cache
  run_lib.run_stages(config, image_workdir, ("eval",))
  record = json.load(open(os.path.join(image_workdir, "eval", "ldm_heun_pc_2_n8.json")))
  for field in EVAL_FIELDS:
    assert record.get(field) is not None, field
  assert record["training_step"] == 2 and record["nfe"] == 4 and record["num_samples"] == 8
  assert record["reference"] == {"split": "test", "num_images": 8, "num_reconstructions": 4}
  metrics = record["metrics"]
  assert np.isfinite(metrics["sw2_squared"]) and metrics["sw2"] ** 2 == pytest.approx(metrics["sw2_squared"])
  # 32 training images hold 4 disjoint sets of 8: the floor's mean and sd over 4 draws.
  assert record["sw2"]["real_vs_real"]["draws"] == 4
  assert np.isfinite(metrics["sw2_squared_real_vs_real_mean"]) and metrics["sw2_squared_real_vs_real_std"] > 0
  assert set(record["figures"]) == {"grid", "pca", "targets", "gate", "training_curves"}
  for name in record["figures"].values():  # beside the record, named relative to it
    assert os.path.basename(name) == name
    assert os.path.getsize(os.path.join(image_workdir, "eval", name)) > 1000, name
  assert record["wall_seconds"]["total"] > 0


def test_diagnose_stage_compares_the_gate_with_g_star_and_g_p(image_workdir):
  """001's prior-CSEM row: the gate against g* and against the g_p of the row's own latent statistics;
  the co-trained network (no gate, no stats): the critic against the posteriors' Gaussian fit."""
  config = tiny_images()
  config.ldm.target = "critic_gate_prior"
  run_lib.run_stages(config, image_workdir, ("diagnose",))
  record = json.load(open(os.path.join(image_workdir, "diagnose", "ldm.json")))
  gates = {k: np.asarray(v) for k, v in record["gates"].items()}
  assert "latent statistics" in record["reference_gaussian"] and len(record["times"]) == 3
  for name in ("gate", "gate_q10", "gate_q90", "oracle_gate", "prior_gate", "gate_to_oracle", "gate_to_prior",
               "critic_vs_lsi", "critic_vs_gaussian", "lsi_vs_gaussian"):
    assert gates[name].shape == (3,) and np.all(np.isfinite(gates[name])), name
  assert np.all((gates["gate_q10"] <= gates["gate_q90"]) & (gates["gate_q90"] <= 1.0))
  assert set(record["eps_variances"]) == {"tweedie", "csem", "lsi", "blend"}
  for name in record["figures"].values():
    assert os.path.basename(name) == name
    assert os.path.getsize(os.path.join(image_workdir, "diagnose", name)) > 1000, name
  config.sample.score_source = "cotrain"
  run_lib.run_stages(config, image_workdir, ("diagnose",))
  record = json.load(open(os.path.join(image_workdir, "diagnose", "cotrain.json")))
  assert "moment-matched" in record["reference_gaussian"] and "gate" not in record["gates"]
  assert set(record["eps_variances"]) == {"tweedie", "csem", "lsi"}


def test_gaussian_fit_matches_the_mixture_moments():
  from experiments import diagnosis  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  mean = rng.normal(size=(50_000, 2)).astype(np.float32) * np.float32(2.0)
  logvar = np.full((50_000, 2), np.log(0.5), np.float32)
  m, lv = diagnosis.gaussian_fit(mean, logvar)
  # E mu = 0 with sd 2 / sqrt(50000) = 0.009; v = 0.5 + 4 = 4.5 with sd 4 sqrt(2 / 50000) = 0.025.
  np.testing.assert_allclose(m, 0.0, atol=0.045)
  np.testing.assert_allclose(np.exp(lv), 4.5, atol=0.125)


def test_later_stages_find_the_vae_of_either_source(image_workdir):
  """002's row (b) trains a prior on the co-trained VAE: `vae_source` picks the checkpoint."""
  config = tiny_images()
  images = common.train_images(config)[:4]
  encodings = []
  for source in ("vae", "cotrain"):
    module, params = common.trained_vae(config, image_workdir, source, images.shape[1:])
    encodings.append(np.asarray(module.apply(params, images, method=module.encode)[0]))
  assert not np.allclose(encodings[0], encodings[1])


@pytest.mark.parametrize("target", ["tweedie", "lsi", "critic_gate"])
def test_toy_pipeline_measures_sw2_against_the_exact_field(tmp_path, target):
  if target == "tweedie":  # once through the user's own command, on the config file's tiny variant
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    done = subprocess.run([sys.executable, "-m", "experiments.run", "--config=configs/toy.py:tiny",
                           f"--workdir={tmp_path}", f"--config.ldm.target={target}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
  else:
    config = toy.get_config("tiny")
    config.ldm.target = target
    run_lib.run_stages(config, str(tmp_path))
  record = json.load(open(tmp_path / "samples" / "ldm_rk4_2.json"))
  assert np.isfinite(record["sw2_squared_vs_exact"]) and record["nfe"] == 8


def test_missing_vae_checkpoint_is_a_clear_error(tmp_path):
  config = tiny_images()
  config.stages = ("ldm",)
  with pytest.raises(FileNotFoundError, match="vae"):
    run_lib.run_stages(config, str(tmp_path))


def test_rows_share_a_vae_through_vae_workdir(image_workdir, tmp_path):
  """A run with config.vae_workdir uses (and would train) the autoencoder stages there: the finished VAE
  of `image_workdir` is found, not trained again, and the LDM and samples stay in the run's own workdir."""
  vae_checkpoint = os.path.join(image_workdir, "vae", "checkpoints", "2")
  before = os.path.getmtime(vae_checkpoint)
  config = tiny_images()
  config.vae_workdir = image_workdir
  config.ldm.target = "lsi"
  config.stages = ("vae", "ldm", "sample")
  run_lib.run_stages(config, str(tmp_path))
  assert os.path.getmtime(vae_checkpoint) == before
  assert not os.path.exists(tmp_path / "vae")
  assert os.path.exists(tmp_path / "ldm" / "checkpoints" / "2")
  assert os.path.exists(tmp_path / "samples" / "ldm_heun_pc_2.npz")
