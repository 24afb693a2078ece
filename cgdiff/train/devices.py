"""CPU devices for data-parallel training: one JAX device per core.

XLA:CPU runs a program's operations one after another, each spread over a shared pool of threads, and
the small operations of a latent UNet (8x8 maps and smaller) do not keep the cores busy: on two cores
the base-64 UNet train step of 001 (batch 128) ran 1.38-1.40x faster than on one, PyTorch's 1.48-1.74x
(README, Performance). With one JAX CPU device per core the training loop's pmap splits every batch into
per-core shards whose programs run side by side (the same global batch, the same per-example keys: the
same step up to the order of float32 sums). `python -m benchmarks.run` measures the speed-up (its
`cgdiff_1_device` rows).

The count is a property of the process: JAX fixes it when its backends start, at its first operation,
so `set_cpu_devices` runs first (experiments/run.py does it from --cpu_devices). GPUs are unaffected.

Collectives between CPU devices (the pmean of the gradients) wait for every device at a rendezvous, and
XLA:CPU aborts the whole process ("Termination timeout for all reduce ... exceeded", then "Fatal Python
error: Aborted") when one device is late by more than warn-stuck + terminate seconds (20 + 40 by
default). On a machine loaded by other jobs a device is late because its threads are not scheduled,
not because the program is deadlocked, and the quickstart's VAE stage was aborted so on 2 busy cores.
`set_collective_timeouts` (called by `set_cpu_devices`) raises both timeouts (COLLECTIVE_TIMEOUTS) in
XLA_FLAGS before the backends read it; a value the user put in XLA_FLAGS is kept.
"""

from __future__ import annotations

import math
import os
import re
from typing import Sequence

import jax

# The XLA flag that also sets the count; where XLA_FLAGS has it, it wins (the user asked for it).
XLA_DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
AUTO = "auto"
# "auto" leaves every device at least this many examples of a batch. A precaution, not a measurement:
# the gain was measured on 2 cores (64 examples per device); on many cores, shards of a few examples
# would spend more on per-device overhead than they gain.
MIN_EXAMPLES_PER_DEVICE = 16
# XLA:CPU's rendezvous timeouts, in seconds. After warn-stuck seconds a waiting device logs that it may
# be stuck; after terminate seconds more it aborts the process. A collective can only hang for good on a
# bug, and a slow peer on a loaded machine is the common case: wait hours, still warn after minutes.
COLLECTIVE_TIMEOUTS = {
    "--xla_cpu_collective_call_warn_stuck_timeout_seconds": 600,
    "--xla_cpu_collective_call_terminate_timeout_seconds": 6 * 3600,
}


def available_cores() -> int:
  """The number of cores this process may run on (its CPU affinity; os.cpu_count() where unknown)."""
  try:
    return len(os.sched_getaffinity(0))
  except (AttributeError, OSError):
    return os.cpu_count() or 1


def largest_dividing_count(limit: int, batch_sizes: Sequence[int], min_per_device: int = 1) -> int:
  """The largest d in [1, limit] that divides every batch size and leaves each device at least
  `min_per_device` examples of every batch (1 where no d > 1 does; limit when there are no batches)."""
  if limit < 1:
    raise ValueError(f"the device limit must be >= 1, got {limit}.")
  if not batch_sizes:
    return limit
  common, smallest = math.gcd(*batch_sizes), min(batch_sizes)
  return max(d for d in range(1, limit + 1) if common % d == 0 and (d == 1 or smallest // d >= min_per_device))


def resolve_cpu_devices(requested: str | int, batch_sizes: Sequence[int]) -> int:
  """The CPU device count for `requested`: "auto" is the largest count <= available_cores() that divides
  every global batch size of the training stages to run and leaves each device MIN_EXAMPLES_PER_DEVICE
  examples of each (1 when there is no training batch: nothing else is pmapped); an integer is checked
  against the batch sizes.

  Raises:
    ValueError: a count < 1, one that does not divide a batch size, or an unreadable request.
  """
  for size in batch_sizes:
    if size < 1:
      raise ValueError(f"batch sizes must be >= 1, got {list(batch_sizes)}.")
  if isinstance(requested, str):
    if requested.strip().lower() == AUTO:
      if not batch_sizes:
        return 1
      return largest_dividing_count(available_cores(), batch_sizes, MIN_EXAMPLES_PER_DEVICE)
    try:
      requested = int(requested)
    except ValueError:
      raise ValueError(f"cpu devices must be {AUTO!r} or a positive integer, got {requested!r}.") from None
  if requested < 1:
    raise ValueError(f"cpu devices must be >= 1, got {requested}.")
  bad = [size for size in batch_sizes if size % requested]
  if bad:
    raise ValueError(f"{requested} CPU devices do not divide the global batch size(s) {bad}; pick a count "
                     f"that divides {list(batch_sizes)}, or {AUTO!r}.")
  return requested


def xla_flag_count() -> int | None:
  """The device count that XLA_FLAGS sets with --xla_force_host_platform_device_count, if any."""
  match = re.search(re.escape(XLA_DEVICE_COUNT_FLAG) + r"=(\d+)", os.environ.get("XLA_FLAGS", ""))
  return int(match.group(1)) if match else None


def with_default_flags(xla_flags: str, defaults: dict[str, int]) -> str:
  """`xla_flags` (an XLA_FLAGS value) with "--flag=value" appended for each flag of `defaults` that it
  does not set already: a flag the user set keeps the user's value."""
  present = set(re.findall(r"(--[A-Za-z0-9_]+)=", xla_flags))
  added = [f"{flag}={value}" for flag, value in defaults.items() if flag not in present]
  return " ".join(part for part in [xla_flags.strip(), *added] if part)


def set_collective_timeouts(timeouts: dict[str, int] = COLLECTIVE_TIMEOUTS) -> str:
  """Adds each of `timeouts` that XLA_FLAGS does not set to XLA_FLAGS and returns XLA_FLAGS.

  XLA reads XLA_FLAGS once, when JAX's backends start (at the first JAX operation).

  Raises:
    RuntimeError: JAX's backends have started (the flags would be ignored).
  """
  # JAX has no public test for a started backend; jax_num_cpu_devices' own check uses this one.
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  if xla_bridge.backends_are_initialized():
    raise RuntimeError("cannot set XLA's collective timeouts: JAX has already started its backends "
                       "(set them before the first JAX operation).")
  os.environ["XLA_FLAGS"] = with_default_flags(os.environ.get("XLA_FLAGS", ""), timeouts)
  return os.environ["XLA_FLAGS"]


def set_cpu_devices(count: int) -> int:
  """Makes JAX's CPU platform present `count` devices (jax_num_cpu_devices), raises the collective
  timeouts (set_collective_timeouts), and returns the count in force: XLA_FLAGS'
  --xla_force_host_platform_device_count, where set, is kept instead.

  Raises:
    ValueError: count < 1.
    RuntimeError: JAX has already run an operation (its device count is fixed by then).
  """
  if count < 1:
    raise ValueError(f"cpu devices must be >= 1, got {count}.")
  from_flag = xla_flag_count()
  if from_flag is None:
    try:
      jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError as error:
      raise RuntimeError(f"cannot set {count} CPU devices: JAX has already started its backends (set the "
                         f"count before the first JAX operation). {error}") from error
  set_collective_timeouts()
  return count if from_flag is None else from_flag
