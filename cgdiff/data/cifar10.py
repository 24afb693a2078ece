"""CIFAR-10: uint8 images (N, 32, 32, 3) and int64 labels (N,); 50000 train, 10000 test.

Sources, in order:
  1. the standard python version in `data_dir`: the extracted `cifar-10-batches-py/` directory
     (pickled `data_batch_1` .. `data_batch_5`, `test_batch`), or the archive
     `cifar-10-python.tar.gz`;
  2. `tensorflow_datasets` ("cifar10"), if it is installed (imported only here, lazily);
  3. with download=True, the archive fetched from URL into `data_dir` and checked against MD5.
Otherwise a FileNotFoundError says where to put which file.

Each pickled batch is a dict with b"data": uint8 (n, 3072), each row a 3x32x32 image in CHW
order, and b"labels": n ints in 0..9. A corrupt archive or a batch of the wrong shape raises a
ValueError that names the file.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tarfile
import urllib.request
import zlib
from typing import Any, BinaryIO

import numpy as np

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE = "cifar-10-python.tar.gz"
BATCH_DIR = "cifar-10-batches-py"
BATCHES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
# Checked on every load; tests built on tiny fake archives monkeypatch this.
NUM_EXAMPLES = {"train": 50_000, "test": 10_000}
DEFAULT_DATA_DIR = os.path.join(os.path.expanduser("~"), ".cache", "cgdiff", "cifar10")
NUM_CLASSES = 10

_CORRUPT = (tarfile.TarError, EOFError, zlib.error, pickle.UnpicklingError, OSError, KeyError,
            AttributeError, IndexError, TypeError)


def _import_tfds() -> Any | None:
  """tensorflow_datasets if importable, else None (tests monkeypatch this to None)."""
  try:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None
  return tfds


def _decode_batch(batch: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
  """A pickled batch dict -> (uint8 [n, 32, 32, 3], int64 [n]); ValueError naming `where`."""
  if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
    keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
    raise ValueError(f"{where}: expected a dict with b'data' and b'labels', got {keys}.")
  data = np.asarray(batch[b"data"])
  labels = np.asarray(batch[b"labels"])
  if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
    raise ValueError(f"{where}: b'data' must be uint8 (n, 3072), got {data.dtype} {data.shape}.")
  if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(
        f"{where}: b'labels' must be {data.shape[0]} integers, got {labels.dtype} {labels.shape}.")
  if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
    raise ValueError(f"{where}: labels outside 0..{NUM_CLASSES - 1}: [{labels.min()}, {labels.max()}].")
  images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), labels.astype(np.int64)


def _unpickle(f: BinaryIO, where: str) -> tuple[np.ndarray, np.ndarray]:
  try:
    batch = pickle.load(f, encoding="bytes")
  except _CORRUPT + (ValueError,) as e:
    raise ValueError(f"{where}: corrupt or truncated pickle ({type(e).__name__}: {e}).") from e
  return _decode_batch(batch, where)


def _load_dir(directory: str, split: str) -> list[tuple[np.ndarray, np.ndarray]]:
  parts = []
  for name in BATCHES[split]:
    path = os.path.join(directory, name)
    if not os.path.isfile(path):
      raise FileNotFoundError(
          f"{path} is missing: {directory} must hold {', '.join(BATCHES['train'] + BATCHES['test'])} "
          f"(extract {ARCHIVE} from {URL}).")
    with open(path, "rb") as f:
      parts.append(_unpickle(f, path))
  return parts


def _load_archive(path: str, split: str) -> list[tuple[np.ndarray, np.ndarray]]:
  parts = []
  try:
    with tarfile.open(path, "r:gz") as tar:
      for name in BATCHES[split]:
        member = f"{BATCH_DIR}/{name}"
        where = f"{path}:{member}"
        try:
          f = tar.extractfile(member)
        except KeyError as e:
          raise ValueError(f"{path}: the archive has no member {member}.") from e
        if f is None:
          raise ValueError(f"{path}: {member} is not a regular file.")
        with f:
          parts.append(_unpickle(f, where))
  except _CORRUPT as e:
    raise ValueError(f"{path}: corrupt or truncated archive ({type(e).__name__}: {e}).") from e
  return parts


def _load_tfds(tfds: Any, split: str, download: bool) -> tuple[np.ndarray, np.ndarray]:
  data = tfds.as_numpy(tfds.load("cifar10", split=split, batch_size=-1, download=download))
  return np.asarray(data["image"], np.uint8), np.asarray(data["label"], np.int64)


def md5sum(path: str, chunk_size: int = 1 << 20) -> str:
  """Hex MD5 digest of a file."""
  digest = hashlib.md5()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(chunk_size), b""):
      digest.update(chunk)
  return digest.hexdigest()


def download_archive(data_dir: str) -> str:
  """Fetches URL to data_dir/ARCHIVE, checks its MD5, returns the path (network; never in tests)."""
  os.makedirs(data_dir, exist_ok=True)
  path = os.path.join(data_dir, ARCHIVE)
  partial = path + ".part"
  urllib.request.urlretrieve(URL, partial)
  digest = md5sum(partial)
  if digest != MD5:
    os.remove(partial)
    raise ValueError(f"{URL}: downloaded file has MD5 {digest}, expected {MD5}; try again.")
  os.replace(partial, path)
  return path


def _check_counts(images: np.ndarray, split: str, source: str) -> None:
  expected = NUM_EXAMPLES[split]
  if images.shape[0] != expected:
    raise ValueError(f"{source}: {images.shape[0]} {split} images, expected {expected}.")
  if images.shape[1:] != (32, 32, 3) or images.dtype != np.uint8:
    raise ValueError(f"{source}: images {images.dtype} {images.shape[1:]}, expected uint8 (32, 32, 3).")


def load(split: str, data_dir: str | None = None,
         download: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """Loads a CIFAR-10 split.

  Args:
    split: "train" (50000 examples) or "test" (10000).
    data_dir: directory holding `cifar-10-batches-py/` or `cifar-10-python.tar.gz` (the directory
      `cifar-10-batches-py` itself is accepted too); default DEFAULT_DATA_DIR.
    download: let tensorflow_datasets (if installed) download into its own directory, and if it is
      absent or fails, fetch the archive into data_dir and check its MD5.

  Returns:
    (images uint8 [N, 32, 32, 3] NHWC, labels int64 [N]).

  Raises:
    FileNotFoundError saying where to put which file; ValueError (naming the file) for a corrupt
    archive, a malformed batch, or a wrong number of examples.
  """
  if split not in BATCHES:
    raise ValueError(f"split must be one of {sorted(BATCHES)}, got {split!r}.")
  directory = DEFAULT_DATA_DIR if data_dir is None else os.fspath(data_dir)
  extracted = os.path.join(directory, BATCH_DIR)
  archive = os.path.join(directory, ARCHIVE)

  if os.path.isdir(extracted):
    source, parts = extracted, _load_dir(extracted, split)
  elif os.path.isfile(os.path.join(directory, BATCHES["test"][0])):
    source, parts = directory, _load_dir(directory, split)
  elif os.path.isfile(archive):
    source, parts = archive, _load_archive(archive, split)
  else:
    tfds = _import_tfds()
    tfds_error = None
    if tfds is not None:
      try:
        images, labels = _load_tfds(tfds, split, download)
      except Exception as e:  # pylint: disable=broad-except  (tfds raises many types when not prepared)
        tfds_error = e
      else:
        _check_counts(images, split, "tensorflow_datasets cifar10")
        return images, labels
    if download:  # tensorflow_datasets absent or failed: fetch the archive ourselves
      source = download_archive(directory)
      parts = _load_archive(source, split)
    else:
      hint = (f" tensorflow_datasets is installed but failed: {type(tfds_error).__name__}: "
              f"{tfds_error}." if tfds_error is not None else "")
      raise FileNotFoundError(
          f"CIFAR-10 not found: put {ARCHIVE} (from {URL}, MD5 {MD5}) at {archive}, or its extracted "
          f"{BATCH_DIR}/ directory at {extracted}; or pass download=True (or another data_dir)."
          + hint)
  images = np.concatenate([p[0] for p in parts])
  labels = np.concatenate([p[1] for p in parts])
  _check_counts(images, split, source)
  return images, labels
