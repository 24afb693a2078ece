"""Far latents: are the generated latents that lie beyond the largest real latent norm made by the
sampler's discretisation or by the score network itself?

    python -m experiments.far_latents c --seed 1   # -> <results>/far_latents/c_s1.json and .png
    python -m experiments.far_latents c --seed 1 --fid_only   # adds the FID part to an existing record

For one run of the program that finished on this machine (its checkpoints and its eval sample store are
here): the rows of the prior bank whose eval latents (the record's sampler, e.g. RK4 x 10) lie beyond the
largest norm of the real test latents ("far"), and as many other rows drawn at random ("control"), are
integrated again from the same z_T with the same ODE sampler at 1, 2, 4 and 8 times the eval's steps. If the
far latents come back into the real range as the steps grow, they are discretisation error of the eval's
sampler; if they stay far, the learned probability-flow ODE itself carries them there. The run at the
eval's own steps must reproduce the stored latents (checked). Each record lists, per step count, the norm
quantiles of both groups, how many lie beyond the real maximum, and their mean distance to the finest
integration; where each group's z_T norms lie among the bank's (mean percentile; 0.5 for rows drawn
without regard to it); the run's VAE, so that runs on one VAE can be compared row by row; FID without
the far rows against FID without as many random rows (from the eval's stored Inception features); the
figure decodes 8 far rows at each step count.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Sequence

import jax
import numpy as np

from cgdiff import chunks, plots, records, samplers
from cgdiff.metrics import banks, fid, inception_weights
from experiments import (evaluation, fmnist_records, fmnist_rows, fmnist_tables, latent_space, program_runs,
                         sampling)

STEP_FACTORS = (1, 2, 4, 8)
BATCH_SIZE = 64
QUANTILES = (0.5, 0.9, 1.0)
FID_DRAWS = 5  # random removals of as many rows as are far: FID's spread under such a removal


def out_path(results: str, row: str, seed: int) -> str:
  """<results>/far_latents/<row>_s<seed>: the record (.json) and figure (.png) of one run, without suffix."""
  return os.path.join(results, "far_latents", f"{row}_s{seed}")


def run_config(run: program_runs.Run):
  """The config the program ran `run` with: the row's, at its seed, on its VAE's workdir."""
  config = run.row.get_config()
  config.seed = run.seed
  if run.vae_workdir:
    config.vae_workdir = run.vae_workdir
  return config


def group_summary(latents: np.ndarray, finest: np.ndarray, real_max: float) -> dict:
  """Norm quantiles, the count beyond the real maximum and the mean distance to the finest integration."""
  group_norms = evaluation.latent_norms(latents)
  return {"norm_quantiles": np.quantile(group_norms, QUANTILES).tolist(),
          "beyond_real_max": int(np.sum(group_norms > real_max)),
          "mean_distance_to_finest": float(np.mean(evaluation.latent_norms(latents - finest)))}


def fid_without_far(config, record: dict, far: np.ndarray, seed: int = 0) -> dict:
  """FID of the eval's samples without the `far` rows, beside FID without as many rows drawn at random
  from the others (FID_DRAWS draws), both from the eval's stored Inception features against its cached
  reference statistics: whether the far latents move FID, net of the smaller N (FID's bias grows as N
  falls). FID of all rows must reproduce the record's (checked)."""
  cfg = config.eval
  total = record["num_samples"]
  store = chunks.ChunkStore(record["stores"]["sample_features"])
  try:
    features = store.load("features", total=total, chunk=chunks.round_up(cfg.chunk_size, cfg.inception_batch_size))
  except FileNotFoundError as error:
    raise SystemExit(f"its stored Inception features are not all here: {error}") from None

  def absent():
    raise SystemExit("the reference statistics of its eval are not cached here.")

  reference = fid.reference_stats(
      evaluation.dataset_id(config), cfg.reference_split, absent, cfg.cache_dir,
      num_images=record["fid"]["num_reference"],
      variables=inception_weights.load_inception_params(cfg.inception_weights),
      batch_size=cfg.inception_batch_size)
  fid_of = lambda rows: fid.fid_from_stats(fid.FeatureStats.from_features(features[rows]), reference)
  every = np.arange(total)
  fid_all = fid_of(every)
  if abs(fid_all - record["metrics"]["fid"]) > 1e-6 * record["metrics"]["fid"]:
    raise SystemExit(f"FID from the stored features, {fid_all:.6g}, is not the record's "
                     f"{record['metrics']['fid']:.6g}.")
  others = np.setdiff1d(every, far)
  rng = np.random.default_rng(seed)
  random = [fid_of(np.setdiff1d(every, rng.choice(others, size=len(far), replace=False)))
            for _ in range(FID_DRAWS)]
  return {"all": fid_all, "without_far": fid_of(others), "without_random": random, "removed": int(len(far)),
          "draw_seed": seed}


