"""The checks of a run's inputs that come before any stage: config file, override keys, config, workdir.

A mistake a user can be expected to make (a mistyped key, an unknown sampler, a workdir that cannot
be written) is a `UserError`: its message is one paragraph naming the problem and the fix, and
experiments/run.py prints it and exits with status 2, without a traceback. Any other exception is a
bug or a failure of the environment and keeps its traceback.

`check_config` reads the WHOLE config, not only the groups of the stages to run, so that a bad value
is found before hours of training rather than when its stage starts; it reports every problem at
once. Each check takes its valid values from the module that owns the choice (samplers.METHODS,
score_targets.names(), schedules.make, ...), and none computes anything with JAX: run.py calls it
before the CPU device count is fixed.
"""

from __future__ import annotations

import difflib
import glob
import os
import tempfile
from typing import Any, Callable, Collection, Iterable, Sequence

import ml_collections
from ml_collections.config_flags import config_path

from cgdiff import _checks, objectives, samplers, schedules, score_targets
from cgdiff.data import pipeline
from cgdiff.models import build, gate
from cgdiff.train import state
from experiments import common, latent_space, sampling

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


class UserError(ValueError):
  """An anticipated mistake in the command line or the config; the message names it and the fix.

  A ValueError, so that callers of run_stages that caught the ValueErrors of before still do."""


# --- the command line: config file and override keys -----------------------------------------------
def check_config_file(path: str, override_keys: Sequence[str], load: Callable[[str], Any]) -> None:
  """Raises UserError if the --config file `path` does not exist, or if an override --config.KEY
  names a KEY the config does not have (ml_collections reports both as long tracebacks).

  load: path -> the config, without the overrides (the config flag's own parser, so that the file is
  read exactly as the flag will read it).
  """
  file_path = path.split(":", 1)[0]  # config_flags passes what follows a ':' to get_config
  if not os.path.isfile(file_path):
    known = ", ".join(os.path.relpath(p) for p in sorted(glob.glob(os.path.join(CONFIG_DIR, "[!_]*.py"))))
    raise UserError(f"the config file {file_path!r} does not exist (relative paths start at "
                    f"{os.getcwd()}). Pass --config=PATH with an existing file; this repository's "
                    f"configs are {known}.")
  config = load(path)
  if not isinstance(config, ml_collections.ConfigDict):
    return  # a file config_flags cannot load: it reports that itself when the flags are parsed
  unknown = [_unknown_key_message(config, key) for key in override_keys if not _has_key(config, key)]
  if unknown:
    raise UserError(f"{'; '.join(unknown)}. Fix the spelling of the override (--config.KEY=VALUE can "
                    f"only change a key that {file_path} defines).")


def _walk(config: ml_collections.ConfigDict, key: str) -> tuple[list[str], Any]:
  """(the leading parts of the dotted `key` that the config has, the value or group they reach)."""
  node, known = config, []
  for part in key.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      break
    node, known = node[part], known + [part]
  return known, node


def _has_key(config: ml_collections.ConfigDict, key: str) -> bool:
  """Whether the override --config.`key` names a field (resolved as config_flags resolves it)."""
  try:
    config_path.get_type(key, config)
  except (KeyError, AttributeError, IndexError, ValueError):
    return False
  return True


def _unknown_key_message(config: ml_collections.ConfigDict, key: str) -> str:
  """'config has no key KEY' with the closest existing key and the keys of the deepest known group."""
  known, node = _walk(config, key)
  where, parts = ".".join(known), key.split(".")
  if len(known) == len(parts):  # every part exists, yet config_flags cannot resolve it
    return f"the config key {key!r} cannot be overridden from the command line"
  if not isinstance(node, ml_collections.ConfigDict):
    return f"the config has no key {key!r} ({where!r} is a value, not a group)"
  siblings = sorted(node.keys())
  message = f"the config has no key {key!r}"
  guess = difflib.get_close_matches(parts[len(known)], siblings, n=1)
  if guess:
    message += f"; did you mean {'.'.join(known + guess + parts[len(known) + 1:])!r}?"
  return message + f" ({repr(where) + ' has' if where else 'its top-level keys are'} {', '.join(siblings)})"


# --- the config --------------------------------------------------------------------------------------
_MISSING = object()  # what _Problems.get returns for a key the config lacks (after reporting it)


