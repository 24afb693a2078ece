"""cgdiff.train.devices: the CPU device count for data-parallel training, and experiments.run's use of it."""

import os
import subprocess
import sys

import pytest

from cgdiff.train import devices
from configs import quickstart
from experiments import run as run_lib


@pytest.mark.parametrize("limit, sizes, min_per_device, expected", [
    (2, [128, 64], 1, 2), (4, [6], 1, 3), (8, [12, 18], 1, 6), (16, [7, 128], 1, 1), (3, [], 1, 3),
    (1, [5], 1, 1), (16, [128, 64], 16, 4), (8, [32, 512], 16, 2), (4, [8], 16, 1), (2, [], 16, 2)])
def test_largest_dividing_count(limit, sizes, min_per_device, expected):
  assert devices.largest_dividing_count(limit, sizes, min_per_device) == expected


def test_auto_is_the_cores_reduced_to_a_divisor_of_every_batch(monkeypatch):
  monkeypatch.setattr(devices, "available_cores", lambda: 8)
  assert devices.MIN_EXAMPLES_PER_DEVICE == 16
  assert devices.resolve_cpu_devices("auto", [128, 256]) == 8
  assert devices.resolve_cpu_devices("auto", [128, 64]) == 4   # 16 examples each at most 4 ways
  assert devices.resolve_cpu_devices("AUTO", [96]) == 6
  assert devices.resolve_cpu_devices("auto", [12]) == 1        # fewer than 16 per device otherwise
  assert devices.resolve_cpu_devices("auto", []) == 1          # nothing trains: JAX's default
  monkeypatch.setattr(devices, "available_cores", lambda: 2)
  assert devices.resolve_cpu_devices("auto", [128]) == 2
  assert devices.resolve_cpu_devices("auto", [127]) == 1


def test_an_explicit_count_is_checked_against_the_batches():
  assert devices.resolve_cpu_devices("4", [128, 64]) == 4
  assert devices.resolve_cpu_devices(1, [7]) == 1
  with pytest.raises(ValueError, match=r"3 CPU devices do not divide the global batch size\(s\) \[64\]"):
    devices.resolve_cpu_devices(3, [96, 64])
  with pytest.raises(ValueError, match="must be >= 1"):
    devices.resolve_cpu_devices("0", [])
  with pytest.raises(ValueError, match="'auto' or a positive integer"):
    devices.resolve_cpu_devices("two", [])
  with pytest.raises(ValueError, match="batch sizes must be >= 1"):
    devices.resolve_cpu_devices("auto", [0])


def test_xla_flag_count_reads_xla_flags(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false --xla_force_host_platform_device_count=6")
  assert devices.xla_flag_count() == 6
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
  assert devices.xla_flag_count() is None
  monkeypatch.delenv("XLA_FLAGS")
  assert devices.xla_flag_count() is None


WARN, TERMINATE = devices.COLLECTIVE_TIMEOUTS


def test_collective_timeouts_are_hours_and_a_users_value_wins():
  """A late device on a loaded machine must not abort training (XLA:CPU's default is 20 + 40 s)."""
  assert devices.COLLECTIVE_TIMEOUTS[TERMINATE] >= 3600 and devices.COLLECTIVE_TIMEOUTS[WARN] >= 60
  assert devices.with_default_flags("", {WARN: 600, TERMINATE: 7}) == f"{WARN}=600 {TERMINATE}=7"
  user = f"--xla_cpu_enable_fast_math=false {TERMINATE}=30"
  assert devices.with_default_flags(user, {WARN: 600, TERMINATE: 7}) == f"{user} {WARN}=600"
  both = f"{WARN}=1 {TERMINATE}=2"
  assert devices.with_default_flags(both, {WARN: 600, TERMINATE: 7}) == both


SCRIPT = """
import os, sys
import jax
from cgdiff.train import devices
count = devices.set_cpu_devices(int(sys.argv[1]))
print("set", count, "local", jax.local_device_count())
print("XLA_FLAGS", os.environ["XLA_FLAGS"])
try:
  devices.set_cpu_devices(1)
except RuntimeError as error:
  print("too late:", error)
"""


def _run(count: int, xla_flags: str = "") -> str:
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags)
  result = subprocess.run([sys.executable, "-c", SCRIPT, str(count)], env=env, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


def test_set_cpu_devices_gives_jax_that_many_devices_and_refuses_once_jax_started():
  out = _run(3)
  assert "set 3 local 3" in out
  assert "too late: cannot set 1 CPU devices: JAX has already started its backends" in out
  # The collective timeouts are in XLA_FLAGS before the backends start (tests/test_faults.py shows
  # that XLA applies flags set so).
  timeouts = " ".join(f"{flag}={value}" for flag, value in devices.COLLECTIVE_TIMEOUTS.items())
  assert f"XLA_FLAGS {timeouts}\n" in out


def test_the_xla_flag_wins_over_the_requested_count():
  out = _run(2, f"--xla_force_host_platform_device_count=5 {TERMINATE}=9")
  assert "set 5 local 5" in out
  warn = devices.COLLECTIVE_TIMEOUTS[WARN]
  assert f"XLA_FLAGS --xla_force_host_platform_device_count=5 {TERMINATE}=9 {WARN}={warn}\n" in out


def test_training_batch_sizes_of_the_stages_that_run():
  config = quickstart.get_config()
  assert run_lib.training_batch_sizes(config) == [config.vae.training.batch_size,
                                                  config.ldm.training.batch_size]
  assert run_lib.training_batch_sizes(config, ("ldm", "sample")) == [config.ldm.training.batch_size]
  assert run_lib.training_batch_sizes(config, ("sample", "eval")) == []
