"""Fixed evaluation noise banks (002 evaluates on fixed banks): stored standard normal arrays.

    bank = noise_bank(directory, "prior", (10_000, 8, 8, 2), seed=0)   # z_T of the samplers
    bank = noise_bank(directory, "posterior_test", (10_000, 8, 8, 2))   # eps of z0 = mu + sqrt(v) eps

Every model, row and training seed is evaluated on the same noise: a bank is generated once from
(name, seed), stored as <directory>/<name>_s<seed>_<shape>.npy with its sha256 next to it
(<file>.sha256), and read back from then on, so a later numpy whose generator streams differ still
evaluates on the same bits. Names draw independent streams (the seed sequence is [seed, crc32(name)]).
The sha256 (`cgdiff.records.array_sha256`: dtype, shape and bytes) goes into every evaluation record;
a stored bank that no longer matches its sha256 is an error.
"""

from __future__ import annotations

import dataclasses
import os
import zlib

import numpy as np

from cgdiff import chunks, records
from cgdiff.metrics import inception_weights


@dataclasses.dataclass(frozen=True)
class Bank:
  """A stored standard normal array [N, ...] (float32) and where it came from."""
  noise: np.ndarray
  name: str
  seed: int
  path: str
  sha256: str

  def describe(self) -> dict:
    """What a record says about the bank: name, seed, shape, file and sha256."""
    return {"name": self.name, "seed": self.seed, "shape": list(self.noise.shape), "path": self.path,
            "sha256": self.sha256}


def default_bank_dir() -> str:
  """<cache root>/eval_banks ($CGDIFF_CACHE or ~/.cache/cgdiff): shared by every workdir."""
  return os.path.join(inception_weights.cache_root(), "eval_banks")


def generate(name: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
  """The standard normal float32 array [*shape] of bank `name` and `seed` (what noise_bank stores)."""
  stream = np.random.SeedSequence([seed, zlib.crc32(name.encode())])
  return np.random.default_rng(stream).standard_normal(shape, dtype=np.float32)


def noise_bank(directory: str | None, name: str, shape: tuple[int, ...], seed: int = 0) -> Bank:
  """The bank `name` of `shape` and `seed` in `directory` (default `default_bank_dir()`): read if stored
  (and checked against its sha256), else generated and stored."""
  shape = tuple(int(s) for s in shape)
  if not name.replace("_", "").isalnum() or seed < 0 or not shape or min(shape) < 1:
    raise ValueError(f"a bank needs an alphanumeric name, a seed >= 0 and a non-empty shape of positive "
                     f"sizes; got name={name!r}, seed={seed}, shape={shape}.")
  directory = directory or default_bank_dir()
  path = os.path.join(directory, f"{name}_s{seed}_{'x'.join(map(str, shape))}.npy")
  sha_path = path + ".sha256"
  if os.path.exists(path):
    noise = np.load(path)
    digest = records.array_sha256(noise)
    if not os.path.exists(sha_path):
      raise ValueError(f"bank {path} has no {sha_path}; delete the bank to regenerate it.")
    with open(sha_path) as f:
      expected = f.read().strip()
    if digest != expected or noise.shape != shape or noise.dtype != np.float32:
      raise ValueError(f"bank {path} (sha256 {digest[:12]}, shape {noise.shape}, {noise.dtype}) is not "
                       f"the bank written there (sha256 {expected[:12]}, shape {shape}, float32); "
                       "delete it and its .sha256 to regenerate it.")
    return Bank(noise, name, seed, path, digest)
  noise = generate(name, shape, seed)
  digest = records.array_sha256(noise)
  # The sha256 first: a concurrent reader that finds the bank also finds its sha256.
  os.makedirs(directory, exist_ok=True)
  tmp = f"{sha_path}.{os.getpid()}.tmp"
  with open(tmp, "w") as f:
    f.write(digest + "\n")
  os.replace(tmp, sha_path)
  chunks.save_atomic(path, noise)
  return Bank(noise, name, seed, path, digest)
