"""The stages of experiments.run, by name, and what runs them.

A training stage (common.TRAINING_STAGES) trains with cgdiff.train.loop from its config group's `training`
settings (pmapped over the devices, checkpointed); the settings its checkpoints depend on are
common.STAGE_GROUPS[name].
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import ml_collections

from experiments import common, diagnosis, evaluation, exact_field, sampling, training


class Stage(NamedTuple):
  run: Callable[[ml_collections.ConfigDict, str], Any]  # (config, workdir) -> record or None


STAGES: dict[str, Stage] = {
    "exact_field": Stage(exact_field.run),
    "vae": Stage(training.run_vae),
    "stats": Stage(training.run_stats),
    "ldm": Stage(training.run_ldm),
    "cotrain": Stage(training.run_cotrain),
    "sample": Stage(sampling.run),
    "eval": Stage(evaluation.run),
    "diagnose": Stage(diagnosis.run),
}


def training_stages(stages) -> tuple[str, ...]:
  """The stages among `stages` that train, in order (names that are no stage are left to validation)."""
  return tuple(stage for stage in stages if stage in common.TRAINING_STAGES)
