"""Stage `exact_field`: the core library on a Gaussian field whose score is known exactly.

On 004's 2-D fractal tree (cgdiff.data.toy2d) it measures (1) the conditional variance of the Tweedie,
CSEM and LSI targets given z_t across the whole time range, with the oracle gate, and (2) how well each
sampler, driven by the exact score, reproduces the field (SW2 against exact samples, with the
spread of SW2 between independent exact sets as the floor), at the configured step counts. Writes
exact_field.json and PNGs.
"""

from __future__ import annotations

import os
import time

import jax
import ml_collections
import numpy as np
from absl import logging

from cgdiff import diagnostics, plots, records, samplers, schedules, targets
from cgdiff.data import toy2d
from cgdiff.metrics import sw2


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  cfg = config.exact_field
  means, logvars, log_weights = toy2d.fractal_tree_field(**cfg.field)
  schedule = schedules.make(config.schedule.name, **config.schedule.kwargs)
  key = jax.random.PRNGKey(config.seed)
  key_var, key_ref, key_null, key_sample = jax.random.split(key, 4)

  # (1) Target variances against time, by exact posterior sampling.
  times = schedules.time_grid(schedule, cfg.variance.num_times - 1)
  profile = jax.jit(lambda k: diagnostics.target_variance_profile(
      k, means, logvars, log_weights, schedule, times, num_points=cfg.variance.num_points,
      num_draws=cfg.variance.num_draws))(key_var)
  profile = {name: np.asarray(v) for name, v in profile.items()}
  log_snr = np.asarray(schedule.log_snr(times))

  # (2) Samplers with the exact score against exact samples.
  def score_fn(z, t):
    return targets.gaussian_field_score(z, means, logvars, log_weights, schedule.alpha(t)[:, None],
                                        schedule.sigma(t)[:, None])

  n = cfg.sampling.num_samples
  exact = lambda k: np.asarray(targets.sample_gaussian_field(k, means, logvars, log_weights, n)[1])
  reference = exact(key_ref)
  bank = sw2.projection_bank(2, cfg.sampling.num_projections, seed=config.seed)
  # SW2 between finite sample sets is noisy: the floor is its spread between independent exact sets.
  floor = sw2.floor([exact(k) for k in jax.random.split(key_null, cfg.sampling.num_null_sets)], reference, bank)
  results, shown = [], {}
  for method in cfg.sampling.methods:
    for num_steps in cfg.sampling.steps:
      run_sampler = jax.jit(lambda k: samplers.sample(score_fn, schedule, k, (n, 2), method=method,
                                                      num_steps=num_steps))
      jax.block_until_ready(run_sampler(key_sample))  # compile outside the timing
      start = time.perf_counter()
      z = np.asarray(jax.block_until_ready(run_sampler(key_sample)))
      seconds = time.perf_counter() - start
      distance = sw2.sliced_wasserstein2(z, reference, bank)
      results.append({"method": method, "num_steps": num_steps, "nfe": samplers.nfe(method, num_steps),
                      "sw2_squared": distance, "sw2": float(np.sqrt(distance)), "wall_seconds": seconds})
      logging.info("%-14s %4d steps  NFE %4d  SW2^2 %.2e  (exact-vs-exact %.2e +- %.1e)", method,
                   num_steps, results[-1]["nfe"], distance, floor["mean"], floor["std"])
      if num_steps == cfg.sampling.steps[0]:
        shown[f"{method} @ {num_steps}"] = z

  figures = {
      "target_variance": plots.plot_target_variances(
          log_snr, {k: profile[k] for k in diagnostics.TARGET_NAMES},
          os.path.join(workdir, "target_variance.png"), gate=profile["oracle_gate"],
          title=f"Score-target variance on the fractal tree ({config.schedule.name} schedule)"),
      "samples": plots.plot_samples_2d(reference, shown, os.path.join(workdir, "samples.png")),
  }
  record = records.run_record(
      config, stage="exact_field", schedule=config.schedule.name, num_components=int(means.shape[0]),
      target_variance={"t": np.asarray(times).tolist(), "log_snr": log_snr.tolist(),
                       **{k: v.tolist() for k, v in profile.items()}},
      sampling={"num_samples": n, "num_projections": cfg.sampling.num_projections,
                "sw2_squared_exact_vs_exact": floor, "results": results},
      figures=figures)
  records.write_json(os.path.join(workdir, "exact_field.json"), record)
  return record
