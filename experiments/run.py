"""Entry point: `python -m experiments.run --config=configs/<name>.py --workdir=DIR [--config.key=value]`.

Runs the stages that `config.stages` names, in order. Stages compose library functions; no maths here.
"""

from __future__ import annotations

import os

from absl import app, flags, logging
from ml_collections import config_flags

from cgdiff import records
from experiments import evaluation, exact_field, sampling, training

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and figures.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() first (multi-host runs; "
                  "the coordinator address and process ids come from the environment / cluster).")
flags.DEFINE_list("stages", None, "Run these stages instead of config.stages, e.g. --stages=eval on a "
                  "trained workdir.")
flags.mark_flags_as_required(["config", "workdir"])

STAGES = {
    "exact_field": exact_field.run,
    "vae": training.run_vae,
    "stats": training.run_stats,
    "ldm": training.run_ldm,
    "cotrain": training.run_cotrain,
    "sample": sampling.run,
    "eval": evaluation.run,
}


def run_stages(config, workdir: str, stages: tuple[str, ...] | None = None) -> None:
  """Runs `stages` (default: config.stages) on `workdir`, in order."""
  stages = tuple(config.stages if stages is None else stages)
  unknown = [s for s in stages if s not in STAGES]
  if unknown:
    raise ValueError(f"unknown stage(s) {unknown}; expected some of {sorted(STAGES)}.")
  os.makedirs(workdir, exist_ok=True)
  logging.info("cgdiff at commit %s", records.git_commit())  # fixed now, before any stage runs
  for stage in stages:
    logging.info("stage %s -> %s", stage, workdir)
    STAGES[stage](config, workdir)


class _QuietOrbax:
  """Drops Orbax's per-save INFO lines (a dozen per checkpoint) from the log; warnings still show."""

  def filter(self, record) -> bool:
    return record.levelno > 20 or "orbax" not in record.pathname


def main(argv):
  del argv
  logging.get_absl_handler().addFilter(_QuietOrbax())
  if FLAGS.distributed:
    import jax  # pylint: disable=g-import-not-at-top
    jax.distributed.initialize()
    logging.info("process %d of %d, %d local devices", jax.process_index(), jax.process_count(),
                 jax.local_device_count())
  run_stages(FLAGS.config, FLAGS.workdir, FLAGS.stages)


if __name__ == "__main__":
  app.run(main)
