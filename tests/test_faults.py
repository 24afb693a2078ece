"""Fault injection (issue 17): what a run does when its inputs, its files or its process go wrong."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from cgdiff import objectives, samplers, schedules
from cgdiff.data import pipeline
from cgdiff.models import build, gate
from cgdiff.train import state
from configs import quickstart
from experiments import common, sampling, validation
from experiments import run as run_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- anticipated bad input ---------------------------------------------------------------------------
# A mistake a user can be expected to make ends the run before any stage, with exit status 2 and one
# paragraph on stderr that names the problem and the fix (experiments/validation.py); a bug keeps its
# traceback.

def run_cli(*args: str) -> subprocess.CompletedProcess:
  """`python -m experiments.run ARGS` from the repository root, output captured; prints its wall time."""
  start = time.perf_counter()
  result = subprocess.run([sys.executable, "-m", "experiments.run", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  print(f"experiments.run {' '.join(args)}: exit {result.returncode} in {time.perf_counter() - start:.1f} s")
  return result


def assert_user_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
  """Exit status 2 and a short stderr without a traceback that contains every fragment; returns it."""
  err = result.stderr
  assert result.returncode == 2, (result.returncode, err)
  assert "Traceback" not in err, err
  assert len(err.strip().splitlines()) < 6, err
  for fragment in fragments:
    assert fragment in err, (fragment, err)
  return err


def test_a_missing_config_file_is_one_paragraph(tmp_path):
  err = assert_user_error(run_cli("--config=configs/nope.py", f"--workdir={tmp_path / 'run'}"),
                          "'configs/nope.py' does not exist", "configs/quickstart.py", "--config=PATH")
  assert len(err.strip().splitlines()) == 1


def test_unknown_override_keys_are_named_with_a_suggestion(tmp_path):
  """The space-separated --config PATH form too; every unknown key at once."""
  assert_user_error(run_cli("--config", "configs/quickstart.py", "--config.ldm.tagret=lsi",
                            "--config.sampel.method=rk4", f"--workdir={tmp_path / 'run'}"),
                    "no key 'ldm.tagret'; did you mean 'ldm.target'?", "no key 'sampel.method'; did you mean "
                    "'sample.method'?", "Fix the spelling")
  assert not (tmp_path / "run").exists()


def test_bad_config_values_are_all_reported_before_any_stage(tmp_path):
  """Today ldm.target=foo fails when the ldm stage starts, after the VAE has trained."""
  workdir = tmp_path / "run"
  result = run_cli("--config=configs/quickstart.py", "--config.ldm.target=foo", "--config.sample.method=bogus",
                   "--config.schedule.kwargs.t_max=1.0", f"--workdir={workdir}")
  assert_user_error(result, "3 problems", "ldm.target='foo' is not one of 'critic_gate', 'critic_gate_prior', "
                    "'lsi', 'tweedie'", "sample.method='bogus'", "needs t_max < 1")
  assert not workdir.exists()


def test_a_cpu_device_count_that_does_not_divide_the_batch_is_one_paragraph(tmp_path):
  assert_user_error(run_cli("--config=configs/quickstart.py", "--stages=vae", "--cpu_devices=3",
                            f"--workdir={tmp_path / 'run'}"), "--cpu_devices=3", "do not divide")


def _read_only_dir(tmp_path) -> str:
  if os.geteuid() == 0:  # root writes through file modes; sysfs refuses new directories to everyone
    if not os.path.isdir("/sys/kernel"):
      pytest.skip("running as root without a sysfs: no read-only directory to try")
    return "/sys/kernel/cgdiff-test-workdir"
  read_only = tmp_path / "read_only"
  read_only.mkdir(mode=0o555)
  return str(read_only / "run")


@pytest.mark.parametrize("case", ["read-only", "file in the way", "file as parent"])
def test_a_workdir_that_cannot_be_written_is_one_paragraph(tmp_path, case):
  """Raw OSError, FileExistsError and NotADirectoryError tracebacks before."""
  (tmp_path / "file").write_text("not a directory")
  workdir, reason = {"read-only": (_read_only_dir(tmp_path), "cannot be used"),
                     "file in the way": (str(tmp_path / "file"), "it is a file, not a directory"),
                     "file as parent": (str(tmp_path / "file" / "run"), "a part of its path is a file")}[case]
  assert_user_error(run_cli("--config=configs/quickstart.py", "--stages=vae", f"--workdir={workdir}"),
                    f"the workdir '{workdir}'", reason, "--workdir=DIR")


def test_a_bug_in_a_config_file_keeps_its_traceback(tmp_path):
  """Only anticipated mistakes are shortened: an error inside get_config is the author's to debug."""
  path = tmp_path / "broken.py"
  path.write_text("def get_config():\n  raise RuntimeError('a bug in the config file')\n")
  result = run_cli(f"--config={path}", f"--workdir={tmp_path / 'run'}")
  assert result.returncode not in (0, 2)
  assert "Traceback" in result.stderr and "RuntimeError: a bug in the config file" in result.stderr


def test_config_arguments_are_read_as_the_config_flag_reads_them():
  argv = ["run", "--config", "configs/toy.py", "--config.ldm.target=lsi", "--noconfig.vae.training.tensorboard",
          "-config.seed", "3", "--configx=1", "--workdir=w"]
  assert run_lib.config_arguments(argv) == ("configs/toy.py", ["ldm.target", "vae.training.tensorboard", "seed"])
  assert run_lib.config_arguments(["run", "--config=a.py:arg"]) == ("a.py:arg", [])
  assert run_lib.config_arguments(["run", "--workdir=w"]) == (None, [])


