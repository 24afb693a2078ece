"""Stage `diagnose`: what a trained critic-gate (or any) latent diffusion model learnt, on real posteriors.

For config.sample.score_source's networks and the first diagnose.num_posteriors images of
diagnose.split, encoded by the model's VAE (z0 and z_t drawn afresh, seeded):
  gates      diagnostics.gate_profile across diagnose.num_times times, uniform in log-SNR (where the gates
             change: g* goes from 0 to 0.8 within t < 0.1 on a VAE's small posterior variances): the learned gate's
             mean and quantiles against the oracle gate g* = sigma^2 / (sigma^2 + alpha^2 v) and the
             prior gate g_p = sigma^2 / (sigma^2 + alpha^2 v_agg); the critic's distance to LSI and to
             the score of the diffused Gaussian fit N(m_agg, v_agg). (m_agg, v_agg): the `stats` stage's
             latent statistics where the row has them (001's prior-CSEM row: the g_p its target uses),
             else the moment-matched Gaussian of the same posteriors (mean of mu; mean of v + variance
             of mu). MATH.md errata 4: 001's prior-CSEM objective reaches zero loss at g = g_p with the
             critic at that Gaussian's score.
  variances  diagnostics.target_variance_profile on the Gaussian field of the first
             diagnose.field_components of those posteriors (equal weights): Var(target | z_t) of Tweedie,
             CSEM, LSI (its mixture variance, 002 eq. 14's irreducible part) and, with a gate, the
             learned blend of the row's own gated target (config.ldm.target); in eps units
             (sigma^2 Var(score)), what the loss sees.
Writes diagnose/<source>.json and its figures <source>_gates.png, <source>_variances.png.
"""

from __future__ import annotations

import functools
import os
import time

import jax
import ml_collections
import numpy as np
from absl import logging

from cgdiff import diagnostics, latent_stats, plots, records, schedules, score_targets
from experiments import common, latent_space, sampling


def gaussian_fit(mean: np.ndarray, logvar: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(mean, logvar) [h, w, C] of the moment-matched Gaussian of the mixture of N(mean_i, exp(logvar_i))
  [N, h, w, C] with equal weights, element by element: m = E mu, v = E v_i + Var(mu)."""
  m = mean.mean(axis=0, dtype=np.float64)
  v = np.exp(logvar.astype(np.float64)).mean(axis=0) + mean.var(axis=0, dtype=np.float64)
  return m.astype(np.float32), np.log(v).astype(np.float32)


@functools.partial(jax.jit, static_argnames=("schedule", "score_net", "gate"))
def _gate_profile(key, mean, logvar, times, prior, score_params, gate_params, *, schedule, score_net, gate):
  eps_fn = lambda z, t: score_net.apply(score_params, z, t)
  gate_fn = None if gate is None else (lambda z, t: gate.apply(gate_params, z, t))
  return diagnostics.gate_profile(key, mean, logvar, schedule, times, eps_fn=eps_fn, gate_fn=gate_fn,
                                  prior=prior)


@functools.partial(jax.jit, static_argnames=("schedule", "gate", "blend_target", "num_points", "num_draws"))
def _variance_profile(key, means, logvars, times, prior, gate_params, *, schedule, gate, blend_target, num_points,
                      num_draws):
  log_weights = np.full((means.shape[0],), -np.log(means.shape[0]), np.float32)
  gate_fn = None if gate is None else (lambda z, t: gate.apply(gate_params, z, t))
  return diagnostics.target_variance_profile(key, means, logvars, log_weights, schedule, times,
                                             num_points=num_points, num_draws=num_draws, gate_fn=gate_fn,
                                             blend_target=blend_target, prior=prior)


def reference_gaussian(config: ml_collections.ConfigDict, workdir: str, mean: np.ndarray,
                       logvar: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray], str]:
  """The Gaussian fit the gates and the critic are compared with, and where it comes from."""
  if config.sample.score_source == "ldm" and score_targets.get(config.ldm.target).needs_prior:
    stats = latent_stats.LatentStats.load(common.stage_dir(config, workdir, "stats"))
    return stats.as_prior(), "the latent statistics of the `stats` stage (the prior CSEM's g_p)"
  return gaussian_fit(mean, logvar), f"the moment-matched Gaussian of the {len(mean)} posteriors"


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  if not latent_space.of(config).has_vae:
    raise ValueError("the `diagnose` stage is for image latents; the 2-D toy's `exact_field` stage "
                     "measures the targets on the exact field.")
  cfg = config.diagnose
  start = time.perf_counter()
  networks = sampling.trained_networks(config, workdir)
  images = common.train_images(config, cfg.split)[:cfg.num_posteriors]
  mean, logvar = common.encode_all(networks.vae, networks.vae_params, images)
  prior, prior_source = reference_gaussian(config, workdir, mean, logvar)
  prior = tuple(map(np.asarray, prior))
  schedule = common.schedule(config)
  times = np.asarray(schedules.time_grid(schedule, cfg.num_times - 1))[::-1]  # increasing t
  log_snr = np.asarray(schedule.log_snr(times))
  key_gates, key_field = jax.random.split(jax.random.PRNGKey(config.seed + 12))
  statics = {"schedule": schedule, "gate": networks.gate}
  gates = jax.device_get(_gate_profile(key_gates, mean, logvar, times, prior,
                                       networks.score_params, networks.gate_params,
                                       score_net=networks.score_net, **statics))
  k = min(cfg.field_components, len(mean))
  # The blend is the row's own gated target: 001's prior-CSEM row blends the prior CSEM (with `prior`). A
  # gate comes only with an `ldm` group; without one there is no blend and the name is not used.
  blend_target = config.ldm.target if networks.gate is not None else "critic_gate"
  variances = jax.device_get(_variance_profile(key_field, mean[:k], logvar[:k], times, prior,
                                               networks.gate_params, blend_target=blend_target,
                                               num_points=cfg.num_points, num_draws=cfg.num_draws, **statics))
  sigma2 = np.asarray(schedule.sigma(times)) ** 2
  eps_variances = {name: sigma2 * np.asarray(v) for name, v in variances.items() if name != "oracle_gate"}
  source = config.sample.score_source
  out_dir = common.stage_dir(config, workdir, "diagnose")
  label = f"{source} at step {networks.training_step}"
  figures = {
      "gates": plots.plot_gate_references(log_snr, gates, os.path.join(out_dir, f"{source}_gates.png"),
                                          title=f"{config.data.name}: {label}"),
      "variances": plots.plot_target_variances(
          log_snr, eps_variances, os.path.join(out_dir, f"{source}_variances.png"),
          gate=np.asarray(variances["oracle_gate"]), ylabel="mean element-wise sigma^2 Var(score | z_t)",
          floor=1e-6,  # LSI's mixture variance is 0 once z_t singles out its component
          title=f"targets on a field of {k} {cfg.split} posteriors; {label}"),
  }
  record = records.run_record(
      config, stage="diagnose", score_source=source, training_step=networks.training_step,
      num_posteriors=int(len(mean)), split=cfg.split, field_components=k, times=times.tolist(),
      log_snr=log_snr.tolist(),
      reference_gaussian=prior_source,
      gates={name: np.asarray(v).tolist() for name, v in gates.items()},
      eps_variances={name: v.tolist() for name, v in eps_variances.items()},
      figures=records.relative_to(out_dir, figures), wall_seconds=time.perf_counter() - start)
  records.write_json(os.path.join(out_dir, f"{source}.json"), record)
  logging.info("diagnosed %s of %s in %.0f s -> %s", source, workdir, record["wall_seconds"], out_dir)
  return record
