"""Fashion-MNIST from its standard IDX files: uint8 images (N, 28, 28) and int64 labels (N,).

The four files (`train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`,
`t10k-labels-idx1-ubyte`, each plain or `.gz`) are read from `data_dir`, or by default from the
directory of Debian's `dataset-fashion-mnist` package (`apt-get install dataset-fashion-mnist`).

IDX layout (big-endian): two zero bytes, a type byte (0x08 = uint8), a byte with the number of
dimensions d, then d uint32 sizes, then prod(sizes) values. Header, sizes and length are checked;
a bad file raises a ValueError that names it.
"""

from __future__ import annotations

import gzip
import os
import zlib

import numpy as np

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
SPLIT_PREFIX = {"train": "train", "test": "t10k"}
NUM_EXAMPLES = {"train": 60_000, "test": 10_000}
IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10

_UINT8 = 0x08


def read_idx(path: str, expected_ndim: int | None = None) -> np.ndarray:
  """Reads one IDX file of uint8 values (plain, or gzip when the name ends in `.gz`).

  Args:
    path: the file.
    expected_ndim: if given, the number of dimensions the header must declare (3 for images,
      1 for labels).

  Returns:
    uint8 array of the shape the header declares.

  Raises:
    ValueError (naming the file) on a bad magic number, unexpected number of dimensions, a
    corrupt gzip stream, or fewer or more bytes than the header declares.
  """
  path = os.fspath(path)
  try:
    if path.endswith(".gz"):
      with gzip.open(path, "rb") as f:
        raw = f.read()
    else:
      with open(path, "rb") as f:
        raw = f.read()
  except (EOFError, gzip.BadGzipFile, zlib.error) as e:
    raise ValueError(f"{path}: corrupt or truncated gzip stream ({e}).") from e
  if len(raw) < 4:
    raise ValueError(f"{path}: {len(raw)} bytes, too short for an IDX header (4 bytes of magic).")
  zero0, zero1, dtype, ndim = raw[:4]
  if zero0 != 0 or zero1 != 0 or dtype != _UINT8 or ndim == 0:
    raise ValueError(
        f"{path}: bad IDX magic number 0x{raw[:4].hex()}; expected 0x000008dd (uint8 data, dd "
        f"dimensions), e.g. 0x00000803 for images or 0x00000801 for labels.")
  if expected_ndim is not None and ndim != expected_ndim:
    raise ValueError(f"{path}: IDX header declares {ndim} dimension(s), expected {expected_ndim}.")
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes, the sizes need {header}).")
  shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
  expected = header + int(np.prod(shape, dtype=np.int64))
  if len(raw) < expected:
    raise ValueError(
        f"{path}: truncated IDX file: the header declares shape {shape} ({expected} bytes), "
        f"the file has {len(raw)} bytes.")
  if len(raw) > expected:
    raise ValueError(
        f"{path}: {len(raw) - expected} trailing bytes after the {expected} that the header "
        f"(shape {shape}) declares.")
  return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find(directory: str, name: str) -> str | None:
  for candidate in (os.path.join(directory, name), os.path.join(directory, name + ".gz")):
    if os.path.isfile(candidate):
      return candidate
  return None


def file_paths(split: str, data_dir: str | None = None) -> tuple[str, str]:
  """(images path, labels path) for `split`, `.gz` or plain, in `data_dir` or DEFAULT_DIR.

  Raises:
    ValueError for an unknown split; FileNotFoundError naming the paths searched and how to get them.
  """
  if split not in SPLIT_PREFIX:
    raise ValueError(f"split must be one of {sorted(SPLIT_PREFIX)}, got {split!r}.")
  directory = DEFAULT_DIR if data_dir is None else os.fspath(data_dir)
  prefix = SPLIT_PREFIX[split]
  names = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
  found = [_find(directory, name) for name in names]
  missing = [name for name, path in zip(names, found) if path is None]
  if missing:
    searched = ", ".join(os.path.join(directory, n) + "[.gz]" for n in missing)
    raise FileNotFoundError(
        f"Fashion-MNIST {split} split not found: searched {searched}. Install it with "
        f"`apt-get install dataset-fashion-mnist` (files go to {DEFAULT_DIR}), or put "
        f"{' and '.join(n + '.gz' for n in names)} (from "
        f"https://github.com/zalandoresearch/fashion-mnist) in a directory and pass it as data_dir.")
  return found[0], found[1]


def load(split: str, data_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Loads a Fashion-MNIST split.

  Args:
    split: "train" (60000 examples) or "test" (10000).
    data_dir: directory with the IDX files; default DEFAULT_DIR (Debian's dataset-fashion-mnist).

  Returns:
    (images uint8 [N, 28, 28], labels int64 [N]) with labels in 0..9.

  Raises:
    FileNotFoundError if the files are missing; ValueError (naming the file) if one is malformed or
    images and labels disagree.
  """
  images_path, labels_path = file_paths(split, data_dir)
  images = read_idx(images_path, expected_ndim=3)
  labels = read_idx(labels_path, expected_ndim=1)
  if images.shape[1:] != IMAGE_SHAPE:
    raise ValueError(f"{images_path}: images of size {images.shape[1:]}, expected {IMAGE_SHAPE}.")
  if labels.shape[0] != images.shape[0]:
    raise ValueError(
        f"{labels_path}: {labels.shape[0]} labels for {images.shape[0]} images in {images_path}.")
  if labels.size and labels.max() >= NUM_CLASSES:
    raise ValueError(f"{labels_path}: label {labels.max()} outside 0..{NUM_CLASSES - 1}.")
  return images, labels.astype(np.int64)
