"""Stage `eval`: FID, reconstruction FID and latent SW2 of a trained workdir, and its pictures (002's
protocol: fixed noise banks, SW2 against the test set's aggregated posterior with a real-vs-real floor).

For config.sample.score_source, sampled with config.sample.method x num_steps (MATH.md section 7):
  fid        N = eval.num_samples decoded samples against the Inception statistics of the first
             n_ref = eval.num_reference (0: all) images of eval.reference_split (cached per data set,
             split and n_ref, with their square root);
  recon_fid  decode(z0) of the first eval.num_reconstructions of those images against the same
             statistics; its features are cached per VAE (hash of its parameters), bank and data set,
             so rows that share a VAE compute them once;
  sw2        sliced Wasserstein-2 between the first n = min(N, n_ref) generated latents and z0 of the
             first n reference images, with a fixed seeded bank of directions; the floor (what a perfect
             model of the training set scores at this n) is the mean and sd over eval.sw2_floor_draws
             disjoint sets of n training images' z0, each against the same reference latents; with it
             the trimmed SW2^2 (without the outer eval.sw2_tail of the sorted ranks) and the tail's
             share, for both, and the quantiles of the generated and real latents' norms.
Noise banks (cgdiff.metrics.banks, in eval.bank_dir, seed eval.bank_seed; the same for every row and
training seed): "prior" [N, *latent] is the samplers' z_T (all the randomness of the ODE samplers; the SDE
samplers' path noise comes from fold_in(PRNGKey(eval.bank_seed), batch index)); "posterior_<split>"
[N_split, *latent] holds eps for z0 = mu + sqrt(v) eps of image i of that split (row i).
Resumable: the generated latents and the Inception features of the decoded samples are saved in chunks
under eval/<name>_<hash of the settings>/ as they are computed (cgdiff.chunks), the reconstructions'
features under <stats cache>/reconstructions/; a killed evaluation resumes where it stopped and writes the
same record (apart from the date, the wall times and the chunk counts; `compute_seconds` sums each
store's chunks' timings over every attempt).
Writes eval/<source>_<method>_<steps>_n<N>.json and the figures next to it: an 8x8 sample grid, the PCA
histograms of real against generated latents, the score targets across time, the gate across time
(critic-gate models) and the training curves of every trained stage.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time

import jax
import ml_collections
import numpy as np
from absl import logging

from cgdiff import chunks, diagnostics, plots, records, samplers, targets
from cgdiff.metrics import banks, fid, inception_weights, projections, sw2
from cgdiff.train import writers
from experiments import common, latent_space, sampling


class _Timer:
  """Wall seconds of named parts of an evaluation: `with timer("sampling"): ...`."""

  def __init__(self):
    self.seconds: dict[str, float] = {}

  @contextlib.contextmanager
  def __call__(self, name: str):
    start = time.perf_counter()
    yield
    self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def dataset_id(config: ml_collections.ConfigDict) -> str:
  """config.data.name, and for generated data sets a hash of their arguments (size, seed, channels):
  what keys the caches of real-image statistics."""
  kwargs = {k: v for k, v in config.data.get("kwargs", {}).items() if k != "download"}
  return config.data.name + (f"_{records.config_hash(kwargs)}" if kwargs else "")


def posterior_latents(networks: sampling.TrainedNetworks, images: np.ndarray, eps: np.ndarray):
  """(mean, logvar, z0 = mean + exp(logvar / 2) eps) of `images` [N, H, W, C] under the networks' VAE,
  each [N, h, w, C]; eps [N, h, w, C] are the images' rows of a posterior noise bank."""
  mean, logvar = common.encode_all(networks.vae, networks.vae_params, images)
  return mean, logvar, np.asarray(targets.reparameterize(mean, logvar, eps))


