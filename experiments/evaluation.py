"""Stage `eval`: FID, reconstruction FID and latent SW2 of a trained workdir, and its pictures.

For config.sample.score_source, sampled with config.sample.method x num_steps (001 section 6; MATH.md
section 7):
  fid        N = eval.num_samples decoded samples against the Inception statistics of the real
             eval.reference_split images (eval.num_reference of them; cached per data set and split);
  recon_fid  decode(z ~ q(z | x)) of eval.num_reconstructions reference images against the same statistics;
  sw2        sliced Wasserstein-2 between generated latents and aggregated-posterior latents
             z0 ~ q(z0 | x), x from the training set, with a fixed seeded bank of directions.
Writes eval/<source>_<method>_<steps>_n<N>.json (one record per evaluation) and the figures next to it:
an 8x8 sample grid, the PCA histograms of real against generated latents, the score targets across
time, the gate across time (critic-gate models) and the training curves of every trained stage.
"""

from __future__ import annotations

import contextlib
import json
import os
import time

import jax
import ml_collections
import numpy as np
from absl import logging

from cgdiff import diagnostics, plots, records, samplers, targets
from cgdiff.metrics import fid, inception_weights, projections, sw2
from experiments import common, sampling

TRAINED_STAGES = ("vae", "ldm", "cotrain")


class _Timer:
  """Wall seconds of named parts of an evaluation: `with timer("sampling"): ...`."""

  def __init__(self):
    self.seconds: dict[str, float] = {}

  @contextlib.contextmanager
  def __call__(self, name: str):
    start = time.perf_counter()
    yield
    self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def posterior_latents(networks: sampling.TrainedNetworks, images: np.ndarray, seed: int):
  """(mean, logvar, z0 ~ q(z0 | x)) of `images` [N, H, W, C] under the networks' VAE, each [N, h, w, C]."""
  mean, logvar = common.encode_all(networks.vae, networks.vae_params, images)
  eps = np.random.default_rng(seed).standard_normal(mean.shape, dtype=np.float32)
  return mean, logvar, np.asarray(targets.reparameterize(mean, logvar, eps))


def fid_metrics(config: ml_collections.ConfigDict, generated: np.ndarray, reconstructed: np.ndarray,
                reference: np.ndarray, timer: _Timer) -> dict:
  """FID of generated and of reconstructed images [N, H, W, C] in [-1, 1] against `reference` (real)."""
  cfg = config.eval
  variables = inception_weights.load_inception_params(cfg.inception_weights)
  # Generated data sets differ by their arguments (size, seed, channels): they key the cache too.
  kwargs = {k: v for k, v in config.data.get("kwargs", {}).items() if k != "download"}
  dataset = config.data.name + (f"_{records.config_hash(kwargs)}" if kwargs else "")
  with timer("reference_statistics"):
    reference_stats = fid.reference_stats(
        dataset, cfg.reference_split, lambda: reference, cfg.cache_dir, num_images=len(reference),
        variables=variables, batch_size=cfg.inception_batch_size, progress="Inception: real images")
  out = {}
  for name, images in (("fid", generated), ("recon_fid", reconstructed)):
    with timer(name):
      stats = fid.inception_stats(variables, images, cfg.inception_batch_size,
                                  progress=f"Inception: {name} images")
      out[name] = fid.fid_from_stats(stats, reference_stats)
  return out