def study(config, workdir: str, name: str, seed: int = 0) -> tuple[dict, np.ndarray]:
  """The record of the run in `workdir` (trained and evaluated with `config`; `name` names it) and up to
  8 far rows (the farthest) decoded at every step count, [rows x len(STEP_FACTORS), H, W, C], a row's
  step counts next to each other. `seed` draws the control rows."""
  record = program_runs.eval_record(workdir)
  if record is None:
    raise SystemExit(f"{name}: no eval record in {workdir}/eval.")
  method, steps, total = record["sampler"], record["steps"], record["num_samples"]
  if samplers.METHODS[method].stochastic:
    raise SystemExit(f"{name} was evaluated with the stochastic {method}: its latents are not a function "
                     "of z_T alone, so there is no trajectory to integrate again.")
  if "norms" not in record["sw2"]:
    raise SystemExit(f"{name}: its eval record has no latent norms; run its eval stage again first.")
  cfg = config.eval
  store = chunks.ChunkStore(record["stores"]["samples"])
  try:
    stored = store.load("latents", total=total, chunk=chunks.round_up(cfg.chunk_size, cfg.batch_size))
  except FileNotFoundError as error:
    raise SystemExit(f"{name}: its stored latents are not all here: {error}") from None
  prior = banks.noise_bank(cfg.bank_dir, "prior", stored.shape, cfg.bank_seed)
  if prior.sha256 != record["banks"]["prior"]["sha256"]:
    raise SystemExit(f"{name}: the prior bank here ({prior.sha256[:12]}) is not the one its record names.")
  real_max = evaluation.real_max_norm(record["sw2"]["norms"])
  num_sw2 = record["sw2"]["num_samples"]
  far = np.flatnonzero(evaluation.latent_norms(stored[:num_sw2]) > real_max)
  if len(far) == 0:
    raise SystemExit(f"{name}: no generated latent lies beyond the real maximum norm {real_max:.3g}.")
  others = np.setdiff1d(np.arange(num_sw2), far)
  control = np.sort(np.random.default_rng(seed).choice(others, size=min(len(far), len(others)), replace=False))
  rows = np.concatenate([far, control])
  # Where each group's starting noise lies among the bank's: far latents from the prior's own tail?
  prior_norms = evaluation.latent_norms(prior.noise[:num_sw2])
  percentile = lambda group: float(np.mean(np.searchsorted(np.sort(prior_norms), prior_norms[group]) / num_sw2))

  networks = sampling.trained_networks(config, workdir)
  key = jax.random.PRNGKey(0)  # unused by the ODE samplers
  integrated = {}
  for factor in STEP_FACTORS:
    program_runs.log(f"far latents {name}: {len(rows)} rows, {method} x {steps * factor}")
    run_batch = sampling.batch_sampler(config, networks, method=method, num_steps=steps * factor,
                                       batch_size=BATCH_SIZE)
    integrated[factor] = sampling.sample_rows(run_batch, key, BATCH_SIZE, 0, len(rows), prior.noise[rows])
  # The eval's own steps again, in other batches: the same latents up to float32 batching (per-row maths).
  again = np.max(np.abs(integrated[1] - stored[rows]))
  scale = np.max(np.abs(stored[rows]))
  if again > 1e-3 * scale:
    raise SystemExit(f"{name}: {method} x {steps} from the bank does not reproduce the stored latents "
                     f"(max |difference| {again:.3g} against max |latent| {scale:.3g}).")
  finest = integrated[STEP_FACTORS[-1]]
  groups = {"far": slice(0, len(far)), "control": slice(len(far), len(rows))}
  nfe_per_step = record["nfe"] // steps
  by_steps = [{"steps": steps * factor, "nfe": nfe_per_step * steps * factor,
               **{group: group_summary(integrated[factor][part], finest[part], real_max)
                  for group, part in groups.items()}} for factor in STEP_FACTORS]
  space = latent_space.of(config)
  shown = far[np.argsort(-evaluation.latent_norms(stored[far]))[:8]]  # the farthest first
  index = [int(np.flatnonzero(rows == r)[0]) for r in shown]
  # [far row, step count, H, W, C] -> one picture row per far latent, one column per step count.
  images = np.stack([np.asarray(space.decode(networks.vae, networks.vae_params, integrated[f][index]))
                     for f in STEP_FACTORS], axis=1)
  images = images.reshape((-1,) + images.shape[2:])
  fields = {"run": name, "eval_record": {"sampler": method, "steps": steps, "num_samples": total,
                                         "git_commit": record["git_commit"]},
            "real_max_norm": real_max, "num_compared": num_sw2, "far_rows": far.tolist(),
            "control_rows": control.tolist(), "control_seed": seed,
            "vae_sha256": record["networks"]["vae_sha256"],
            "prior_norm_percentile": {"far": percentile(far), "control": percentile(control)},
            "reproduced_max_abs_difference": float(again), "by_steps": by_steps,
            # (An eval without FID, e.g. the tests' tiny ones, has no features to leave rows out of.)
            "fid": fid_without_far(config, record, far, seed) if record["metrics"].get("fid") is not None else None,
            "figure_rows": [int(r) for r in shown]}
  return records.run_record(config, stage="far_latents", **fields), images


