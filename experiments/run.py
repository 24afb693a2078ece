"""Entry point: `python -m experiments.run --config=configs/<name>.py --workdir=DIR [--config.key=value]`.

Runs the stages that `config.stages` names, in order. Stages compose library functions; no maths here.
"""

from __future__ import annotations

import os

from absl import app, flags, logging
from ml_collections import config_flags

from cgdiff import records
from cgdiff.train import checkpoint, devices
from experiments import common, evaluation, exact_field, sampling, training

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and figures.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() first (multi-host runs; "
                  "the coordinator address and process ids come from the environment / cluster).")
flags.DEFINE_list("stages", None, "Run these stages instead of config.stages, e.g. --stages=eval on a "
                  "trained workdir.")
flags.DEFINE_string("cpu_devices", devices.AUTO, "JAX CPU devices for data-parallel training on CPU: 'auto' "
                    "(one per core, reduced until it divides every training batch size and leaves each "
                    "device >= 16 examples) or a count; "
                    "1 is JAX's default. XLA_FLAGS' --xla_force_host_platform_device_count wins where set. "
                    "GPUs are unaffected.")
flags.mark_flags_as_required(["config", "workdir"])

# The stages that train with cgdiff.train.loop (pmapped over the devices), by their config group.
TRAINING_STAGES = ("vae", "ldm", "cotrain")
# Errors a user meets in normal use, whose message says what is wrong and how to go on: printed as that
# paragraph, without a traceback (which would bury it). Other errors keep their traceback.
USER_ERRORS = (checkpoint.CheckpointError, common.ConfigDriftError)

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


def run_or_explain(config, workdir: str, stages: tuple[str, ...] | None = None) -> None:
  """run_stages, with USER_ERRORS turned into SystemExit("error: <the error's paragraph>"): Python
  prints it to stderr, without a traceback, and exits with status 1."""
  try:
    run_stages(config, workdir, stages)
  except USER_ERRORS as error:
    raise SystemExit(f"error: {error}") from None


def training_batch_sizes(config, stages: tuple[str, ...] | None = None) -> list[int]:
  """The global batch sizes of the training stages among `stages` (default: config.stages)."""
  stages = tuple(config.stages if stages is None else stages)
  return [config[stage].training.batch_size for stage in TRAINING_STAGES if stage in stages]


class _QuietOrbax:
  """Drops Orbax's per-save INFO lines (a dozen per checkpoint) from the log; warnings still show."""

  def filter(self, record) -> bool:
    return record.levelno > 20 or "orbax" not in record.pathname


def main(argv):
  del argv
  logging.get_absl_handler().addFilter(_QuietOrbax())
  if FLAGS.distributed:
    # Multi-host runs keep JAX's CPU device count: a host's share of the batch is known only after this.
    import jax  # pylint: disable=g-import-not-at-top
    devices.set_collective_timeouts()  # before the backends start, as set_cpu_devices does
    jax.distributed.initialize()
    logging.info("process %d of %d, %d local devices", jax.process_index(), jax.process_count(),
                 jax.local_device_count())
  else:
    # Before any JAX operation: the CPU device count is fixed when JAX's backends start.
    requested = devices.resolve_cpu_devices(FLAGS.cpu_devices, training_batch_sizes(FLAGS.config, FLAGS.stages))
    count = devices.set_cpu_devices(requested)  # XLA_FLAGS' count, where set, instead
    logging.info("%d CPU device(s) (--cpu_devices=%s)", count, FLAGS.cpu_devices)
  run_or_explain(FLAGS.config, FLAGS.workdir, FLAGS.stages)


if __name__ == "__main__":
  app.run(main)
