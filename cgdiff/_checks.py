"""Input validation shared by the library: errors that name the problem, never a silent NaN.

Values are checked when they are concrete (eager calls, Python floats, numpy arrays). Inside
`jax.jit` / `vmap` / `grad` the values are tracers and only static facts (shapes, dtypes) can be
checked at trace time; the callers that build traced values (samplers, training steps) validate
their concrete inputs (time range, shapes) before tracing.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import jax
import numpy as np


def is_concrete(x: Any) -> bool:
  """True when `x` has a value now (not a tracer inside jit / vmap / grad)."""
  return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(x))


def check_finite(name: str, x: Any) -> None:
  """Raises ValueError if the concrete array `x` holds NaN or inf."""
  if not is_concrete(x):
    return
  arr = np.asarray(x)
  if not np.all(np.isfinite(arr)):
    bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
    raise ValueError(f"{name} has {bad} non-finite value(s) (NaN or inf) out of {arr.size}.")


def check_in_range(name: str, x: Any, lo: float, hi: float) -> None:
  """Raises ValueError if the concrete array `x` has values outside [lo, hi] or non-finite ones.

  A relative slack of 1e-6 absorbs float32 rounding of endpoints computed through other maps.
  """
  if not is_concrete(x):
    return
  check_finite(name, x)
  arr = np.asarray(x, dtype=np.float64)
  slack = 1e-6 * max(1.0, abs(hi))
  if arr.size and (arr.min() < lo - slack or arr.max() > hi + slack):
    raise ValueError(
        f"{name} must lie in [{lo:g}, {hi:g}], got values in [{arr.min():g}, {arr.max():g}].")


def check_int(name: str, value: Any, minimum: int = 1) -> int:
  """`value` as an int; ValueError unless it is an integer (Python or numpy, not bool) >= `minimum`.

  Counts (steps, samples) fix array shapes and loop lengths, so they must be static integers: a float
  such as 2.5 would otherwise fail deep inside jax.random.split or lax.scan with a bare TypeError.
  """
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < minimum:
    kind = "" if isinstance(value, (int, np.integer)) else f" ({type(value).__name__})"
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}{kind}.")
  return int(value)


def check_number(name: str, value: Any) -> float:
  """`value` as a float; ValueError unless it is a finite real number (a parameter, not an array)."""
  if isinstance(value, numbers.Real) and math.isfinite(value):
    return float(value)
  raise ValueError(f"{name} must be a finite number, got {value!r}.")


def check_same_shape(**arrays: Any) -> None:
  """Raises ValueError unless every named array has the same shape."""
  shapes = {name: np.shape(a) for name, a in arrays.items()}
  if len(set(shapes.values())) > 1:
    listed = ", ".join(f"{name}{shape}" for name, shape in shapes.items())
    raise ValueError(f"shape mismatch: expected equal shapes, got {listed}.")


def check_broadcasts_to(name: str, x: Any, shape: tuple[int, ...], what: str) -> None:
  """Raises ValueError unless `x` broadcasts to `shape` without enlarging it."""
  x_shape = np.shape(x)
  try:
    out = np.broadcast_shapes(x_shape, shape)
  except ValueError:
    out = None
  if out != tuple(shape):
    raise ValueError(
        f"{name} of shape {x_shape} does not broadcast against {what} of shape {tuple(shape)}; "
        f"use a scalar or a shape like {(shape[0],) + (1,) * (len(shape) - 1) if shape else ()}.")
