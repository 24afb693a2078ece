"""Stage `sample`: latents from a trained score network with a chosen sampler, decoded to images.

Writes samples/<name>.npz (latents, and images for image data), an 8x8 grid PNG (images) or a 2-D
scatter against exact samples with SW2 (the toy), and samples/<name>.json with the run record.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any, Callable, NamedTuple

import jax
import ml_collections
import numpy as np
from absl import logging

from cgdiff import records, samplers
from experiments import common, latent_space


SCORE_SOURCES = ("ldm", "cotrain")  # the stages that train a score network (config.sample.score_source)


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
  space = latent_space.of(config)
  if source == "cotrain":
    if not space.has_vae:
      raise ValueError(f"{config.data.name} has no VAE to co-train; sample it with score_source 'ldm'.")
    vae, net, params = common.trained_cotrain(config, workdir, config.data.image_shape)
    return TrainedNetworks(vae, params["vae"], net, params["score"], None, None, space.latent_shape(vae),
                           common.latest_step(config, workdir, "cotrain"))
  if source != "ldm":
    raise ValueError(f"unknown score source {source!r}; expected one of {SCORE_SOURCES}.")
  vae, vae_params = None, None
  if space.has_vae:
    vae, vae_params = common.trained_vae(config, workdir, config.ldm.vae_source, config.data.image_shape)
  latent_shape = space.latent_shape(vae)
  net, gate, params = common.init_ldm(config, latent_shape, abstract=True)
  params = common.restore_ema_params(config, workdir, "ldm", params)
  return TrainedNetworks(vae, vae_params, net, params["score"], gate, params.get("gate"), latent_shape,
                         common.latest_step(config, workdir, "ldm"))


BatchSampler = Callable[[jax.Array, Any], jax.Array]


@functools.partial(jax.jit, static_argnames=("net", "schedule", "method", "num_steps", "shape"))
def _sample_batch(params, key, initial, *, net, schedule, method, num_steps, shape):
  """samplers.sample with the score network's parameters as an argument: one compilation per network,
  sampler and shape for the whole process (modules and schedules compare by value)."""
  return samplers.sample(samplers.score_from_eps(net.apply, params, schedule), schedule, key, shape,
                         method=method, num_steps=num_steps, z_init=initial)


def batch_sampler(config: ml_collections.ConfigDict, networks: TrainedNetworks, *, method: str,
                  num_steps: int, batch_size: int) -> BatchSampler:
  """The sampler of [batch_size, *latent_shape] latents: (key, initial) -> latents, where `initial` is
  the prior noise z_T [batch_size, *latent_shape] to start from, or None to draw it from `key` (the SDE
  samplers' path noise always comes from `key`)."""
  static = {"net": networks.score_net, "schedule": common.schedule(config), "method": method,
            "num_steps": num_steps, "shape": (batch_size,) + tuple(networks.latent_shape)}
  return lambda key, initial=None: _sample_batch(networks.score_params, key, initial, **static)


def sample_rows(run_batch: BatchSampler, key: jax.Array, batch_size: int, start: int, stop: int,
                initial: np.ndarray | None = None) -> np.ndarray:
  """Rows [start, stop) (start a multiple of batch_size) of the latents whose batch i, rows
  [i B, (i + 1) B), `run_batch` draws with key fold_in(key, i), starting from initial[i B:(i + 1) B] when
  `initial` [>= stop, *latent_shape] is given (the last batch padded with zeros, its extra rows dropped).
  Any chunking of [0, N) gives the same rows as one call."""
  if start % batch_size:
    raise ValueError(f"start must be a multiple of batch_size={batch_size}, got {start}.")
  if initial is not None and len(initial) < stop:
    raise ValueError(f"initial noise has {len(initial)} rows, fewer than the {stop} asked for.")
  out = []
  for i in range(start // batch_size, -(-stop // batch_size)):
    z = None
    if initial is not None:
      z = np.asarray(initial[i * batch_size:(i + 1) * batch_size], np.float32)
      z = np.concatenate([z, np.zeros((batch_size - len(z),) + z.shape[1:], np.float32)])
    out.append(np.asarray(run_batch(jax.random.fold_in(key, i), z)))
  latents = np.concatenate(out)[:stop - start]
  if not np.all(np.isfinite(latents)):
    raise FloatingPointError(f"the sampler produced non-finite latents in rows {start}..{stop}.")
  return latents


def draw_latents(config: ml_collections.ConfigDict, networks: TrainedNetworks, *, method: str,
                 num_steps: int, num_samples: int, batch_size: int, key: jax.Array,
                 initial: np.ndarray | None = None) -> np.ndarray:
  """[num_samples, *latent_shape] latents from the score network with `method` x `num_steps`, drawn
  in batches of `batch_size` (one compiled sampler; batch i uses fold_in(key, i)), from the prior noise
  `initial` [num_samples, *latent_shape] when given (else drawn from the batch's key)."""
  run_batch = batch_sampler(config, networks, method=method, num_steps=num_steps, batch_size=batch_size)
  return sample_rows(run_batch, key, batch_size, 0, num_samples, initial)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  cfg = config.sample
  networks = trained_networks(config, workdir)
  start = time.perf_counter()
  latents = draw_latents(config, networks, method=cfg.method, num_steps=cfg.num_steps,
                         num_samples=cfg.num_samples, batch_size=cfg.batch_size,
                         key=jax.random.PRNGKey(config.seed + 5))
  seconds = time.perf_counter() - start
  name = f"{cfg.score_source}_{cfg.method}_{cfg.num_steps}"
  out_dir = common.stage_dir(config, workdir, "samples")
  os.makedirs(out_dir, exist_ok=True)
  fields = {"stage": "sample", "score_source": cfg.score_source, "method": cfg.method,
            "num_steps": cfg.num_steps, "nfe": samplers.nfe(cfg.method, cfg.num_steps),
            "num_samples": int(latents.shape[0]), "training_step": networks.training_step,
            "wall_seconds": seconds}
  fields.update(latent_space.of(config).write_samples(
      out_dir, name, latents, vae=networks.vae, vae_params=networks.vae_params,
      title=f"{cfg.score_source}, {cfg.method} x {cfg.num_steps} (NFE {fields['nfe']})"))
  record = records.run_record(config, **fields)
  records.write_json(os.path.join(out_dir, f"{name}.json"), record)
  logging.info("sampled %d latents with %s x %d in %.1f s -> %s", latents.shape[0], cfg.method,
               cfg.num_steps, seconds, out_dir)
  return record