class _Problems:
  """Collects what is wrong with a config, each problem a phrase that names the key and the value."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.found: list[str] = []

  def get(self, key: str) -> Any:
    """config[key] for a dotted key; a missing key is a problem (and returns _MISSING)."""
    if not self.has(key):
      self.found.append(f"{key} is missing")
      return _MISSING
    return _walk(self.config, key)[1]

  def has(self, key: str) -> bool:
    return len(_walk(self.config, key)[0]) == key.count(".") + 1

  def peek(self, key: str) -> Any:
    """config[key], or None where the config lacks it (not a problem: the caller reports it if it is)."""
    return _walk(self.config, key)[1] if self.has(key) else None

  def choice(self, key: str, valid: Collection[str], value: Any = _MISSING) -> None:
    """`value` (default: config[key]) must be one of `valid`, the owner's registry of names."""
    value = self.get(key) if value is _MISSING else value
    if value is not _MISSING and not (isinstance(value, str) and value in valid):
      self.found.append(f"{key}={value!r} is not one of {', '.join(map(repr, sorted(valid)))}")

  def call(self, key: str | None, check: Callable[..., Any], /, *args, **kwargs) -> None:
    """Runs an owner's check; its ValueError or TypeError (prefixed with `key`, where given) is a problem."""
    try:
      check(*args, **kwargs)
    except (ValueError, TypeError) as error:
      message = str(error).rstrip(".")
      self.found.append(f"{key}: {message}" if key else message)

  def integers(self, group: str, keys: Iterable[str], minimum: int = 1) -> None:
    """config[group.key] must be an integer >= minimum, for each of `keys`."""
    for key in keys:
      value = self.get(f"{group}.{key}")
      if value is not _MISSING:
        self.call(None, _checks.check_int, f"{group}.{key}", value, minimum)


def check_config(config: ml_collections.ConfigDict, stages: Sequence[str], known_stages: Collection[str]) -> None:
  """Raises UserError listing every problem of `config` for running `stages` (see the module docstring)."""
  problems = config_problems(config, stages, known_stages)
  if problems:
    count = "a problem" if len(problems) == 1 else f"{len(problems)} problems"
    raise UserError(f"the config has {count}, found before any stage ran: {'; '.join(problems)}. Fix "
                    "the config file or override the key with --config.KEY=VALUE (the stages to run: --stages).")


def config_problems(config: ml_collections.ConfigDict, stages: Sequence[str],
                    known_stages: Collection[str]) -> list[str]:
  """Every problem of `config` (each a phrase naming the key, the bad value and the valid ones)."""
  p = _Problems(config)
  for stage in dict.fromkeys(tuple(stages) + tuple(config.get("stages", ()))):
    p.choice("stage", known_stages, stage)
  for stage in dict.fromkeys(stages):  # each stage is configured by the group of its name
    if stage in known_stages and stage not in config:
      p.found.append(f"stage {stage!r} needs the config group {stage!r}, which the config lacks")
  if "seed" in config:
    p.call(None, _checks.check_int, "seed", config.seed, 0)
  if "data" in config:
    _check_data(p)
  if "schedule" in config:
    p.choice("schedule.name", schedules.SCHEDULES)
    name, kwargs = p.peek("schedule.name"), p.get("schedule.kwargs")
    if isinstance(name, str) and name in schedules.SCHEDULES and kwargs is not _MISSING:
      p.call(f"schedule {name!r} with schedule.kwargs", schedules.make, name, **dict(kwargs))
  for group, key in (("vae", "kl"), ("cotrain", "kl")):
    if group in config:
      p.choice(f"{group}.{key}", objectives.KL_KINDS)
  if "stats" in config:
    p.choice("stats.vae_source", common.VAE_SOURCES)
  if "score_net" in config:
    p.choice("score_net.kind", build.SCORE_NETS)
  if "gate" in config:
    p.choice("gate.granularity", gate.GRANULARITIES)
  if "ldm" in config:
    p.choice("ldm.target", score_targets.names())
    p.choice("ldm.vae_source", common.VAE_SOURCES)
  if "cotrain" in config:
    p.choice("cotrain.score_target", objectives.COTRAIN_SCORE_TARGETS)
  for group in common.TRAINING_STAGES:
    if group in config:
      _check_training(p, f"{group}.training")
  if "sample" in config:
    p.choice("sample.score_source", sampling.SCORE_SOURCES)
    p.choice("sample.method", samplers.METHODS)
    p.integers("sample", ["num_steps", "num_samples", "batch_size"])
  if "eval" in config:
    p.choice("eval.reference_split", pipeline.SPLITS)
    p.integers("eval", ["batch_size", "num_reconstructions", "inception_batch_size", "sw2_projections",
                        "sw2_floor_draws", "chunk_size", "profile_times", "profile_batch"])
    p.integers("eval", ["num_samples"], minimum=2)  # a covariance needs two
    p.integers("eval", ["num_reference", "bank_seed"], minimum=0)  # num_reference 0: the whole split
  if "diagnose" in config:
    p.choice("diagnose.split", pipeline.SPLITS)
    p.integers("diagnose", ["num_posteriors", "num_times", "field_components", "num_points", "num_draws"])
  if "exact_field" in config:
    _check_exact_field(p)
  return p.found


