"""JSON records of runs: what was run, from which commit and configuration, and what it measured."""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import os
import platform
import subprocess
from typing import Any

import jax
import numpy as np


@functools.lru_cache(maxsize=None)
def git_commit(path: str | None = None) -> str:
  """The commit of the repository holding `path` (default: this package), with '-dirty' for local
  changes, or 'unknown' outside a git checkout. Cached: the first call (experiments.run makes it at
  start-up) fixes the answer for the process, so edits made while a run goes on do not change it."""
  cwd = path or os.path.dirname(os.path.abspath(__file__))
  try:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                            check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                           capture_output=True, text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"
  return commit + ("-dirty" if dirty else "")


def config_hash(config: Any) -> str:
  """A short hash of a configuration (an ml_collections ConfigDict or a JSON-able dict)."""
  as_dict = config.to_dict() if hasattr(config, "to_dict") else config
  text = json.dumps(as_dict, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:12]


def array_sha256(array: Any) -> str:
  """sha256 of an array's dtype, shape and C-order bytes: names a stored bank or result in a record."""
  array = np.ascontiguousarray(jax.device_get(array))
  digest = hashlib.sha256(f"{array.dtype.str}{array.shape};".encode())
  digest.update(array.tobytes())
  return digest.hexdigest()


def tree_sha256(tree: Any) -> str:
  """sha256 over the (path, array_sha256) of a pytree's leaves, sorted by path: names network parameters."""
  leaves = [(jax.tree_util.keystr(path), leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]
  digest = hashlib.sha256()
  for path, leaf in sorted(leaves, key=lambda item: item[0]):
    digest.update(f"{path}={array_sha256(leaf)};".encode())
  return digest.hexdigest()


def run_record(config: Any, **fields: Any) -> dict[str, Any]:
  """Date, commit, config and its hash, machine and versions, then `fields`."""
  as_dict = config.to_dict() if hasattr(config, "to_dict") else config
  return {
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "git_commit": git_commit(),
      "config_hash": config_hash(as_dict),
      "config": as_dict,
      "machine": {"platform": platform.platform(), "python": platform.python_version(),
                  "jax": jax.__version__, "devices": [str(d) for d in jax.devices()]},
      **fields,
  }


def relative_to(directory: str, paths: dict[str, str]) -> dict[str, str]:
  """{name: path} with each path relative to `directory`, the one a record that lists them is written to:
  a record and its figures are copied (and committed) together, and stay linked wherever they go."""
  return {name: os.path.relpath(path, directory) for name, path in paths.items()}


def write_json(path: str, record: dict[str, Any]) -> str:
  """Writes `record` as indented JSON (atomically: a half-written record never replaces a good one)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(record, f, indent=2, sort_keys=False, default=float)
    f.write("\n")
  os.replace(tmp, path)
  return path