def table(record: dict) -> str:
  lines = [f"{record['run']}: {len(record['far_rows'])} of {record['num_compared']} latents beyond the real "
           f"max norm {record['real_max_norm']:.2f} at {record['eval_record']['sampler']} x "
           f"{record['eval_record']['steps']}; as many control rows.",
           "| steps | far: median norm | far: max norm | far: beyond real max | far: distance to finest | "
           "control: max norm | control: beyond real max | control: distance to finest |",
           "| --- |" + " --- |" * 7]
  if record.get("fid"):
    lines[0] += (" FID: all, without the far rows, without as many random rows (mean ± sd of "
                 f"{len(record['fid']['without_random'])} draws): {fmnist_tables.fid_without_far_cell(record)}.")
  for entry in record["by_steps"]:
    far, control = entry["far"], entry["control"]
    lines.append(f"| {entry['steps']} | {far['norm_quantiles'][0]:.2f} | {far['norm_quantiles'][-1]:.2f} | "
                 f"{far['beyond_real_max']} | {far['mean_distance_to_finest']:.3g} | "
                 f"{control['norm_quantiles'][-1]:.2f} | {control['beyond_real_max']} | "
                 f"{control['mean_distance_to_finest']:.3g} |")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("row", choices=sorted(fmnist_rows.BY_NAME))
  parser.add_argument("--seed", type=int, required=True)
  parser.add_argument("--root", default=program_runs.DEFAULT_ROOT)
  parser.add_argument("--results", default=fmnist_records.FMNIST_RESULTS)
  parser.add_argument("--fid_only", action="store_true",
                      help="add the FID comparison to the run's existing record (its far rows) without "
                           "integrating the trajectories again")
  args = parser.parse_args(argv)
  run = program_runs.Run(fmnist_rows.BY_NAME[args.row], args.seed, args.root, args.results)
  if not run.finished_here():
    raise SystemExit(f"{run.name} did not finish on this machine: its checkpoints and samples are not here.")
  out = out_path(args.results, args.row, args.seed)
  if args.fid_only:
    with open(out + ".json") as f:
      record = json.load(f)
    eval_record = program_runs.eval_record(run.workdir)
    if eval_record is None or eval_record["git_commit"] != record["eval_record"]["git_commit"]:
      raise SystemExit(f"{out}.json was made from another eval of {run.name} than the one here.")
    record["fid"] = {**fid_without_far(run_config(run), eval_record, np.asarray(record["far_rows"]),
                                       record["control_seed"]),
                     "git_commit": records.git_commit()}  # the rest of the record is older
    records.write_json(out + ".json", record)
    print(table(record))
    return
  record, images = study(run_config(run), run.workdir, run.name)
  records.write_json(out + ".json", record)
  plots.plot_image_grid(images, out + ".png", nrow=len(images) // len(STEP_FACTORS), ncol=len(STEP_FACTORS),
                        title=f"{run.name}: the farthest latents, {record['eval_record']['sampler']} x "
                              + ", ".join(str(e["steps"]) for e in record["by_steps"]) + " (columns)")
  print(table(record))


if __name__ == "__main__":
  main()
