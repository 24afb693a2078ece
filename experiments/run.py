"""Entry point: `python -m experiments.run --config=configs/<name>.py --workdir=DIR [--config.key=value]`.

Runs the stages that `config.stages` names, in order. Stages compose library functions; no maths here.
"""

from __future__ import annotations

import os

from absl import app, flags, logging
from ml_collections import config_flags

from cgdiff import records
from experiments import exact_field

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and figures.")
flags.mark_flags_as_required(["config", "workdir"])

STAGES = {"exact_field": exact_field.run}


def run_stages(config, workdir: str) -> None:
  unknown = [s for s in config.stages if s not in STAGES]
  if unknown:
    raise ValueError(f"unknown stage(s) {unknown}; expected some of {sorted(STAGES)}.")
  os.makedirs(workdir, exist_ok=True)
  logging.info("cgdiff at commit %s", records.git_commit())  # fixed now, before any stage runs
  for stage in config.stages:
    logging.info("stage %s -> %s", stage, workdir)
    STAGES[stage](config, workdir)


def main(argv):
  del argv
  run_stages(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
