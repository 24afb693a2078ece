"""The common image layer: model range, padding, validation, and deterministic batches with exact resume.

Every image source ends here as float32 NHWC in [-1, 1] at 32x32 (Fashion-MNIST's 28x28 padded
with black, -1):

    images = load_images("fashion_mnist", "train")           # [60000, 32, 32, 1]
    batcher = Batcher(images, batch_size=128, seed=0, num_devices=jax.local_device_count())
    for step, batch in zip(range(start, total), batcher.iterate(start)):   # [D, 128 / D, 32, 32, 1]
      ...

Batch `step` is a function of (seed, step) alone: epoch = step // steps_per_epoch is shuffled by
np.random.default_rng([seed, epoch]).permutation(N) and the batch is slice step % steps_per_epoch
of it. A run restarted at step s therefore sees exactly the batches the uninterrupted run would
have seen, with no iterator state to checkpoint beyond the step itself.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator

import numpy as np

from cgdiff.data import cifar10, fashion_mnist, synthetic

IMAGE_SIZE = 32
# The image sources and the keyword arguments `load_images` passes on to each.
SOURCE_KWARGS = {"cifar10": ("download",), "fashion_mnist": (), "synthetic": ("num_images", "channels", "seed")}
SOURCES = tuple(SOURCE_KWARGS)
SPLITS = ("train", "test")
# Default sizes of the synthetic splits; the test split is drawn from a different seed stream.
SYNTHETIC_NUM_IMAGES = {"train": 10_000, "test": 2_000}
_SYNTHETIC_STREAM = {"train": None, "test": 1}


# --- range, padding, validation ------------------------------------------------------------------
def to_model_range(images: np.ndarray) -> np.ndarray:
  """uint8 pixels {0, ..., 255} -> float32 x / 127.5 - 1 in [-1, 1] (0 -> -1 and 255 -> 1 exactly); any shape."""
  images = np.asarray(images)
  if images.dtype != np.uint8:
    raise ValueError(f"to_model_range expects uint8 pixels, got dtype {images.dtype}.")
  return images.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def pad_to(images: np.ndarray, size: int = IMAGE_SIZE, value: float = -1.0) -> np.ndarray:
  """Centres images on a size x size canvas filled with `value` (-1: black in model range).

  Args:
    images: [N, H, W] (grayscale: a channel axis is added) or [N, H, W, C], H, W <= size.
    size: the output height and width.
    value: the fill.

  Returns:
    [N, size, size, C] of the input dtype; the input itself when H = W = size and it has a channel
    axis. An odd margin puts the extra row / column at the bottom / right.
  """
  images = np.asarray(images)
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4:
    raise ValueError(f"pad_to expects [N, H, W] or [N, H, W, C] images, got shape {images.shape}.")
  height, width = images.shape[1:3]
  if height > size or width > size:
    raise ValueError(f"images of size {height}x{width} do not fit in {size}x{size}.")
  if height == size and width == size:
    return images
  top, left = (size - height) // 2, (size - width) // 2
  out = np.full((images.shape[0], size, size, images.shape[3]), value, dtype=images.dtype)
  out[:, top:top + height, left:left + width] = images
  return out


def check_images(images: np.ndarray, name: str = "images") -> None:
  """Raises ValueError unless `images` is a non-empty float [N, H, W, C] array, finite, in [-1, 1]."""
  images = np.asarray(images)
  if images.ndim != 4:
    raise ValueError(f"{name} must have rank 4 (N, H, W, C), got shape {images.shape}.")
  if images.size == 0:
    raise ValueError(f"{name} is empty: shape {images.shape}.")
  if not np.issubdtype(images.dtype, np.floating):
    raise ValueError(f"{name} must be floating point in [-1, 1], got dtype {images.dtype}; "
                     "use to_model_range for uint8 pixels.")
  lo, hi = images.min(), images.max()  # NaN propagates through min / max; +-inf shows in them
  if not (np.isfinite(lo) and np.isfinite(hi)):
    bad = int(images.size - np.count_nonzero(np.isfinite(images)))
    raise ValueError(f"{name} has {bad} non-finite value(s) (NaN or inf) out of {images.size}.")
  if lo < -1.0 or hi > 1.0:
    raise ValueError(f"{name} must lie in [-1, 1], got values in [{lo:g}, {hi:g}].")


def load_images(name: str, split: str, data_dir: str | None = None, **kwargs) -> np.ndarray:
  """Loads a split of an image source as float32 [N, 32, 32, C] in [-1, 1].

  Args:
    name: "cifar10" (C = 3), "fashion_mnist" (C = 1, padded from 28x28 with -1) or "synthetic".
    split: "train" or "test".
    data_dir: where the files are (see cifar10.load, fashion_mnist.load); unused by synthetic.
    **kwargs: cifar10: download (bool). synthetic: num_images (default SYNTHETIC_NUM_IMAGES[split]),
      channels (3 or 1), seed (int; the test split uses the stream [seed, 1], so train and test
      never share images).

  Returns:
    float32 [N, 32, 32, C], validated by check_images.
  """
  if name not in SOURCE_KWARGS:
    raise ValueError(f"unknown image source {name!r}; expected one of {SOURCES}.")
  unknown = set(kwargs) - set(SOURCE_KWARGS[name])
  if unknown:
    raise TypeError(f"load_images({name!r}) got unexpected argument(s) {sorted(unknown)}; "
                    f"it accepts {sorted(SOURCE_KWARGS[name]) or 'none'}.")
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
  if name == "cifar10":
    pixels, _ = cifar10.load(split, data_dir, **kwargs)
  elif name == "fashion_mnist":
    pixels, _ = fashion_mnist.load(split, data_dir)
  else:
    seed = kwargs.get("seed", 0)
    stream = _SYNTHETIC_STREAM[split]
    pixels, _ = synthetic.generate(kwargs.get("num_images", SYNTHETIC_NUM_IMAGES[split]),
                                   image_size=IMAGE_SIZE, channels=kwargs.get("channels", 3),
                                   seed=seed if stream is None else [seed, stream])
  images = pad_to(to_model_range(pixels), IMAGE_SIZE)
  check_images(images, f"{name} {split} images")
  return images


# --- batching ------------------------------------------------------------------------------------
def shard(x, num_devices: int):
  """[B, ...] -> [num_devices, B / num_devices, ...] (numpy or jax arrays); B must divide evenly."""
  num_devices = operator.index(num_devices)
  if num_devices < 1:
    raise ValueError(f"num_devices must be >= 1, got {num_devices}.")
  if x.shape[0] % num_devices:
    raise ValueError(f"a leading axis of {x.shape[0]} does not split over {num_devices} devices; "
                     "the batch size must be a multiple of the number of devices.")
  return x.reshape((num_devices, x.shape[0] // num_devices) + tuple(x.shape[1:]))


class Batcher:
  """Shuffled batches indexed by step: batch(step) depends only on (seed, step), so resume is exact.

  Each epoch is a permutation of the N examples, np.random.default_rng([seed, epoch]); step s takes
  slice s % steps_per_epoch of epoch s // steps_per_epoch's permutation, so within an epoch every
  example appears at most once (exactly once when N is a multiple of batch_size or
  drop_remainder=False). The two most recent permutations are cached.

  Args:
    images: [N, ...] examples (usually float32 [N, H, W, C] in [-1, 1]); not copied.
    batch_size: global batch size, a multiple of num_devices, <= N.
    seed: non-negative int.
    num_devices: leading axis of every batch (jax.local_device_count() for pmap).
    drop_remainder: True: steps_per_epoch = N // batch_size and the last N % batch_size examples of
      each permutation are skipped (each epoch skips different ones). False: one more, smaller batch
      per epoch (N % batch_size must then also be a multiple of num_devices; its different shape
      recompiles a jitted step).
  """

  def __init__(self, images: np.ndarray, batch_size: int, seed: int, num_devices: int = 1,
               drop_remainder: bool = True):
    batch_size, num_devices = operator.index(batch_size), operator.index(num_devices)
    self._images = np.asarray(images)
    if self._images.ndim < 1 or self._images.shape[0] == 0:
      raise ValueError(f"Batcher needs at least one example, got shape {self._images.shape}.")
    n = self._images.shape[0]
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
      raise ValueError(f"seed must be a non-negative int, got {seed!r}.")
    if num_devices < 1:
      raise ValueError(f"num_devices must be >= 1, got {num_devices}.")
    if batch_size < 1 or batch_size > n:
      raise ValueError(f"batch_size must be in [1, N = {n}], got {batch_size}.")
    if batch_size % num_devices:
      raise ValueError(f"batch_size {batch_size} is not divisible by num_devices {num_devices}; "
                       f"use a multiple of {num_devices}.")
    remainder = n % batch_size
    if not drop_remainder and remainder % num_devices:
      raise ValueError(f"drop_remainder=False leaves a last batch of {remainder} examples, not "
                       f"divisible by num_devices {num_devices}; use drop_remainder=True or another "
                       "batch_size.")
    self._n, self._batch_size, self._seed = n, int(batch_size), int(seed)
    self._num_devices = int(num_devices)
    self._steps_per_epoch = n // batch_size + (1 if remainder and not drop_remainder else 0)
    self._cache: dict[int, np.ndarray] = {}

  @property
  def steps_per_epoch(self) -> int:
    return self._steps_per_epoch

  @property
  def num_examples(self) -> int:
    return self._n

  @property
  def batch_size(self) -> int:
    return self._batch_size

  @property
  def num_devices(self) -> int:
    return self._num_devices

  def permutation(self, epoch: int) -> np.ndarray:
    """The order of the examples in `epoch`, int64 [N]: default_rng([seed, epoch]).permutation(N)."""
    if epoch < 0:
      raise ValueError(f"epoch must be >= 0, got {epoch}.")
    epoch = int(epoch)
    if epoch not in self._cache:
      if len(self._cache) >= 2:
        del self._cache[min(self._cache)]
      self._cache[epoch] = np.random.default_rng([self._seed, epoch]).permutation(self._n)
    return self._cache[epoch]

  def indices(self, step: int) -> np.ndarray:
    """The example indices of batch `step`, int64 [batch_size] (smaller for a remainder batch)."""
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
      raise ValueError(f"step must be a non-negative int, got {step!r}.")
    epoch, position = divmod(int(step), self._steps_per_epoch)
    start = position * self._batch_size
    return self.permutation(epoch)[start:start + self._batch_size]

  def batch(self, step: int) -> np.ndarray:
    """Batch `step`: [num_devices, batch_size / num_devices, ...] (a copy)."""
    return shard(self._images[self.indices(step)], self._num_devices)

  def iterate(self, start_step: int = 0) -> Iterator[np.ndarray]:
    """batch(start_step), batch(start_step + 1), ... without end."""
    step = start_step
    while True:
      yield self.batch(step)
      step += 1

  def __iter__(self) -> Iterator[np.ndarray]:
    return self.iterate(0)
