"""Entry point: `python -m experiments.run --config=configs/<name>.py --workdir=DIR [--config.key=value]`.

Runs the stages that `config.stages` names, in order. Stages compose library functions; no maths here.
The config file, the override keys, the whole config and the workdir are checked before any stage runs
(experiments/validation.py): a mistake there ends the run with one paragraph and exit status 2.
"""

from __future__ import annotations

import re
import signal
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from cgdiff import records
from cgdiff.train import checkpoint, devices, loop
from experiments import common, validation
from experiments import stages as stages_lib

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


def run_stages(config, workdir: str, stages: tuple[str, ...] | None = None) -> None:
  """Runs `stages` (default: config.stages) on `workdir`, in order, once the whole config and the
  workdir have passed their checks (validation.UserError where they do not)."""
  stages = tuple(config.stages if stages is None else stages)
  validation.check_run(config, stages, stages_lib.STAGES, workdir)
  logging.info("cgdiff at commit %s", records.git_commit())  # fixed now, before any stage runs
  for stage in stages:
    logging.info("stage %s -> %s", stage, workdir)
    stages_lib.STAGES[stage].run(config, workdir)


def training_batch_sizes(config, stages: tuple[str, ...] | None = None) -> list[int]:
  """The global batch sizes of the training stages among `stages` (default: config.stages)."""
  stages = tuple(config.stages if stages is None else stages)
  return [config[stage].training.batch_size for stage in stages_lib.training_stages(stages)]


class _QuietOrbax:
  """Drops Orbax's per-save INFO lines (a dozen per checkpoint) from the log; warnings still show."""

  def filter(self, record) -> bool:
    return record.levelno > 20 or "orbax" not in record.pathname


def config_arguments(argv: list[str]) -> tuple[str | None, list[str]]:
  """(the --config file, the KEYs of the --config.KEY overrides) as written in `argv`, read the way
  ml_collections' config flag reads them (--config=PATH or --config PATH; --[no]config.KEY[=VALUE])."""
  path, keys = None, []
  for i, arg in enumerate(argv[1:], 1):
    if re.fullmatch(r"--?config(=.*)?", arg):
      path = arg.split("=", 1)[1] if "=" in arg else (argv[i + 1] if i + 1 < len(argv) else None)
    elif re.match(r"--?(no)?config\.", arg):
      keys.append(arg.split("=", 1)[0].split(".", 1)[1])
  return path, keys


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, after checking what ml_collections reports only as a traceback: that the
  config file exists and that every override names a key of it."""
  path, keys = config_arguments(argv)
  if path is not None:
    validation.check_config_file(path, keys, FLAGS["config"].parser.parse)
  return app.parse_flags_with_usage(argv)


def main(argv):
  del argv
  logging.get_absl_handler().addFilter(_QuietOrbax())
  stages = tuple(FLAGS.config.stages if FLAGS.stages is None else FLAGS.stages)
  # Before the device count is chosen from the batch sizes (run_stages checks again: a no-op here).
  validation.check_run(FLAGS.config, stages, stages_lib.STAGES, FLAGS.workdir)
  if FLAGS.distributed:
    # Multi-host runs keep JAX's CPU device count: a host's share of the batch is known only after this.
    import jax  # pylint: disable=g-import-not-at-top
    devices.set_collective_timeouts()  # before the backends start, as set_cpu_devices does
    jax.distributed.initialize()
    logging.info("process %d of %d, %d local devices", jax.process_index(), jax.process_count(),
                 jax.local_device_count())
  else:
    # Before any JAX operation: the CPU device count is fixed when JAX's backends start.
    try:
      requested = devices.resolve_cpu_devices(FLAGS.cpu_devices, training_batch_sizes(FLAGS.config, stages))
    except ValueError as error:
      raise validation.UserError(f"--cpu_devices={FLAGS.cpu_devices}: {error}") from error
    count = devices.set_cpu_devices(requested)  # XLA_FLAGS' count, where set, instead
    logging.info("%d CPU device(s) (--cpu_devices=%s)", count, FLAGS.cpu_devices)
  run_stages(FLAGS.config, FLAGS.workdir, stages)


# Anticipated mistakes and states a user meets in normal use, whose message says what is wrong and how to
# go on: a bad command line or config (validation), a workdir trained with other settings (config drift),
# checkpoints that cannot be used. Printed as that paragraph, without a traceback (which would bury it).
USER_ERRORS = (validation.UserError, common.ConfigDriftError, checkpoint.CheckpointError)


def cli() -> None:
  """app.run(main), with USER_ERRORS (from the flags or from main) printed as their one paragraph and
  exit status 2, and a SIGTERM that stopped training after saving its step (loop.Preempted) as its line
  and status 143 (128 + SIGTERM, as if the signal had ended it); every other error keeps its traceback."""
  try:
    app.run(main, flags_parser=parse_flags)
  except USER_ERRORS as error:
    sys.stderr.write(f"experiments.run: {error}\n")
    sys.exit(2)
  except loop.Preempted as stop:
    sys.stderr.write(f"experiments.run: {stop}\n")
    sys.exit(128 + signal.SIGTERM)


if __name__ == "__main__":
  cli()
