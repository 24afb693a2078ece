"""What makes a checkpoint step intact: its manifest of checksums (cgdiff.train.checkpoint writes it after
each save and checks it before each restore).

MANIFEST (cgdiff_checksums.json), written into a step directory atomically once its save has completed,
holds the size and sha256 of every file of the step, the tree path, shape, dtype and sha256 of every
array of the state, and the sha256 of the manifest itself. A step is INTACT when its manifest is
readable and every file it lists has that size and hash (`file_problem` says why not).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

import jax
import numpy as np

MANIFEST = "cgdiff_checksums.json"
_VERSION = 1
_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class ArrayRecord:
  """One array of a saved state: where it is in the tree, its shape and dtype, the sha256 of its bytes."""
  path: str
  shape: tuple[int, ...]
  dtype: str
  sha256: str


def _layout(shape: tuple[int, ...], dtype: str) -> str:
  return f"{dtype}{list(shape)}"


def file_sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(_CHUNK), b""):
      digest.update(chunk)
  return digest.hexdigest()


def array_records(tree: Any) -> list[ArrayRecord]:
  """An ArrayRecord per leaf of `tree`, in tree order (the bytes are those of the C-ordered host copy)."""
  with_paths, _ = jax.tree_util.tree_flatten_with_path(jax.device_get(tree))
  records = []
  for path, leaf in with_paths:
    array = np.asarray(leaf)
    records.append(ArrayRecord(jax.tree_util.keystr(path), tuple(array.shape), str(array.dtype),
                               hashlib.sha256(array.tobytes()).hexdigest()))
  return records


def step_files(step_dir: str) -> dict[str, dict[str, Any]]:
  """{path relative to step_dir: {"size", "sha256"}} of every file of a step but the manifest."""
  files = {}
  for root, _, names in os.walk(step_dir):
    for name in names:
      path = os.path.join(root, name)
      relative = os.path.relpath(path, step_dir)
      if relative != MANIFEST and not relative.startswith(MANIFEST):  # the manifest and its temp file
        files[relative] = {"size": os.path.getsize(path), "sha256": file_sha256(path)}
  return dict(sorted(files.items()))


def _digest(body: dict[str, Any]) -> str:
  return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def write_manifest(step_dir: str, arrays: list[ArrayRecord] | None, *, trusted: bool = False) -> None:
  """Writes step_dir's manifest (files as they are now, `arrays` if given) atomically."""
  body = {"version": _VERSION, "trusted": trusted, "files": step_files(step_dir),
          "arrays": None if arrays is None else [dataclasses.asdict(a) for a in arrays]}
  path = os.path.join(step_dir, MANIFEST)
  with open(path + ".tmp", "w") as f:
    json.dump({**body, "sha256": _digest(body)}, f)
    f.flush()
    os.fsync(f.fileno())
  os.replace(path + ".tmp", path)


def has_manifest(step_dir: str) -> bool:
  return os.path.exists(os.path.join(step_dir, MANIFEST))


def read_manifest(step_dir: str) -> dict[str, Any]:
  """The manifest of step_dir, its own digest checked.

  Raises:
    ValueError: no manifest, or one that is unreadable or altered (the message says which).
  """
  path = os.path.join(step_dir, MANIFEST)
  if not os.path.exists(path):
    raise ValueError(f"no {MANIFEST} (a run killed between the save and its checksums, or a checkpoint "
                     f"written before cgdiff verified checkpoints)")
  try:
    with open(path) as f:
      manifest = json.load(f)
    body = {k: v for k, v in manifest.items() if k != "sha256"}
    intact = manifest["sha256"] == _digest(body) and manifest["version"] == _VERSION
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
    raise ValueError(f"{MANIFEST} is unreadable ({type(error).__name__})") from None
  if not intact:
    raise ValueError(f"{MANIFEST} does not match its own checksum")
  return manifest


def file_problem(step_dir: str) -> str | None:
  """Why the checkpoint in step_dir is not intact (its manifest or a file), or None when it is."""
  try:
    manifest = read_manifest(step_dir)
  except ValueError as error:
    return str(error)
  for relative, expected in manifest["files"].items():
    path = os.path.join(step_dir, relative)
    if not os.path.isfile(path):
      return f"{relative} is missing"
    if os.path.getsize(path) != expected["size"]:
      return (f"{relative} has {os.path.getsize(path)} bytes, {expected['size']} when saved (truncated or "
              f"overwritten)")
    try:
      if file_sha256(path) != expected["sha256"]:
        return f"checksum mismatch in {relative}"
    except OSError as error:
      return f"{relative} is unreadable ({error})"
  return None


def saved_arrays(manifest: dict[str, Any]) -> list[ArrayRecord] | None:
  """The ArrayRecords of a manifest (None for a trusted one, which has none)."""
  if manifest["arrays"] is None:
    return None
  return [ArrayRecord(a["path"], tuple(a["shape"]), a["dtype"], a["sha256"]) for a in manifest["arrays"]]


def shape_differences(saved: list[ArrayRecord], like: Any) -> list[str]:
  """The arrays whose presence, shape or dtype differ between a checkpoint and `like` (arrays or
  ShapeDtypeStructs: nothing is computed), one line each."""
  saved_by_path = {a.path: a for a in saved}
  with_paths, _ = jax.tree_util.tree_flatten_with_path(like)
  wanted = {jax.tree_util.keystr(path): (tuple(x.shape), str(np.dtype(x.dtype))) for path, x in with_paths}
  lines = []
  for path, (shape, dtype) in wanted.items():
    have = saved_by_path.get(path)
    if have is None:
      lines.append(f"{path} is not in the checkpoint (the model has {_layout(shape, dtype)})")
    elif (have.shape, have.dtype) != (shape, dtype):
      lines.append(f"{path} is {_layout(have.shape, have.dtype)} in the checkpoint, "
                   f"{_layout(shape, dtype)} in the model")
  lines += [f"{path} ({_layout(a.shape, a.dtype)}) is in the checkpoint, not in the model"
            for path, a in saved_by_path.items() if path not in wanted]
  return lines


def checkpoint_steps(directory: str) -> list[int]:
  """Every checkpoint step in `directory`, intact or not, oldest first: its step directories (Orbax's
  unfinished saves have other names), listed here because Orbax does not list a step whose metadata is
  damaged."""
  names = os.listdir(directory) if os.path.isdir(directory) else []
  return sorted(int(n) for n in names if n.isdigit() and os.path.isdir(os.path.join(directory, n)))


def latest_intact_step(directory: str) -> int | None:
  """The newest step in `directory` whose files match its manifest, or None."""
  return next((s for s in reversed(checkpoint_steps(directory))
               if file_problem(os.path.join(directory, str(s))) is None), None)


