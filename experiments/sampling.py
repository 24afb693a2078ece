"""Stage `sample`: latents from a trained score network with a chosen sampler, decoded to images.

Writes samples/<name>.npz (latents, and images for image data), an 8x8 grid PNG (images) or a 2-D
scatter against exact samples with SW2 (the toy), and samples/<name>.json with the run record.
"""

from __future__ import annotations

import os
import time
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
import tqdm
from absl import logging

from cgdiff import plots, records, samplers, targets
from cgdiff.metrics import sw2
from experiments import common


class TrainedNetworks(NamedTuple):
  """The networks a score source provides (EMA parameters); the VAE and gate fields may be None."""
  vae: Any
  vae_params: Any
  score_net: Any
  score_params: Any
  gate: Any
  gate_params: Any
  latent_shape: tuple[int, ...]
  training_step: int  # the step of the checkpoint the score network comes from


def trained_networks(config: ml_collections.ConfigDict, workdir: str) -> TrainedNetworks:
  """The networks of config.sample.score_source.

  'ldm': the `ldm` stage's score network (and gate, for the critic-gate targets) on the VAE of
  config.ldm.vae_source (no VAE for the 2-D toy); 'cotrain': both networks from the `cotrain` checkpoint.
  """
  source = config.sample.score_source
  toy = config.data.name == common.TOY
  if source == "cotrain":
    if toy:
      raise ValueError("the 2-D toy has no VAE to co-train; sample it with score_source 'ldm'.")
    vae, net, params = common.trained_cotrain(config, workdir, config.data.image_shape)
    return TrainedNetworks(vae, params["vae"], net, params["score"], None, None,
                           common.latent_shape_of(vae, config.data.image_shape),
                           common.latest_step(workdir, "cotrain"))
  if source != "ldm":
    raise ValueError(f"unknown score source {source!r}; expected 'ldm' or 'cotrain'.")
  vae, vae_params, latent_shape = None, None, (2,)
  if not toy:
    vae, vae_params = common.trained_vae(config, workdir, config.ldm.vae_source, config.data.image_shape)
    latent_shape = common.latent_shape_of(vae, config.data.image_shape)
  net, gate, params = common.init_ldm(config, latent_shape, abstract=True)
  params = common.restore_ema_params(config, workdir, "ldm", params)
  return TrainedNetworks(vae, vae_params, net, params["score"], gate, params.get("gate"), latent_shape,
                         common.latest_step(workdir, "ldm"))


def draw_latents(config: ml_collections.ConfigDict, networks: TrainedNetworks, *, method: str,
                 num_steps: int, num_samples: int, batch_size: int, key: jax.Array,
                 progress: bool = False) -> np.ndarray:
  """[num_samples, *latent_shape] latents from the score network with `method` x `num_steps`, drawn
  in batches of `batch_size` (one compiled sampler; batch i uses fold_in(key, i))."""
  schedule = common.schedule(config)
  net, params = networks.score_net, networks.score_params

  def score_fn(z, t):  # s = -eps_hat / sigma (MATH.md section 2)
    sigma = schedule.sigma(t).reshape((-1,) + (1,) * (z.ndim - 1))
    return targets.eps_to_score(net.apply(params, z, t), sigma)

  run_batch = jax.jit(lambda key: samplers.sample(score_fn, schedule, key,
                                                  (batch_size,) + networks.latent_shape,
                                                  method=method, num_steps=num_steps))
  batches = range(-(-num_samples // batch_size))
  if progress:
    batches = tqdm.tqdm(batches, desc=f"{method} x {num_steps}", unit="batch")
  latents = np.concatenate([np.asarray(run_batch(jax.random.fold_in(key, i))) for i in batches])
  latents = latents[:num_samples]
  if not np.all(np.isfinite(latents)):
    raise FloatingPointError(f"sampler {method} produced non-finite latents.")
  return latents


def decode(networks: TrainedNetworks, latents: np.ndarray, batch_size: int = 256) -> np.ndarray:
  """Images in [-1, 1] (float32, the decoder's raw output clipped) of latents [N, h, w, C]."""
  vae, params = networks.vae, networks.vae_params
  decode_fn = jax.jit(lambda z: vae.apply(params, z, method=vae.decode))
  images = np.concatenate([np.asarray(decode_fn(latents[i:i + batch_size]))
                           for i in range(0, len(latents), batch_size)])
  return np.clip(images, -1.0, 1.0)


def to_uint8(images: np.ndarray) -> np.ndarray:
  """[-1, 1] floats -> uint8 pixels, as a PNG would store them."""
  return np.clip(np.round((images + 1) * 127.5), 0, 255).astype(np.uint8)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  cfg = config.sample
  toy = config.data.name == common.TOY
  networks = trained_networks(config, workdir)
  start = time.perf_counter()
  latents = draw_latents(config, networks, method=cfg.method, num_steps=cfg.num_steps,
                         num_samples=cfg.num_samples, batch_size=cfg.batch_size,
                         key=jax.random.PRNGKey(config.seed + 5))
  seconds = time.perf_counter() - start
  name = f"{cfg.score_source}_{cfg.method}_{cfg.num_steps}"
  out_dir = common.stage_dir(workdir, "samples")
  os.makedirs(out_dir, exist_ok=True)
  fields = {"stage": "sample", "score_source": cfg.score_source, "method": cfg.method,
            "num_steps": cfg.num_steps, "nfe": samplers.nfe(cfg.method, cfg.num_steps),
            "num_samples": int(latents.shape[0]), "training_step": networks.training_step,
            "wall_seconds": seconds}
  if toy:
    means, logvars, log_weights = common.toy_field(config)
    _, exact = targets.sample_gaussian_field(jax.random.PRNGKey(config.seed + 6), means, logvars,
                                             log_weights, latents.shape[0])
    exact = np.asarray(exact)
    bank = sw2.projection_bank(2, 128, seed=config.seed)
    fields["sw2_squared_vs_exact"] = sw2.sliced_wasserstein2(latents, exact, bank)
    fields["figure"] = plots.plot_samples_2d(exact, {name: latents}, os.path.join(out_dir, f"{name}.png"))
    np.savez(os.path.join(out_dir, f"{name}.npz"), latents=latents)
  else:
    images = decode(networks, latents)
    np.savez(os.path.join(out_dir, f"{name}.npz"), latents=latents, images=to_uint8(images))
    fields["figure"] = plots.plot_image_grid(
        images, os.path.join(out_dir, f"{name}.png"),
        title=f"{config.data.name}: {cfg.score_source}, {cfg.method} x {cfg.num_steps} (NFE {fields['nfe']})")
  record = records.run_record(config, **fields)
  records.write_json(os.path.join(out_dir, f"{name}.json"), record)
  logging.info("sampled %d latents with %s x %d in %.1f s -> %s", latents.shape[0], cfg.method,
               cfg.num_steps, seconds, out_dir)
  return record
