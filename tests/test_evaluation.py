"""Stage `eval` (experiments/evaluation.py) on a tiny trained workdir: samplers started from a given
noise bank, banks shared by every row and seed, SW2 against the test set's posterior latents with its
floor, reconstruction features shared by the rows on one VAE, and an evaluation killed between chunks that
resumes to the same record and the same bits."""

from __future__ import annotations

import glob
import json
import os
import shutil

import jax
import numpy as np
import pytest

from cgdiff import chunks, records
from cgdiff.metrics import banks, inception_weights, sw2
from experiments import common, evaluation, far_latents, sampling
from experiments import run as run_lib
from test_pipeline import tiny_images

# What differs between a resumed evaluation's record and an uninterrupted one's.
RUN_DEPENDENT = ("date", "wall_seconds", "chunks", "compute_seconds")


def eval_config(bank_dir: str, cache_dir: str, **overrides):
  """The tiny image config with an LDM on the Tweedie target (no gate), evaluation dirs under tmp."""
  config = tiny_images()
  config.ldm.target = "tweedie"
  config.eval.update({"bank_dir": bank_dir, "cache_dir": cache_dir, "fid": False, "chunk_size": 4, **overrides})
  return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A workdir with the `vae` and `ldm` stages trained for 2 steps."""
  workdir = str(tmp_path_factory.mktemp("trained"))
  root = str(tmp_path_factory.mktemp("dirs"))
  run_lib.run_stages(eval_config(root, root), workdir, ("vae", "ldm"))
  return workdir


def test_samplers_start_from_the_given_noise(trained, tmp_path):
  """draw_latents(initial=...) starts every sample from its row of the noise: the ODE samplers are then
  a function of it alone (any key), the SDE samplers of it and the key; any chunking of the rows gives the
  same bits (batch i uses fold_in(key, i) and rows [4 i, 4 i + 4) of the noise)."""
  config = eval_config(str(tmp_path), str(tmp_path))
  networks = sampling.trained_networks(config, trained)
  noise = banks.noise_bank(str(tmp_path), "prior", (10,) + networks.latent_shape).noise
  other = banks.noise_bank(str(tmp_path), "prior", (10,) + networks.latent_shape, seed=1).noise
  draw = lambda method, key, initial: sampling.draw_latents(
      config, networks, method=method, num_steps=2, num_samples=10, batch_size=4,
      key=jax.random.PRNGKey(key), initial=initial)
  ode = draw("euler_ode", 0, noise)
  np.testing.assert_array_equal(ode, draw("euler_ode", 1, noise))
  assert not np.allclose(ode, draw("euler_ode", 0, other))
  sde = draw("heun_pc", 0, noise)
  np.testing.assert_array_equal(sde, draw("heun_pc", 0, noise))
  assert not np.allclose(sde, draw("heun_pc", 0, other)) and not np.allclose(sde, draw("heun_pc", 1, noise))
  run_batch = sampling.batch_sampler(config, networks, method="heun_pc", num_steps=2, batch_size=4)
  key = jax.random.PRNGKey(0)
  chunked = np.concatenate([sampling.sample_rows(run_batch, key, 4, start, min(start + 8, 10), noise)
                            for start in (0, 8)])
  assert chunked.tobytes() == sde.tobytes()
  with pytest.raises(ValueError, match="multiple of batch_size=4"):
    sampling.sample_rows(run_batch, key, 4, 2, 10, noise)


def test_the_banks_and_the_sw2_protocol(trained, tmp_path):
  """Banks are keyed by eval.bank_seed alone, not by the training seed, so every row and seed shares
  them; SW2 compares the generated latents with z0 of the test images (eps from the bank), and the floor
  is over disjoint sets of training images."""
  bank_dir, workdir = str(tmp_path / "banks"), str(tmp_path / "run")
  shutil.copytree(trained, workdir)
  config = eval_config(bank_dir, str(tmp_path / "cache"))
  config.eval.bank_seed = 5  # not the training seed (0)
  record = evaluation.run(config, workdir)
  again = evaluation.run(config, workdir)
  assert again["banks"] == record["banks"] and again["metrics"] == record["metrics"]
  assert again["chunks"] == {"computed": {"samples": 0}, "loaded": {"samples": 2}}
  for bank in record["banks"].values():
    if isinstance(bank, dict):
      assert os.path.dirname(bank["path"]) == bank_dir and bank["seed"] == 5
      stored = banks.noise_bank(bank_dir, bank["name"], tuple(bank["shape"]), bank["seed"])
      assert stored.sha256 == bank["sha256"]

  # SW2 recomputed from its definition: the 8 generated latents against z0 of the first 8 test images.
  networks = sampling.trained_networks(config, workdir)
  test = common.train_images(config, "test")[:8]
  eps = banks.noise_bank(bank_dir, "posterior_test", tuple(record["banks"]["posterior_test"]["shape"]),
                         seed=5).noise
  _, _, z0 = evaluation.posterior_latents(networks, test, eps[:8])
  latents = chunks.ChunkStore(record["stores"]["samples"]).load("latents", total=8, chunk=4)
  directions = sw2.projection_bank(z0[0].size, config.eval.sw2_projections, config.eval.sw2_seed)
  # The same float32 latents and float64 projections; z0 differs only by the encoder's batching (one
  # pass of 8 here, of 8 + 32 in the stage): float32 rounding of O(1) values, ~1e-6 relative.
  np.testing.assert_allclose(record["metrics"]["sw2_squared"],
                             sw2.sliced_wasserstein2(latents, z0, directions), rtol=1e-5)
  # The trimmed SW2^2 leaves out one rank at each end of 8 (tail 0.01 of 8 ranks rounds to none; at least
  # one is left out), the same rounding as above.
  gaps = (np.sort(latents.reshape(8, -1).astype(np.float64) @ directions.T, axis=0) -
          np.sort(z0.reshape(8, -1).astype(np.float64) @ directions.T, axis=0)) ** 2
  np.testing.assert_allclose(record["metrics"]["sw2_squared_trimmed"], gaps[1:-1].mean(), rtol=1e-5)
  np.testing.assert_allclose(record["metrics"]["sw2_tail_share"], 1 - gaps[1:-1].sum() / gaps.sum(), rtol=1e-4)
  norms = record["sw2"]["norms"]
  np.testing.assert_allclose(norms["generated"][-1], np.linalg.norm(latents.reshape(8, -1), axis=-1).max(),
                             rtol=1e-6)
  assert norms["generated_beyond_real_max"] == int(np.sum(np.linalg.norm(latents.reshape(8, -1), axis=-1) >
                                                          norms["real"][-1]))
  floor = record["sw2"]["real_vs_real"]
  assert len(floor["trimmed"]["values"]) == 4
  assert record["metrics"]["sw2_squared_trimmed_real_vs_real_mean"] == floor["trimmed"]["mean"]
  assert floor["draws"] == 4 and floor["draws_asked"] == 5  # 32 training images hold 4 sets of 8
  assert len(floor["values"]) == 4 and floor["mean"] == pytest.approx(np.mean(floor["values"]), rel=1e-12)
  assert record["metrics"]["sw2_squared_real_vs_real_std"] == pytest.approx(np.std(floor["values"], ddof=1),
                                                                            rel=1e-12)
  assert "test" in record["sw2"]["compared"] and "training images" in floor["compared"]


CACHED_WEIGHTS = os.path.join(inception_weights.default_cache_dir(), inception_weights.CACHE_NAME)
needs_weights = pytest.mark.skipif(
    not os.path.exists(CACHED_WEIGHTS),
    reason=f"no converted Inception weights at {CACHED_WEIGHTS}; run `{inception_weights.FETCH_COMMAND}`")


class Killed(Exception):
  """What the injected kill raises."""


def kill_after(monkeypatch, where: str, saved: list[str]) -> None:
  """chunks.save_atomic appends each path it saves to `saved` and raises Killed right after the first
  chunk whose path contains `where`: the evaluation dies between two chunks, as a killed process would."""
  save = chunks.save_atomic

  def save_then_kill(path, array):
    save(path, array)
    saved.append(path)
    if where in path:
      raise Killed(path)

  monkeypatch.setattr(chunks, "save_atomic", save_then_kill)


def chunk_files(*directories: str) -> dict[str, bytes]:
  """{relative path: bytes} of every saved chunk under `directories`."""
  out = {}
  for directory in directories:
    for root, _, names in os.walk(directory):
      for name in names:
        if name.endswith(".npy"):
          path = os.path.join(root, name)
          out[os.path.relpath(path, os.path.dirname(directory))] = open(path, "rb").read()
  return out


@pytest.fixture(scope="module")
def fid_runs(trained, tmp_path_factory):
  """In one workdir: an evaluation killed after the first chunk of the latents, then of the reference
  images' features, then of the samples' features, then of the reconstructions' features, then resumed
  to the end; its outputs moved aside; the same evaluation uninterrupted; then another sampler on the
  same VAE."""
  root = tmp_path_factory.mktemp("fid")
  workdir, cache = str(root / "run"), str(root / "cache")
  shutil.copytree(trained, workdir)
  config = eval_config(str(root / "banks"), cache, fid=True, num_samples=8, num_reconstructions=8,
                       num_reference=8, inception_batch_size=4)
  saved = []
  with pytest.MonkeyPatch.context() as monkeypatch:
    for where in ("latents_", "_chunks/features_", "/inception_", "/reconstructions/"):
      kill_after(monkeypatch, where, saved)
      with pytest.raises(Killed):
        evaluation.run(config, workdir)
      monkeypatch.undo()
    kill_after(monkeypatch, "never", saved)
    resumed = evaluation.run(config, workdir)
  assert len(saved) == len(set(saved)), "a chunk was computed twice"
  resumed_files = chunk_files(os.path.join(workdir, "eval"), os.path.join(cache, "reconstructions"))
  os.rename(os.path.join(workdir, "eval"), str(root / "eval_resumed"))
  shutil.rmtree(cache)
  uninterrupted = evaluation.run(config, workdir)
  uninterrupted_files = chunk_files(os.path.join(workdir, "eval"), os.path.join(cache, "reconstructions"))
  config.sample.update(method="euler_ode")
  other_sampler = evaluation.run(config, workdir)
  return resumed, resumed_files, saved, uninterrupted, uninterrupted_files, other_sampler, config


@needs_weights
def test_a_killed_evaluation_resumes_to_the_same_record_and_bits(fid_runs):
  resumed, resumed_files, saved, uninterrupted, uninterrupted_files, *_ = fid_runs
  # 2 chunks each of latents, reference, sample and reconstruction features, each computed once across
  # the five runs (the fixture checks): the last run computed only the reconstructions' second chunk.
  assert len([path for path in saved if "/banks/" not in path]) == 8
  assert len([path for path in saved if "_chunks/features_" in path]) == 2
  assert resumed["chunks"] == {"computed": {"samples": 0, "sample_features": 0, "reconstruction_features": 1},
                               "loaded": {"samples": 2, "sample_features": 2, "reconstruction_features": 1}}
  assert len(resumed_files) == 6 and resumed_files == uninterrupted_files
  # The resumed run loaded every latent chunk; their cost is the killed runs' (>0, every chunk timed).
  assert resumed["compute_seconds"]["samples"] > 0 and None not in resumed["compute_seconds"].values()
  strip = lambda record: {k: v for k, v in record.items() if k not in RUN_DEPENDENT}
  assert json.dumps(strip(resumed), default=float) == json.dumps(strip(uninterrupted), default=float)
  assert np.isfinite(resumed["metrics"]["fid"]) and np.isfinite(resumed["metrics"]["recon_fid"])


@needs_weights
def test_rows_on_one_vae_share_the_reconstruction_features(fid_runs):
  *_, uninterrupted, _, other_sampler, _ = fid_runs
  assert other_sampler["chunks"]["computed"]["reconstruction_features"] == 0
  assert other_sampler["chunks"]["loaded"]["reconstruction_features"] == 2
  assert other_sampler["metrics"]["recon_fid"] == uninterrupted["metrics"]["recon_fid"]
  assert other_sampler["recon_fid"]["vae_sha256"] == uninterrupted["networks"]["vae_sha256"]
  assert other_sampler["metrics"]["fid"] != uninterrupted["metrics"]["fid"]  # other samples


@needs_weights
def test_fid_without_the_far_rows_is_computed_from_the_eval_s_stored_features(fid_runs):
  """far_latents.fid_without_far on the 8-sample evaluation: FID of all rows reproduces the record's;
  leaving rows out changes it; the random removals leave out as many rows; a record whose FID the stored
  features do not give, or whose reference statistics are not cached, is refused."""
  *_, other_sampler, config = fid_runs
  far = np.array([1, 5])
  result = far_latents.fid_without_far(config, other_sampler, far)
  assert result["all"] == pytest.approx(other_sampler["metrics"]["fid"], rel=1e-6)
  assert result["removed"] == 2 and len(result["without_random"]) == far_latents.FID_DRAWS
  assert np.isfinite(result["without_far"]) and result["without_far"] != result["all"]
  assert len(set(result["without_random"])) > 1  # different rows left out in each draw
  assert result == far_latents.fid_without_far(config, other_sampler, far)  # the draws' seed is fixed
  tampered = {**other_sampler, "metrics": {**other_sampler["metrics"], "fid": other_sampler["metrics"]["fid"] + 1}}
  with pytest.raises(SystemExit, match="is not the record's"):
    far_latents.fid_without_far(config, tampered, far)
  elsewhere = config.copy_and_resolve_references()
  elsewhere.eval.cache_dir = os.path.join(os.path.dirname(config.eval.cache_dir), "empty_cache")
  with pytest.raises(SystemExit, match="reference statistics of its eval are not cached"):
    far_latents.fid_without_far(elsewhere, other_sampler, far)


def test_far_latents_integrates_the_far_rows_again_from_their_bank_noise(trained, tmp_path):
  """experiments.far_latents on a tiny evaluated run: with the real maximum norm set under the generated
  median (the tiny model has no far latents of its own), about half the rows are far; the eval's own
  steps reproduce the stored latents, so the first entry's statistics are those of the stored rows; the
  finest integration is at distance 0 from itself. A stochastic sampler's run is refused."""
  workdir = str(tmp_path / "run")
  shutil.copytree(trained, workdir)
  config = eval_config(str(tmp_path / "banks"), str(tmp_path / "cache"))
  config.sample.method, config.sample.num_steps = "rk4", 2
  record = evaluation.run(config, workdir)
  latents = chunks.ChunkStore(record["stores"]["samples"]).load("latents", total=record["num_samples"], chunk=4)
  latent_norms = evaluation.latent_norms(latents)
  real_max = float(np.median(latent_norms))
  norms = record["sw2"]["norms"]
  norms["real"][norms["quantiles"].index(1.0)] = real_max
  assert evaluation.real_max_norm(norms) == real_max
  (path,) = glob.glob(os.path.join(workdir, "eval", "*_rk4_2_n*.json"))
  records.write_json(path, record)
  study, images = far_latents.study(config, workdir, "tiny")
  far = np.flatnonzero(latent_norms > real_max)
  assert study["far_rows"] == far.tolist() and len(study["control_rows"]) == min(len(far), 8 - len(far))
  assert not set(study["control_rows"]) & set(study["far_rows"])
  prior_norms = evaluation.latent_norms(banks.noise_bank(str(tmp_path / "banks"), "prior", latents.shape,
                                                   config.eval.bank_seed).noise)
  # The mean over far rows of the fraction of the 8 bank rows whose z_T norm is smaller.
  assert study["prior_norm_percentile"]["far"] == pytest.approx(
      np.mean([np.mean(prior_norms < prior_norms[i]) for i in far]), rel=1e-12)
  assert study["vae_sha256"] == record["networks"]["vae_sha256"]
  assert study["reproduced_max_abs_difference"] < 1e-5  # float32 batching of per-row maths
  first, last = study["by_steps"][0], study["by_steps"][-1]
  assert [e["steps"] for e in study["by_steps"]] == [2 * f for f in far_latents.STEP_FACTORS]
  assert first["far"]["beyond_real_max"] == len(far) and first["nfe"] == record["nfe"]
  np.testing.assert_allclose(first["far"]["norm_quantiles"][-1], latent_norms[far].max(), rtol=1e-5)
  assert last["far"]["mean_distance_to_finest"] == 0.0
  assert images.shape[0] == min(len(far), 8) * len(far_latents.STEP_FACTORS)
  assert study["stage"] == "far_latents"
  assert study["fid"] is None  # this eval computed no FID
  config.sample.method = "heun_pc"
  evaluation.run(config, workdir)
  for path in glob.glob(os.path.join(workdir, "eval", "*rk4*.json")):
    os.remove(path)
  with pytest.raises(SystemExit, match="stochastic heun_pc"):
    far_latents.study(config, workdir, "tiny")