def training_logs(config: ml_collections.ConfigDict, workdir: str) -> dict[str, list[dict]]:
  """{stage: metrics.jsonl records} of every trained stage of `config` present (a shared VAE's too)."""
  logs = {}
  for stage in common.TRAINING_STAGES:
    path = os.path.join(common.stage_dir(config, workdir, stage), writers.METRICS_FILE)
    if os.path.exists(path):
      logs[stage] = writers.read_metrics(path)
  return logs


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  space = latent_space.of(config)
  if not space.has_vae:
    raise ValueError("the `eval` stage is for image data; the 2-D toy's `sample` stage scores its "
                     "samples against the exact field (SW2).")
  cfg, sample_cfg = config.eval, config.sample
  nfe = samplers.nfe(sample_cfg.method, sample_cfg.num_steps)
  timer = _Timer()
  networks = sampling.trained_networks(config, workdir)
  latent_shape = tuple(networks.latent_shape)
  name = f"{sample_cfg.score_source}_{sample_cfg.method}_{sample_cfg.num_steps}_n{cfg.num_samples}"
  out_dir = common.stage_dir(config, workdir, "eval")
  logging.info("evaluating %s of %s at step %d -> %s", name, workdir, networks.training_step, out_dir)
  with timer("hashing"):
    network_hashes = {"score_sha256": records.tree_sha256(networks.score_params),
                      "gate_sha256": (None if networks.gate_params is None else
                                      records.tree_sha256(networks.gate_params)),
                      "vae_sha256": records.tree_sha256(networks.vae_params)}

  # Real images and their posterior latents z0 = mu + sqrt(v) eps, eps from the banks (row = image).
  split = cfg.reference_split
  with timer("encoding"):
    reference = common.train_images(config, split)
    split_size = len(reference)
    if cfg.num_reference > 0:
      reference = reference[:cfg.num_reference]
    train = common.train_images(config)
    split_bank = banks.noise_bank(cfg.bank_dir, f"posterior_{split}", (split_size,) + latent_shape,
                                  cfg.bank_seed)
    train_bank = banks.noise_bank(cfg.bank_dir, "posterior_train", (len(train),) + latent_shape, cfg.bank_seed)
    num_sw2 = min(cfg.num_samples, len(reference))
    num_recon = min(cfg.num_reconstructions, len(reference))
    num_real = max(num_sw2, num_recon)
    # The floor's training images: disjoint sets of num_sw2, none of them a reference image.
    candidates = np.arange(num_real if split == "train" else 0, len(train))
    order = np.random.default_rng(cfg.bank_seed).permutation(candidates)
    num_floor = min(cfg.sw2_floor_draws, len(order) // num_sw2)
    floor_images = order[:num_floor * num_sw2]
    # One encoding pass (one compilation): the reference images, then the floor's training images.
    post_mean, post_logvar, encoded_latents = posterior_latents(
        networks, np.concatenate([reference[:num_real], train[floor_images]]),
        np.concatenate([split_bank.noise[:num_real], train_bank.noise[floor_images]]))
  del train
  real_latents = encoded_latents[:num_real]
  floor_latents = np.split(encoded_latents[num_real:], num_floor) if num_floor else []
  if num_floor < cfg.sw2_floor_draws:
    logging.warning("only %d disjoint sets of %d training images for the SW2 floor (%d asked for)",
                    num_floor, num_sw2, cfg.sw2_floor_draws)

  # Generated latents from the prior bank, saved in chunks of whole sampler batches.
  prior = banks.noise_bank(cfg.bank_dir, "prior", (cfg.num_samples,) + latent_shape, cfg.bank_seed)
  store = chunks.ChunkStore.keyed(out_dir, name, {
      "score_source": sample_cfg.score_source, "method": sample_cfg.method, "num_steps": sample_cfg.num_steps,
      "num_samples": cfg.num_samples, "batch_size": cfg.batch_size, "chunk": cfg.chunk_size,
      "schedule": config.schedule.to_dict(), "prior_bank_sha256": prior.sha256,
      "path_noise_seed": cfg.bank_seed, "training_step": networks.training_step, **network_hashes})
  with timer("sampling"):
    run_batch = sampling.batch_sampler(config, networks, method=sample_cfg.method,
                                       num_steps=sample_cfg.num_steps, batch_size=cfg.batch_size)
    path_key = jax.random.PRNGKey(cfg.bank_seed)
    latents = store.array(
        "latents", lambda start, stop: sampling.sample_rows(run_batch, path_key, cfg.batch_size, start, stop,
                                                            prior.noise),
        cfg.num_samples, chunks.round_up(cfg.chunk_size, cfg.batch_size), label=f"{sample_cfg.method} latents")
  stores = {"samples": store}

  with timer("sw2"):
    directions = sw2.projection_bank(int(np.prod(latent_shape)), cfg.sw2_projections, seed=cfg.sw2_seed)
    sw2_split = sw2.tail_split(latents[:num_sw2], real_latents[:num_sw2], directions, cfg.sw2_tail)
    floor = (sw2.floor(floor_latents, real_latents[:num_sw2], directions, tail=cfg.sw2_tail) if floor_latents
             else {"values": [], "mean": None, "std": None})
    norms = _norm_tails(latents[:num_sw2], real_latents[:num_sw2])
  no_floor = {"mean": None, "std": None}
  metrics = {"sw2_squared": sw2_split["squared"], "sw2": float(np.sqrt(sw2_split["squared"])),
             "sw2_squared_real_vs_real_mean": floor["mean"], "sw2_squared_real_vs_real_std": floor["std"],
             "sw2_squared_trimmed": sw2_split["trimmed"], "sw2_tail_share": sw2_split["tail_share"],
             "sw2_squared_trimmed_real_vs_real_mean": floor.get("trimmed", no_floor)["mean"],
             "sw2_squared_trimmed_real_vs_real_std": floor.get("trimmed", no_floor)["std"]}

  decode = functools.partial(space.decode, networks.vae, networks.vae_params)
  fid_fields = {}
  if cfg.fid:
    fid_metrics, fid_fields, more_stores = _fid(config, decode, store, latents, reference,
                                                real_latents[:num_recon], split_bank, network_hashes, timer)
    metrics.update(fid_metrics)
    stores.update(more_stores)

  with timer("figures"):
    figures = _figures(config, networks, workdir, out_dir, name, decode(latents[:64]),
                       latents, real_latents[:num_sw2], (post_mean[:num_real], post_logvar[:num_real]))

  stochastic = samplers.METHODS[sample_cfg.method].stochastic
  floor_note = ", without the reference images" if split == "train" else ""
  fields = {
      "stage": "eval", "training_step": networks.training_step, "dataset": config.data.name,
      "score_source": sample_cfg.score_source, "sampler": sample_cfg.method,
      "steps": sample_cfg.num_steps, "nfe": nfe, "num_samples": int(len(latents)),
      "networks": network_hashes,
      "banks": {"directory": os.path.dirname(prior.path), "seed": cfg.bank_seed,
                "prior": prior.describe(), f"posterior_{split}": split_bank.describe(),
                "posterior_train": train_bank.describe()},
      "sampling": {"initial_noise": f"rows 0..{cfg.num_samples - 1} of the prior bank, one per sample",
                   "path_noise": ("fold_in(PRNGKey(eval.bank_seed), batch index), batches of "
                                  f"{cfg.batch_size}" if stochastic else None),
                   "batch_size": cfg.batch_size},
      "reference": {"split": split, "num_images": int(len(reference)), "num_reconstructions": num_recon},
      "sw2": {"num_samples": num_sw2, "projections": cfg.sw2_projections, "seed": cfg.sw2_seed,
              "compared": (f"the first {num_sw2} generated latents against z0 = mu + sqrt(v) eps of the first "
                           f"{num_sw2} {split} images (eps: their rows of the posterior_{split} bank)"),
              "real_vs_real": {
                  "compared": (f"z0 of {num_floor} disjoint sets of {num_sw2} training images (eps: "
                               "their rows of the posterior_train bank; the sets are consecutive slices of a "
                               f"permutation seeded with eval.bank_seed{floor_note}), each against the same "
                               f"{num_sw2} {split} latents"),
                  "draws": num_floor, "draws_asked": cfg.sw2_floor_draws, **floor},
              "tail": cfg.sw2_tail,
              "trimmed": (f"the mean over directions of the squared gaps of the central ranks only, without "
                          f"the outer {cfg.sw2_tail:g} of them (half at each end)"),
              "tail_share": sw2_split["tail_share"],
              "norms": norms},
      **fid_fields,
      "metrics": metrics,
      "stores": {k: v.directory for k, v in stores.items()},
      "wall_seconds": {**timer.seconds, "total": sum(timer.seconds.values())},
      "chunks": {"computed": {k: v.computed for k, v in stores.items()},
                 "loaded": {k: v.loaded for k, v in stores.items()}},
      # wall_seconds times this attempt, which loads what killed attempts computed: each store's chunks'
      # own seconds, by whichever attempt (or row, for shared reconstructions) computed them.
      "compute_seconds": {k: v.compute_seconds() for k, v in stores.items()},
      "figures": records.relative_to(out_dir, figures),
  }
  record = records.run_record(config, **fields)
  path = records.write_json(os.path.join(out_dir, f"{name}.json"), record)
  logging.info("eval %s: %s -> %s", name, metrics, path)
  return record


def latent_norms(latents: np.ndarray) -> np.ndarray:
  """Euclidean norm of each latent, [N, ...] -> [N]."""
  return np.linalg.norm(latents.reshape(len(latents), -1), axis=-1)


def real_max_norm(norm_tails: dict) -> float:
  """The largest real latent norm of a record's `sw2.norms` (`_norm_tails`: the quantile 1.0)."""
  return norm_tails["real"][norm_tails["quantiles"].index(1.0)]


def _norm_tails(generated: np.ndarray, real: np.ndarray,
                quantiles: tuple[float, ...] = (0.5, 0.9, 0.99, 0.999, 1.0)) -> dict:
  """Quantiles of the Euclidean norms of generated and real latents ([N, ...] each; the quantile 1.0,
  the maximum, must be among them) and how many generated latents lie beyond the largest real norm:
  where SW2's far samples are."""
  generated_norms, real_norms = latent_norms(generated), latent_norms(real)
  return {"quantiles": list(quantiles),
          "generated": np.quantile(generated_norms, quantiles).tolist(),
          "real": np.quantile(real_norms, quantiles).tolist(),
          "generated_beyond_real_max": int(np.sum(generated_norms > real_norms.max()))}


def _fid(config, decode, samples_store, latents, reference, recon_latents, split_bank, network_hashes,
         timer):
  """FID of decode(latents) and of decode(recon_latents) (z0 of the first reference images) against the
  reference images' statistics: (metrics, record fields, the chunk stores of the features)."""
  cfg = config.eval
  variables = inception_weights.load_inception_params(cfg.inception_weights)
  split, batch = cfg.reference_split, cfg.inception_batch_size
  inception_settings = {"inception_weights": inception_weights.weights_id(cfg.inception_weights),
                        "batch_size": batch, "quantize": True, "chunk": cfg.chunk_size}
  with timer("reference_statistics"):
    reference_stats = fid.reference_stats(
        dataset_id(config), split, lambda: reference, cfg.cache_dir, num_images=len(reference),
        variables=variables, batch_size=batch, progress="Inception: real images", chunk=cfg.chunk_size)
  # The samples' features live with their latents; the reconstructions' in the shared statistics cache,
  # keyed by what they depend on (VAE, bank, images), so every row on this VAE finds them.
  stores = {"sample_features": chunks.ChunkStore.keyed(samples_store.directory, "inception",
                                                       inception_settings)}
  num_recon = len(recon_latents)
  stores["reconstruction_features"] = chunks.ChunkStore.keyed(
      os.path.join(cfg.cache_dir or fid.default_stats_dir(), "reconstructions"),
      f"{dataset_id(config)}_{split}_n{num_recon}",
      {"dataset": dataset_id(config), "split": split, "num_images": num_recon,
       "vae_sha256": network_hashes["vae_sha256"], "posterior_bank_sha256": split_bank.sha256,
       **inception_settings})
  metrics = {}
  for key, store, source, label in (("fid", stores["sample_features"], latents, "generated"),
                                    ("recon_fid", stores["reconstruction_features"], recon_latents,
                                     "reconstructed")):
    with timer(f"{key}_features"):
      progress = f"Inception: {label} images"
      features = fid.inception_feature_chunks(
          store, variables, lambda start, stop: decode(source[start:stop]), len(source), batch, cfg.chunk_size,
          progress=progress, label=progress)
    with timer(key):
      metrics[key] = fid.fid_from_stats(fid.FeatureStats.from_features(features), reference_stats)
  reference_desc = (f"the Inception statistics of the first {len(reference)} {split} images (cached per "
                    "data set, split and count)")
  fields = {
      "fid": {"compared": f"Inception features of the {len(latents)} decoded samples against {reference_desc}",
              "num_generated": int(len(latents)), "num_reference": int(len(reference))},
      "recon_fid": {"compared": (f"Inception features of decode(z0) of the first {num_recon} {split} "
                                 f"images (z0 as for SW2, eps from the posterior_{split} bank) against "
                                 f"{reference_desc}"),
                    "num_images": num_recon, "vae_sha256": network_hashes["vae_sha256"],
                    "posterior_bank_sha256": split_bank.sha256},
      "inception": {"weights": inception_settings["inception_weights"], "batch_size": batch,
                    "quantize": True},
  }
  return metrics, fields, stores


@functools.partial(jax.jit, static_argnames=("schedule", "score_net", "gate"))
def _target_profile(key, mean, logvar, times, score_params, gate_params, *, schedule, score_net, gate):
  """diagnostics.posterior_target_profile of the trained networks, parameters as arguments (one
  compilation per network and shape for the process)."""
  eps_fn = lambda z, t: score_net.apply(score_params, z, t)
  gate_fn = None if gate is None else (lambda z, t: gate.apply(gate_params, z, t))
  return diagnostics.posterior_target_profile(key, mean, logvar, schedule, times, eps_fn=eps_fn,
                                              gate_fn=gate_fn)


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
  profile = jax.device_get(_target_profile(
      jax.random.PRNGKey(config.seed + 11), mean, logvar, times, networks.score_params,
      networks.gate_params, schedule=schedule, score_net=networks.score_net, gate=networks.gate))
  figures["targets"] = plots.plot_target_profile(
      times, {k: v for k, v in profile.items() if k != "gate"}, os.path.join(out_dir, f"{name}_targets.png"),
      title=f"score targets on {len(mean)} real posteriors; network: {sample_cfg.score_source}")
  if "gate" in profile:
    figures["gate"] = plots.plot_gate(times, profile["gate"], os.path.join(out_dir, f"{name}_gate.png"))
  logs = training_logs(config, workdir)
  if logs:
    figures["training_curves"] = plots.plot_training_curves(logs, os.path.join(out_dir, "training_curves.png"))
  return figures
