"""Arrays computed chunk by chunk and saved as they come, so that a killed computation resumes where it
stopped (the evaluation's generated latents and Inception features, experiments/fid_halves.py's features).

    store = ChunkStore.keyed(root, "samples", settings)       # <root>/samples_<hash of settings>/
    latents = store.array("latents", lambda start, stop: f(start, stop), total=10_000, chunk=1_000)

Chunk i of an array holds rows [i chunk, min((i + 1) chunk, total)) and lives in
<directory>/<name>_<start:06d>_<stop:06d>.npy. It is written atomically (a temporary file renamed into
place), so a kill leaves the whole chunk or none of it. A chunk on disk is loaded instead of computed.
The chunk boundaries depend on (total, chunk) alone: a resumed run asks `fn` for exactly the slices the
uninterrupted run asked for, and a deterministic `fn` gives the same bits.

Beside each chunk, <chunk>.seconds.json holds the seconds `fn` took to compute it, written before the
chunk itself (a kill between the two leaves a timing without its chunk, which is not counted and is
written again with the chunk). `compute_seconds` sums them: the cost of an array over every process that
computed a part of it, where a resumed process's own wall time counts only the chunks it computed.

What the arrays depend on must name the directory: `ChunkStore.keyed` hashes `settings` into the name
(`records.config_hash`) and writes them to settings.json, and a store opened again with other settings
is an error (not a silent mix of chunks computed under different settings).
"""

from __future__ import annotations

import glob
import json
import os
import time
from typing import Any, Callable

import numpy as np
from absl import logging

from cgdiff import records

SETTINGS_FILE = "settings.json"
SECONDS_SUFFIX = ".seconds.json"
# Matches chunk_path's names and not save_atomic's temporary files.
CHUNK_GLOB = "*_{0}_{0}.npy".format("[0-9]" * 6)


def round_up(value: int, multiple: int) -> int:
  """The smallest multiple of `multiple` >= value (a chunk of whole batches)."""
  return -(-value // multiple) * multiple


def save_atomic(path: str, array: np.ndarray) -> str:
  """np.save to a temporary file, then rename it to `path`: a reader never sees half an array."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.{os.getpid()}.tmp.npy"
  np.save(tmp, array)
  os.replace(tmp, path)
  return path


class ChunkStore:
  """A directory of arrays computed chunk by chunk under fixed settings.

  `computed` and `loaded` count the chunks this object computed and found on disk (what a resumed run
  did not redo).
  """

  def __init__(self, directory: str, settings: dict[str, Any] | None = None):
    self.directory = directory
    self.computed = 0
    self.loaded = 0
    os.makedirs(directory, exist_ok=True)
    if settings is not None:
      self._check_settings(json.loads(json.dumps(settings, sort_keys=True, default=str)))

  @classmethod
  def keyed(cls, root: str, prefix: str, settings: dict[str, Any]) -> ChunkStore:
    """The store <root>/<prefix>_<records.config_hash(settings)>/ (created if absent)."""
    return cls(os.path.join(root, f"{prefix}_{records.config_hash(settings)}"), settings)

  def _check_settings(self, settings: dict[str, Any]) -> None:
    path = os.path.join(self.directory, SETTINGS_FILE)
    if os.path.exists(path):
      with open(path) as f:
        stored = json.load(f)
      if stored != settings:
        changed = sorted(k for k in set(stored) | set(settings) if stored.get(k) != settings.get(k))
        raise ValueError(f"{self.directory} holds chunks computed with other settings (differing in "
                         f"{changed}); use another directory or delete it.")
      return
    records.write_json(path, settings)

  def chunk_path(self, name: str, start: int, stop: int) -> str:
    return os.path.join(self.directory, f"{name}_{start:06d}_{stop:06d}.npy")

  def array(self, name: str, fn: Callable[[int, int], Any], total: int, chunk: int,
            label: str | None = None) -> np.ndarray:
    """Rows [0, total) of array `name`: fn(start, stop) -> rows [start, stop) ([stop - start, ...]),
    called only for the chunks not on disk, each saved as soon as it is computed."""
    if total < 1 or chunk < 1:
      raise ValueError(f"total and chunk must be >= 1, got total={total}, chunk={chunk}.")
    parts = []
    for start in range(0, total, chunk):
      stop = min(start + chunk, total)
      path = self.chunk_path(name, start, stop)
      stored = os.path.exists(path)
      began = time.perf_counter()
      part = np.load(path) if stored else np.asarray(fn(start, stop))
      if part.shape[:1] != (stop - start,):
        source = f"chunk {path}" if stored else f"fn({start}, {stop})"
        raise ValueError(f"{source} has shape {part.shape}, expected {stop - start} rows.")
      if stored:
        self.loaded += 1
      else:
        records.write_json(path + SECONDS_SUFFIX, {"seconds": time.perf_counter() - began})
        save_atomic(path, part)
        self.computed += 1
        logging.info("%s: rows %d..%d of %d -> %s", label or name, start, stop, total, path)
      parts.append(part)
    return np.concatenate(parts)

  def load(self, name: str, total: int, chunk: int) -> np.ndarray:
    """Rows [0, total) of array `name` from the chunks on disk only; FileNotFoundError naming the first
    missing chunk (computed under another chunk size, or never)."""
    def missing(start: int, stop: int):
      raise FileNotFoundError(f"{self.chunk_path(name, start, stop)}: no such chunk (rows {start}..{stop} of "
                              f"{total} in chunks of {chunk}).")
    return self.array(name, missing, total, chunk)

  def compute_seconds(self) -> float | None:
    """Seconds spent computing the chunks on disk in this store, by whichever processes computed them;
    None if a chunk has no timing (saved by code older than the timings)."""
    total = 0.0
    for path in glob.glob(os.path.join(self.directory, CHUNK_GLOB)):
      if not os.path.exists(path + SECONDS_SUFFIX):
        return None
      with open(path + SECONDS_SUFFIX) as f:
        total += json.load(f)["seconds"]
    return total