def training_logs(config: ml_collections.ConfigDict, workdir: str) -> dict[str, list[dict]]:
  """{stage: metrics.jsonl records} of every trained stage of `config` present (a shared VAE's too)."""
  logs = {}
  for stage in TRAINED_STAGES:
    path = os.path.join(common.stage_dir(config, workdir, stage), "metrics.jsonl")
    if os.path.exists(path):
      with open(path) as f:
        logs[stage] = [json.loads(line) for line in f if line.strip()]
  return logs


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  if config.data.name == common.TOY:
    raise ValueError("the `eval` stage is for image data; the 2-D toy's `sample` stage scores its "
                     "samples against the exact field (SW2).")
  cfg, sample_cfg = config.eval, config.sample
  timer = _Timer()
  networks = sampling.trained_networks(config, workdir)
  name = f"{sample_cfg.score_source}_{sample_cfg.method}_{sample_cfg.num_steps}_n{cfg.num_samples}"
  out_dir = common.stage_dir(config, workdir, "eval")
  os.makedirs(out_dir, exist_ok=True)
  logging.info("evaluating %s of %s at step %d -> %s", name, workdir, networks.training_step, out_dir)

  with timer("sampling"):
    latents = sampling.draw_latents(config, networks, method=sample_cfg.method,
                                    num_steps=sample_cfg.num_steps, num_samples=cfg.num_samples,
                                    batch_size=cfg.batch_size, key=jax.random.PRNGKey(config.seed + 7),
                                    progress=True)
    generated = sampling.decode(networks, latents)

  # The aggregated posterior: one z0 ~ q(z0 | x) for each of n = min(N, N_train) training images, and
  # the SW2 floor (what a perfect model scores at this n): a second, disjoint set of n when there is one.
  train = common.train_images(config)
  order = np.random.default_rng(config.seed + 8).permutation(len(train))
  num_sw2 = min(cfg.num_samples, len(train))
  with timer("encoding"):
    post_mean, post_logvar, real_latents = posterior_latents(networks, train[order[:num_sw2]],
                                                             config.seed + 9)
    floor_latents = None
    if 2 * num_sw2 <= len(train):
      _, _, floor_latents = posterior_latents(networks, train[order[num_sw2:2 * num_sw2]], config.seed + 12)
  del train
  bank = sw2.projection_bank(int(np.prod(networks.latent_shape)), cfg.sw2_projections, seed=cfg.sw2_seed)
  sw2_squared = sw2.sliced_wasserstein2(latents[:num_sw2], real_latents, bank)
  metrics = {"sw2_squared": sw2_squared, "sw2": float(np.sqrt(sw2_squared)),
             "sw2_squared_real_vs_real": (None if floor_latents is None else
                                          sw2.sliced_wasserstein2(floor_latents, real_latents, bank))}

  reference = common.train_images(config, cfg.reference_split)
  if cfg.num_reference > 0:
    reference = reference[:cfg.num_reference]
  with timer("reconstruction"):
    recon_source = reference[:cfg.num_reconstructions]
    _, _, recon_latents = posterior_latents(networks, recon_source, config.seed + 10)
    reconstructed = sampling.decode(networks, recon_latents)
  if cfg.fid:
    metrics.update(fid_metrics(config, generated, reconstructed, reference, timer))

  with timer("figures"):
    figures = _figures(config, networks, workdir, out_dir, name, generated, latents, real_latents,
                       (post_mean, post_logvar))

  fields = {
      "stage": "eval", "training_step": networks.training_step, "dataset": config.data.name,
      "score_source": sample_cfg.score_source, "sampler": sample_cfg.method,
      "steps": sample_cfg.num_steps, "nfe": samplers.nfe(sample_cfg.method, sample_cfg.num_steps),
      "num_samples": int(len(latents)),
      "reference": {"split": cfg.reference_split, "num_images": int(len(reference)),
                    "num_reconstructions": int(len(reconstructed))},
      "sw2": {"num_samples": num_sw2, "projections": cfg.sw2_projections, "seed": cfg.sw2_seed,
              "against": "z0 ~ q(z0 | x), one per training image",
              "real_vs_real": "the same for a second, disjoint set of training images (null when "
                              "the training set has fewer than 2n images)"},
      "metrics": metrics,
      "wall_seconds": {**timer.seconds, "total": sum(timer.seconds.values())},
      "figures": figures,
  }
  if cfg.fid:
    fields["inception_weights"] = inception_weights.weights_id(cfg.inception_weights)
  record = records.run_record(config, **fields)
  path = records.write_json(os.path.join(out_dir, f"{name}.json"), record)
  logging.info("eval %s: %s -> %s", name, metrics, path)
  return record


def _figures(config, networks, workdir, out_dir, name, generated, latents, real_latents, posterior):
  """Every picture of an evaluation; returns {what: path}."""
  cfg, sample_cfg = config.eval, config.sample
  nfe = samplers.nfe(sample_cfg.method, sample_cfg.num_steps)
  label = f"{sample_cfg.score_source}, {sample_cfg.method} x {sample_cfg.num_steps} (NFE {nfe})"
  figures = {"grid": plots.plot_image_grid(generated, os.path.join(out_dir, f"{name}_grid.png"),
                                           title=f"{config.data.name}: {label}")}
  pca = projections.fit_pca(real_latents)
  figures["pca"] = plots.plot_latent_pca(pca.project(real_latents), {label: pca.project(latents)},
                                         os.path.join(out_dir, f"{name}_pca.png"),
                                         explained=pca.explained_variance_ratio)
  schedule = common.schedule(config)
  times = np.linspace(schedule.t_min, schedule.t_max, cfg.profile_times)
  mean, logvar = (x[:cfg.profile_batch] for x in posterior)
  eps_fn = lambda z, t: networks.score_net.apply(networks.score_params, z, t)
  gate_fn = None
  if networks.gate is not None:
    gate_fn = lambda z, t: networks.gate.apply(networks.gate_params, z, t)
  profile = jax.device_get(jax.jit(lambda key: diagnostics.posterior_target_profile(
      key, mean, logvar, schedule, times, eps_fn=eps_fn, gate_fn=gate_fn))(
          jax.random.PRNGKey(config.seed + 11)))
  figures["targets"] = plots.plot_target_profile(
      times, {k: v for k, v in profile.items() if k != "gate"}, os.path.join(out_dir, f"{name}_targets.png"),
      title=f"score targets on {len(mean)} real posteriors; network: {sample_cfg.score_source}")
  if "gate" in profile:
    figures["gate"] = plots.plot_gate(times, profile["gate"], os.path.join(out_dir, f"{name}_gate.png"))
  logs = training_logs(config, workdir)
  if logs:
    figures["training_curves"] = plots.plot_training_curves(logs, os.path.join(out_dir, "training_curves.png"))
  return figures