# Each enumerated choice, a bad value for it, and the registry of the module that owns the choice.
CHOICES = [
    ("data.name", "imagenet", lambda: pipeline.SOURCES + (common.TOY,)),
    ("schedule.name", "sigmoid", lambda: schedules.SCHEDULES),
    ("vae.kl", "none", lambda: objectives.KL_KINDS),
    ("cotrain.kl", "none", lambda: objectives.KL_KINDS),
    ("ldm.target", "foo", lambda: objectives.SCORE_TARGETS),
    ("ldm.vae_source", "ldm", lambda: common.VAE_SOURCES),
    ("stats.vae_source", "ldm", lambda: common.VAE_SOURCES),
    ("cotrain.score_target", "critic_gate", lambda: objectives.COTRAIN_SCORE_TARGETS),
    ("sample.score_source", "vae", lambda: sampling.SCORE_SOURCES),
    ("sample.method", "bogus", lambda: samplers.METHODS),
    ("gate.granularity", "pixel", lambda: gate.GRANULARITIES),
    ("score_net.kind", "transformer", lambda: build.SCORE_NETS),
    ("vae.training.lr_schedule", "linear", lambda: state.LR_SCHEDULES),
    ("ldm.training.lr_schedule", "linear", lambda: state.LR_SCHEDULES),
    ("cotrain.training.lr_schedule", "linear", lambda: state.LR_SCHEDULES),
    ("eval.reference_split", "val", lambda: pipeline.SPLITS),
]
# Counts that must be integers >= 1 (>= 0 where the second entry says so).
COUNTS = [("sample.num_steps", 1), ("sample.num_samples", 1), ("sample.batch_size", 1), ("eval.num_samples", 2),
          ("eval.batch_size", 1), ("eval.num_reconstructions", 1), ("eval.num_reference", 0),
          ("eval.sw2_floor_draws", 1), ("eval.chunk_size", 1), ("eval.bank_seed", 0), ("seed", 0)]
COUNTS += [(f"{group}.training.{key}", 1) for group in ("vae", "ldm", "cotrain")
           for key in ("num_steps", "batch_size", "log_every", "checkpoint_every")]


def _set(config, key: str, value) -> None:
  *groups, last = key.split(".")
  node = config
  for group in groups:
    node = node[group]
  with node.ignore_type():
    node[last] = value


def test_every_config_problem_is_reported_at_once_with_the_owners_valid_values():
  config = quickstart.get_config()
  for key, bad, _ in CHOICES:
    _set(config, key, bad)
  for key, minimum in COUNTS:
    _set(config, key, minimum - 1)
  problems = validation.config_problems(config, config.stages, run_lib.STAGES)
  # schedule.name is unknown, so its kwargs are not tried; one problem per bad key, no more.
  assert len(problems) == len(CHOICES) + len(COUNTS), "\n".join(problems)
  for key, bad, valid in CHOICES:
    expected = f"{key}={bad!r} is not one of {', '.join(map(repr, sorted(valid())))}"
    assert expected in problems, (expected, problems)
  for key, minimum in COUNTS:
    assert f"{key} must be an integer >= {minimum}, got {minimum - 1}" in problems, (key, problems)
  with pytest.raises(validation.UserError, match=f"the config has {len(problems)} problems"):
    run_lib.run_stages(config, "/nonexistent/never-created")


@pytest.mark.parametrize("key, registry", [("sample.method", (samplers, "METHODS")),
                                           ("ldm.target", (objectives, "SCORE_TARGETS")),
                                           ("score_net.kind", (build, "SCORE_NETS"))])
def test_choices_are_read_from_the_owning_module_not_a_copy(monkeypatch, key, registry):
  """A name the owner registers is valid at once; one it drops is invalid at once."""
  module, name = registry
  config = quickstart.get_config()
  _set(config, key, "newly_registered")
  assert any(key in p for p in validation.config_problems(config, config.stages, run_lib.STAGES))
  owned = getattr(module, name)
  extended = ({**owned, "newly_registered": None} if isinstance(owned, dict) else owned + ("newly_registered",))
  monkeypatch.setattr(module, name, extended)
  assert validation.config_problems(config, config.stages, run_lib.STAGES) == []


@pytest.mark.parametrize("kwargs, match", [({"t_min": 1e-3, "t_max": 1.0}, "needs t_max < 1"),
                                           ({"c": -1.0}, "offset c must be >= 0"),
                                           ({"t_maxx": 0.9}, "unexpected keyword argument 't_maxx'")])
def test_the_schedule_is_built_from_the_config(kwargs, match):
  config = quickstart.get_config()
  config.schedule.kwargs = kwargs
  (problem,) = validation.config_problems(config, config.stages, run_lib.STAGES)
  assert problem.startswith("schedule 'cosine' with schedule.kwargs:") and match in problem, problem


def test_stages_and_their_config_groups():
  config = quickstart.get_config()
  problems = validation.config_problems(config, ("vae", "trian", "exact_field"), run_lib.STAGES)
  assert problems == [f"stage='trian' is not one of {', '.join(map(repr, sorted(run_lib.STAGES)))}",
                      "stage 'exact_field' needs the config group 'exact_field', which the config lacks"]


def test_unknown_data_kwargs_are_named():
  config = quickstart.get_config()
  config.data.kwargs = {"num_images": 8, "chanels": 1}
  assert validation.config_problems(config, config.stages, run_lib.STAGES) == [
      "data.kwargs has chanels, which data 'synthetic' does not take (it takes num_images, channels, seed)"]