def _check_data(p: _Problems) -> None:
  p.choice("data.name", latent_space.DATA_NAMES)
  name = p.peek("data.name")
  if name == latent_space.TOY:
    p.integers("data", ["num_points"])
  elif isinstance(name, str) and name in pipeline.SOURCES and p.has("data.kwargs"):
    unknown = sorted(set(p.peek("data.kwargs")) - set(pipeline.SOURCE_KWARGS[name]))
    if unknown:
      p.found.append(f"data.kwargs has {', '.join(unknown)}, which data {name!r} does not take (it takes "
                     f"{', '.join(pipeline.SOURCE_KWARGS[name]) or 'none'})")


def _check_training(p: _Problems, group: str) -> None:
  p.choice(f"{group}.lr_schedule", state.LR_SCHEDULES)
  p.integers(group, ["num_steps", "batch_size", "log_every", "checkpoint_every", "keep_checkpoints"])
  p.integers(group, ["warmup_steps"], minimum=0)
  decay = p.get(f"{group}.ema_decay")
  if decay is not _MISSING and not (isinstance(decay, (int, float)) and 0.0 <= decay < 1.0):
    p.found.append(f"{group}.ema_decay={decay!r} must lie in [0, 1)")


def _check_exact_field(p: _Problems) -> None:
  for method in p.peek("exact_field.sampling.methods") or ():
    p.choice("exact_field.sampling.methods", samplers.METHODS, method)
  for steps in p.peek("exact_field.sampling.steps") or ():
    p.call(None, _checks.check_int, "exact_field.sampling.steps entries", steps)
  p.integers("exact_field.sampling", ["num_samples", "num_projections"])
  p.integers("exact_field.sampling", ["num_null_sets"], minimum=2)  # their spread is the SW2 floor
  p.integers("exact_field.variance", ["num_times"], minimum=2)  # a grid of num_times - 1 steps
  p.integers("exact_field.variance", ["num_points", "num_draws"])


# --- the workdir, and both together ---------------------------------------------------------------------
def check_run(config: ml_collections.ConfigDict, stages: Sequence[str], known_stages: Collection[str],
              workdir: str) -> None:
  """check_config, then make_workdir: everything a run is given, checked before it starts."""
  check_config(config, stages, known_stages)
  make_workdir(workdir)


def make_workdir(workdir: str) -> None:
  """Creates `workdir` if needed and checks that a file can be written in it; UserError if not (rather
  than an OSError when the first stage writes, possibly after it has trained)."""
  if not workdir:
    raise UserError("the workdir is empty. Pass --workdir=DIR with a directory you can write to.")
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.TemporaryFile(dir=workdir):
      pass
  except OSError as error:
    if os.path.exists(workdir) and not os.path.isdir(workdir):
      reason = "it is a file, not a directory"
    elif isinstance(error, NotADirectoryError):
      reason = "a part of its path is a file, not a directory"
    else:
      reason = f"{error.strerror.lower()} ({error.filename or workdir})"
    raise UserError(f"the workdir {workdir!r} cannot be used: {reason}. Pass --workdir=DIR with a "
                    "directory you can write to (it is created if it does not exist).") from error
