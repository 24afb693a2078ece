"""Stage `sample`: latents from a trained score network with a chosen sampler, decoded to images.

Writes samples/<name>.npz (latents, and images for image data), an 8x8 grid PNG (images) or a 2-D
scatter against exact samples with SW2 (the toy), and samples/<name>.json with the run record.
"""

from __future__ import annotations

import os
import time

import jax
import ml_collections
import numpy as np
from absl import logging

from cgdiff import plots, records, samplers, targets
from cgdiff.metrics import sw2
from experiments import common


def trained_networks(config: ml_collections.ConfigDict, workdir: str):
  """(VAE or None, its params, score network, its EMA params, latent shape) for config.sample.score_source.

  'ldm': the `ldm` stage's network on the VAE of config.ldm.vae_source (none for the 2-D toy);
  'cotrain': both networks from the one `cotrain` checkpoint.
  """
  source = config.sample.score_source
  toy = config.data.name == common.TOY
  if source == "cotrain":
    if toy:
      raise ValueError("the 2-D toy has no VAE to co-train; sample it with score_source 'ldm'.")
    vae, net, params = common.trained_cotrain(config, workdir, config.data.image_shape)
    return vae, params["vae"], net, params["score"], common.latent_shape_of(vae, config.data.image_shape)
  if source != "ldm":
    raise ValueError(f"unknown score source {source!r}; expected 'ldm' or 'cotrain'.")
  vae, vae_params, latent_shape = None, None, (2,)
  if not toy:
    vae, vae_params = common.trained_vae(config, workdir, config.ldm.vae_source, config.data.image_shape)
    latent_shape = common.latent_shape_of(vae, config.data.image_shape)
  net, _, params = common.init_ldm(config, latent_shape, abstract=True)
  params = common.restore_ema_params(params, config.ldm.training, common.stage_dir(workdir, "ldm"))
  return vae, vae_params, net, params["score"], latent_shape


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  cfg = config.sample
  toy = config.data.name == common.TOY
  vae, vae_params, net, score_params, latent_shape = trained_networks(config, workdir)
  schedule = common.schedule(config)

  def score_fn(z, t):  # s = -eps_hat / sigma (MATH.md section 2)
    sigma = schedule.sigma(t).reshape((-1,) + (1,) * (z.ndim - 1))
    return targets.eps_to_score(net.apply(score_params, z, t), sigma)

  run_batch = jax.jit(lambda key: samplers.sample(score_fn, schedule, key, (cfg.batch_size,) + latent_shape,
                                                  method=cfg.method, num_steps=cfg.num_steps))
  key = jax.random.PRNGKey(config.seed + 5)
  start = time.perf_counter()
  latents = []
  for i in range(-(-cfg.num_samples // cfg.batch_size)):
    latents.append(np.asarray(run_batch(jax.random.fold_in(key, i))))
  latents = np.concatenate(latents)[:cfg.num_samples]
  if not np.all(np.isfinite(latents)):
    raise FloatingPointError(f"sampler {cfg.method} produced non-finite latents.")
  seconds = time.perf_counter() - start
  name = f"{cfg.score_source}_{cfg.method}_{cfg.num_steps}"
  out_dir = common.stage_dir(workdir, "samples")
  os.makedirs(out_dir, exist_ok=True)
  fields = {"stage": "sample", "score_source": cfg.score_source, "method": cfg.method,
            "num_steps": cfg.num_steps, "nfe": samplers.nfe(cfg.method, cfg.num_steps),
            "num_samples": int(latents.shape[0]), "wall_seconds": seconds}
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
    decode = jax.jit(lambda z: vae.apply(vae_params, z, method=vae.decode))
    images = np.concatenate([np.asarray(decode(latents[i:i + 256])) for i in range(0, len(latents), 256)])
    np.savez(os.path.join(out_dir, f"{name}.npz"), latents=latents,
             images=np.clip(np.round((images + 1) * 127.5), 0, 255).astype(np.uint8))
    fields["figure"] = plots.plot_image_grid(
        images, os.path.join(out_dir, f"{name}.png"),
        title=f"{config.data.name}: {cfg.score_source}, {cfg.method} x {cfg.num_steps} (NFE {fields['nfe']})")
  record = records.run_record(config, **fields)
  records.write_json(os.path.join(out_dir, f"{name}.json"), record)
  logging.info("sampled %d latents with %s x %d in %.1f s -> %s", latents.shape[0], cfg.method,
               cfg.num_steps, seconds, out_dir)
  return record
