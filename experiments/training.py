"""Stages that train: `vae` (001 section 3.1), `stats` (001 section 5.3), `ldm` (baseline / LSI /
critic-gate latent diffusion, MATH.md section 4) and `cotrain` (002 Algorithm 1).

A training stage first checks its stored settings against the config (common.check_stage_settings:
a resumed run must be the run the config asks for), then reads what it trains on (which checks the
stages it reads), then stores its settings and trains.
"""

from __future__ import annotations

import functools

import jax
import ml_collections
import numpy as np
from absl import logging

from cgdiff import latent_stats, objectives, score_targets, targets
from cgdiff.train import train
from experiments import common, latent_space


def run_vae(config: ml_collections.ConfigDict, workdir: str) -> None:
  common.check_stage_settings(config, workdir, "vae", training=True)
  images = common.train_images(config)
  common.record_stage_settings(config, workdir, "vae")
  module, params = common.init_vae(config, jax.random.PRNGKey(config.seed), images.shape[1:])
  loss_fn = functools.partial(
      objectives.vae_loss,
      encode_fn=lambda p, x: module.apply(p, x, method=module.encode),
      decode_fn=lambda p, z: module.apply(p, z, method=module.decode),
      kl=config.vae.kl, kl_weight=config.vae.kl_weight)
  optimizer, loop = common.loop_config(config.vae.training)
  train(loss_fn, params, common.batch_fn(images, config.vae.training.batch_size, config.seed),
        optimizer=optimizer, loop=loop, workdir=common.stage_dir(config, workdir, "vae"),
        key=jax.random.PRNGKey(config.seed + 1))


def run_stats(config: ml_collections.ConfigDict, workdir: str) -> latent_stats.LatentStats:
  """Mean and variance of z0 ~ q(z0 | x) over the training set (stochastic samples, as 001 says)."""
  mean, logvar = common.encoded_training_set(config, workdir, config.stats.vae_source)
  stats = latent_stats.LatentStats(shape=mean.shape[1:])
  rng = np.random.default_rng(config.seed)
  for start in range(0, mean.shape[0], 1000):
    m, lv = mean[start:start + 1000], logvar[start:start + 1000]
    stats.update(targets.reparameterize(m, lv, rng.standard_normal(m.shape, dtype=np.float32)))
  path = stats.save(common.stage_dir(config, workdir, "stats"))
  logging.info("latent stats of %d samples -> %s (mean variance %.3g)", stats.count, path,
               stats.variance().mean())
  return stats


def ldm_loss_fn(config: ml_collections.ConfigDict, workdir: str, latent_shape):
  """(loss_fn, initial params) of the latent diffusion objective config.ldm.target."""
  score_net, gate, params = common.init_ldm(config, latent_shape)
  prior = None
  if score_targets.get(config.ldm.target).needs_prior:
    prior = latent_stats.LatentStats.load(common.stage_dir(config, workdir, "stats")).as_prior()
  loss_fn = objectives.diffusion_loss_fn(config.ldm.target, eps_fn=score_net.apply,
                                         schedule=common.schedule(config),
                                         gate_fn=gate.apply if gate else None, prior=prior)
  return loss_fn, params


def run_ldm(config: ml_collections.ConfigDict, workdir: str) -> None:
  common.check_stage_settings(config, workdir, "ldm", training=True)
  posterior = common.posterior_dataset(config, workdir, config.ldm.vae_source)
  loss_fn, params = ldm_loss_fn(config, workdir, posterior[0].shape[1:])
  common.record_stage_settings(config, workdir, "ldm")
  optimizer, loop = common.loop_config(config.ldm.training)
  train(loss_fn, params, common.batch_fn(posterior, config.ldm.training.batch_size, config.seed),
        optimizer=optimizer, loop=loop, workdir=common.stage_dir(config, workdir, "ldm"),
        key=jax.random.PRNGKey(config.seed + 3))


def run_cotrain(config: ml_collections.ConfigDict, workdir: str) -> None:
  common.check_stage_settings(config, workdir, "cotrain", training=True)
  images = common.train_images(config)
  common.record_stage_settings(config, workdir, "cotrain")
  key_vae, key_score = jax.random.split(jax.random.PRNGKey(config.seed))
  vae, vae_params = common.init_vae(config, key_vae, images.shape[1:])
  score_net, score_params = common.init_score_net(
      config, key_score, latent_space.of(config).latent_shape(vae, images.shape[1:]))
  cfg = config.cotrain
  loss_fn = functools.partial(
      objectives.cotrain_loss,
      encode_fn=lambda p, x: vae.apply(p, x, method=vae.encode),
      decode_fn=lambda p, z: vae.apply(p, z, method=vae.decode),
      eps_fn=score_net.apply, schedule=common.schedule(config), kl=cfg.kl, kl_weight=cfg.kl_weight,
      score_target=cfg.score_target, score_weight=cfg.score_weight,
      stiffness_weight=cfg.stiffness_weight, encoder_score_gradient=cfg.encoder_score_gradient)
  optimizer, loop = common.loop_config(cfg.training)
  train(loss_fn, {"vae": vae_params, "score": score_params},
        common.batch_fn(images, cfg.training.batch_size, config.seed), optimizer=optimizer, loop=loop,
        workdir=common.stage_dir(config, workdir, "cotrain"), key=jax.random.PRNGKey(config.seed + 4))
