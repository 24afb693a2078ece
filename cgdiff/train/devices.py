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


def set_cpu_devices(count: int) -> int:
  """Makes JAX's CPU platform present `count` devices (jax_num_cpu_devices) and returns the count in
  force: XLA_FLAGS' --xla_force_host_platform_device_count, where set, is kept instead.

  Raises:
    ValueError: count < 1.
    RuntimeError: JAX has already run an operation (its device count is fixed by then).
  """
  if count < 1:
    raise ValueError(f"cpu devices must be >= 1, got {count}.")
  from_flag = xla_flag_count()
  if from_flag is not None:
    return from_flag
  try:
    jax.config.update("jax_num_cpu_devices", count)
  except RuntimeError as error:
    raise RuntimeError(f"cannot set {count} CPU devices: JAX has already started its backends (set the "
                       f"count before the first JAX operation). {error}") from error
  return count
