"""One finished run's training, from its stages' committed logs (<stage>/metrics.jsonl of the run and of
the VAE it shares): each logged quantity's first, step-1,000 and final value, and the end of training as
the results' training table shows it.

Final: the mean of the last LAST_INTERVALS logged intervals. For a score network trained on a target
whose conditional mean given z_t is eps_LSI (every target here but 001's prior CSEM), score_loss -
target_excess_over_lsi estimates the network's own mean squared distance to the LSI target (MATH.md: the
cross term has mean zero).
"""

from __future__ import annotations

import statistics
from typing import Any

from cgdiff import score_targets
from cgdiff.train import writers
from experiments import program_runs

# The final loss is the mean of this many logged intervals (the last 1,100 steps at log_every = 100):
# one interval's mean over 100 batches still moves by a few per cent.
LAST_INTERVALS = 11
# Logged quantities reported, where a stage logs them.
KEYS = ("loss", "score_loss", "target_excess_over_lsi", "reconstruction", "kl", "posterior_logvar_mean",
        "gate_mean", "grad_norm")
# The end of training, by the part of the model that logs it: the autoencoder (stage `vae` or `cotrain`)
# and the score network (`ldm` or `cotrain`).
VAE_KEYS = ("reconstruction", "kl", "posterior_logvar_mean")
SCORE_KEYS = ("score_loss", "target_excess_over_lsi")


def training_summary(metrics: list[dict[str, Any]], lsi_mean_target: bool = True) -> dict[str, Any]:
  """First, step-1,000 and final (mean of the last LAST_INTERVALS) value of each of KEYS, the number of
  non-finite steps and the median steps/s of one stage's metrics.jsonl records; with lsi_mean_target (a
  target whose conditional mean is eps_LSI), the network's distance to the LSI target at the end."""
  if not metrics:
    raise ValueError("no logged intervals")
  last = metrics[-LAST_INTERVALS:]
  # The interval that holds step 1,000 (a log_every over 1,000 would skip it: the first one after).
  at_1000 = next((m for m in metrics if m["step"] >= 1000), metrics[-1])
  out: dict[str, Any] = {"steps": metrics[-1]["step"], "intervals": len(metrics),
                         "step_1000_logged_at": at_1000["step"],
                         "nonfinite": sum(m.get("nonfinite", 0.0) for m in metrics),
                         "median_steps_per_sec": statistics.median(m["steps_per_sec"] for m in metrics
                                                                   if m.get("steps_per_sec"))}
  for key in KEYS:
    if key in metrics[0]:
      out[key] = {"first": metrics[0][key], "step_1000": at_1000[key],
                  "final": statistics.fmean(m[key] for m in last)}
  if lsi_mean_target and "target_excess_over_lsi" in out and "score_loss" in out:
    out["net_to_lsi_final"] = out["score_loss"]["final"] - out["target_excess_over_lsi"]["final"]
  return out


def run_training(run: program_runs.Run) -> dict[str, dict[str, Any]]:
  """{stage, or '<vae_home>/<stage>' for the shared VAE's: training_summary} of each committed stage log
  of the run, its own stages first."""
  # 001's prior CSEM, an LDM target, has the diffused Gaussian fit's score, not eps_LSI, as its conditional
  # mean; co-training's score targets (LSI, Tweedie) all have eps_LSI.
  prior_ldm = score_targets.get(run.row.get_config().ldm.target).needs_prior
  return {home.label + stage: training_summary(writers.read_metrics(path),
                                               lsi_mean_target=not (stage == "ldm" and prior_ldm))
          for home in run.homes() for stage, path in program_runs.stage_files(home.committed).items()}


def end_of_training(training: dict[str, dict[str, Any]]) -> dict[str, float | None]:
  """The final VAE_KEYS of the stage that trained the run's autoencoder (its own or the shared one), the
  final SCORE_KEYS of its own score network's stage, and that network's distance to the LSI target
  ('net_to_lsi'; None where the target's conditional mean is not eps_LSI). `training`: run_training's."""
  own = [summary for label, summary in training.items() if "/" not in label]
  vae = next((summary for summary in training.values() if "posterior_logvar_mean" in summary), None)
  score = next((summary for summary in own if "score_loss" in summary), None)
  if vae is None or score is None:
    raise ValueError(f"no {'autoencoder' if vae is None else 'score network'} log among {sorted(training)}")
  return ({key: vae[key]["final"] for key in VAE_KEYS} | {key: score[key]["final"] for key in SCORE_KEYS}
          | {"net_to_lsi": score.get("net_to_lsi_final")})
