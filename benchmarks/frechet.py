"""The Frechet distance of 2048-d statistics: the implementations side by side, numpy against jax.numpy.

    python -m benchmarks.frechet [--dim 2048] [--reps 1] [--sqrtm] [--out benchmarks/results/NAME.json]

What an FID costs once the features are there is tr sqrt(C1 C2). Timed in one process, in float64:
  the primitives at D x D (matmul, eigh, eigvalsh, singular values), numpy (its OpenBLAS; the machine's
  OPENBLAS_CORETYPE applies) and jax.numpy (XLA's own matmul, LAPACK for the decompositions; float64
  via `jax.enable_x64` inside this script only);
  the compositions, on statistics with an Inception-like spectrum (eigenvalues decaying as a power):
    old            cgdiff before 2026-12: s1 = C1^{1/2}, s2 = C2^{1/2} (two eighs), singular values of s1 s2
    factor_svd     s1 cached with the reference statistics; s2 by eigh; singular values of s1 s2
    factor_eigvalsh  s1 cached; sum sqrt(eigvalsh(s1 C2 s1)) (what fid.trace_sqrt_product does at n > D)
    factor_eigvalsh_jax  the same in jax.numpy
    fid_uncached   fid.frechet_distance without a cached factor (one eigh more)
    scipy_sqrtm    TTUR's tr sqrtm(C1 C2) (with --sqrtm: minutes at D = 2048)
Each row prints its seconds and its difference from `old`. No timing is asserted anywhere.

Measured on the 2-core CPU shared with other jobs (results/cpu-2core-20261201*-frechet.*; load average
3.4 to 6.5), D = 2048, best of 3 (b) and single calls: matmul 0.74 s numpy / 0.77 s jax; eigh 9.2 / 6.0;
eigvalsh 3.4 / 9.3 (one single-call outlier of 1.6 s for jax); singular values 16.6 / 12.6.
tr sqrt(C1 C2): old 35.6 s (22.5 in the single-call run), factor_svd 29.6, factor_eigvalsh 5.1 (numpy,
what fid uses), factor_eigvalsh_jax 9.9, fid_uncached 22.8 (one eigh more), scipy_sqrtm 56.7; all
agree to 12 digits. numpy wins the eigvalsh that dominates, and jax's matmul is no faster, so fid.py
stays in numpy. The 3 s target is not reached on that loaded machine: one float64 eigvalsh of
2048 x 2048 (LAPACK dsytrd, memory-bound) alone took 3.4 s there. On the quiet machine
(results/cpu-2core-20261201c-frechet.*, best of 3): eigvalsh 0.55 s numpy / 1.21 s jax, factor_eigvalsh
1.07 s, fid_uncached 3.05 s, old 6.03 s: the target is met.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from cgdiff.metrics import fid


def inception_like_covariance(rng: np.random.Generator, dim: int, decay: float = 1.5) -> np.ndarray:
  """A random covariance Q diag(lambda) Q^T with lambda_k ~ k^-decay (condition number dim^decay)."""
  q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
  eigenvalues = np.arange(1, dim + 1, dtype=np.float64) ** -decay
  return (q * eigenvalues) @ q.T


def timed(fn: Callable[[], float | np.ndarray], reps: int,
          warm_up: bool = False) -> tuple[float, float | np.ndarray]:
  """(best wall seconds of `reps` >= 1 calls, the last result); warm_up: one untimed call first (jax
  compiles on its first call)."""
  if warm_up:
    fn()
  best, result = float("inf"), None
  for _ in range(reps):
    start = time.perf_counter()
    result = fn()
    best = min(best, time.perf_counter() - start)
  return best, result


def old_trace_sqrt(c1: np.ndarray, c2: np.ndarray) -> float:
  """tr sqrt(C1 C2) as cgdiff computed it before: two eighs and the singular values of s1 s2."""
  return float(np.sum(np.linalg.svd(fid.psd_sqrt(c1) @ fid.psd_sqrt(c2), compute_uv=False)))


def primitives(c: np.ndarray, reps: int) -> dict[str, float]:
  """Seconds of matmul / eigh / eigvalsh / singular values of c [D, D], numpy and jax.numpy (float64)."""
  out = {}
  numpy_ops = {"matmul": lambda: c @ c, "eigh": lambda: np.linalg.eigh(c),
               "eigvalsh": lambda: np.linalg.eigvalsh(c),
               "svd_values": lambda: np.linalg.svd(c, compute_uv=False)}
  for name, fn in numpy_ops.items():
    out[f"numpy {name}"] = timed(fn, reps)[0]
  with jax.enable_x64(True):
    cj = jnp.asarray(c)
    jax_ops = {"matmul": jax.jit(lambda x: x @ x), "eigh": jax.jit(jnp.linalg.eigh),
               "eigvalsh": jax.jit(jnp.linalg.eigvalsh),
               "svd_values": jax.jit(lambda x: jnp.linalg.svd(x, compute_uv=False))}
    for name, fn in jax_ops.items():
      out[f"jax {name}"] = timed(lambda f=fn: jax.block_until_ready(f(cj)), reps, warm_up=True)[0]
  return out


def compositions(c1: np.ndarray, c2: np.ndarray, reps: int, sqrtm: bool) -> dict[str, dict[str, float]]:
  """{name: {"seconds", "trace_sqrt", "minus_old"}} of each way to tr sqrt(C1 C2)."""
  s1 = fid.psd_sqrt(c1)  # what the reference statistics cache holds

  def eigvalsh_jax():
    with jax.enable_x64(True):
      m = jnp.asarray(s1) @ jnp.asarray(c2) @ jnp.asarray(s1)
      return float(jnp.sum(jnp.sqrt(jnp.clip(jnp.linalg.eigvalsh((m + m.T) / 2), 0.0, None))))

  ways = {
      "old": lambda: old_trace_sqrt(c1, c2),
      "factor_svd": lambda: float(np.sum(np.linalg.svd(s1 @ fid.psd_sqrt(c2), compute_uv=False))),
      "factor_eigvalsh": lambda: fid.trace_sqrt_product(c1, c2, factor1=s1),
      "factor_eigvalsh_jax": eigvalsh_jax,
      "fid_uncached": lambda: fid.trace_sqrt_product(c1, c2),
  }
  if sqrtm:
    import scipy.linalg  # pylint: disable=g-import-not-at-top
    ways["scipy_sqrtm"] = lambda: float(np.trace(scipy.linalg.sqrtm(c1 @ c2).real))
  out = {}
  for name, fn in ways.items():
    seconds, value = timed(fn, 1 if name == "scipy_sqrtm" else reps, warm_up=name.endswith("_jax"))
    out[name] = {"seconds": seconds, "trace_sqrt": value}
    print(f"  {name:22s} {seconds:8.2f} s   tr sqrt = {value:.12g}", flush=True)
  for row in out.values():
    row["minus_old"] = row["trace_sqrt"] - out["old"]["trace_sqrt"]
  return out


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--dim", type=int, default=2048)
  parser.add_argument("--reps", type=int, default=1, help="timed calls after a warm-up; the best is kept")
  parser.add_argument("--sqrtm", action="store_true", help="also time scipy.linalg.sqrtm (slow)")
  parser.add_argument("--out", default=None, help="write the timings as JSON here")
  args = parser.parse_args(argv)
  rng = np.random.default_rng(0)
  c1, c2 = inception_like_covariance(rng, args.dim), inception_like_covariance(rng, args.dim)
  load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
  print(f"D = {args.dim}, float64; OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')}, "
        f"{os.cpu_count()} CPUs, load average {load}", flush=True)
  print("primitives:", flush=True)
  prims = primitives(c1, args.reps)
  for name, seconds in prims.items():
    print(f"  {name:22s} {seconds:8.2f} s", flush=True)
  print("tr sqrt(C1 C2):", flush=True)
  result = {"dim": args.dim, "reps": args.reps, "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
            "cpus": os.cpu_count(), "load_average_at_start": load, "platform": platform.platform(),
            "numpy": np.__version__, "jax": jax.__version__, "primitives": prims,
            "compositions": compositions(c1, c2, args.reps, args.sqrtm)}
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=2)
  return result


if __name__ == "__main__":
  main()
