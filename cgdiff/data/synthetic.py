"""Procedural shape images: a data set with real structure that needs no download.

Four classes, one shape per image at a random position, size, rotation and colour:
  0 disc, 1 square (rotated), 2 ring, 3 stripes (a striped disc).
The background is a plain (half the images) or linear-gradient dark colour, the shape a light
one: every channel keeps a contrast of at least 0.1 between shape and background, and the classes
differ in their mean image (a light blob of a class-specific area and profile), not only in shape.
Edges are anti-aliased by a one-pixel ramp of a signed distance, coverage = clip(1/2 - sdf / pixel,
0, 1).

Everything is a function of `seed` alone: all parameters come from one draw of a (N, P) uniform
table, so image i depends only on (seed, i), and `generate(n, seed=s)[:k]` equals
`generate(k, seed=s)`. Rendering is vectorised over chunks of images (10000 images of 32x32x3 in
about half a second on one CPU core).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

CLASS_NAMES = ("disc", "square", "ring", "stripes")
NUM_CLASSES = len(CLASS_NAMES)
_NUM_PARAMS = 18
_CHUNK = 2048
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def _coverage(u: np.ndarray, labels: np.ndarray, size: int) -> np.ndarray:
  """Anti-aliased shape coverage in [0, 1], float32 [n, size, size], from parameter rows u [n, P]."""
  pixel = np.float32(1.0 / size)
  grid = (np.arange(size, dtype=np.float32) + 0.5) * pixel
  sdf = np.empty((u.shape[0], size, size), np.float32)
  for label in range(NUM_CLASSES):
    idx = np.flatnonzero(labels == label)
    if idx.size == 0:
      continue
    col = lambda j: u[idx, j, None, None]  # [m, 1, 1], broadcasts against the pixel grid
    radius = 0.14 + 0.16 * col(1)  # in image widths
    cx = radius + (1 - 2 * radius) * col(2)
    cy = radius + (1 - 2 * radius) * col(3)
    dx, dy = grid[None, None, :] - cx, grid[None, :, None] - cy  # [m, 1, size], [m, size, 1]
    dist = np.sqrt(dx * dx + dy * dy)
    if label == 0:  # disc
      sdf[idx] = dist - radius
      continue
    theta = np.float32(np.pi) * col(4)
    along = dx * np.cos(theta) + dy * np.sin(theta)
    if label == 1:  # square of side 2 r, rotated by theta
      across = dy * np.cos(theta) - dx * np.sin(theta)
      sdf[idx] = np.maximum(np.abs(along), np.abs(across)) - radius
    elif label == 2:  # ring of width 0.3 - 0.5 r
      sdf[idx] = np.abs(dist - radius) - 0.5 * radius * (0.3 + 0.2 * col(5))
    else:  # stripes of period 0.15 - 0.25 image widths and duty 1/2, inside a disc of radius 1.1 r
      period = 0.15 + 0.1 * col(5)
      phase = along / period + col(6)
      stripe = (np.abs(phase - np.floor(phase) - 0.5) - 0.25) * period
      sdf[idx] = np.maximum(stripe, dist - 1.1 * radius)
  sdf *= -1.0 / pixel
  sdf += 0.5
  return np.clip(sdf, 0.0, 1.0, out=sdf)


def _colours(u: np.ndarray, channels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(shape, background start, background end) colours, float32 [n, channels] each.

  Dark backgrounds in [0, 0.45]^3 with light shapes in [0.55, 1]^3. Compositing is linear in the
  colours, so the luminance of a grayscale image is taken here, on colours, not on pixels.
  """
  light = 0.55 + 0.45 * u[:, 7:10]
  dark0 = 0.45 * u[:, 10:13]
  dark1 = np.where(u[:, 16:17] < 0.5, 0.45 * u[:, 13:16], dark0)  # half the images: plain
  if channels == 1:
    light, dark0, dark1 = (c @ _LUMA[:, None] for c in (light, dark0, dark1))
  return light, dark0, dark1


def _ramp(u: np.ndarray, size: int) -> np.ndarray:
  """Linear background gradient in [0, 1] across the image at angle 2 pi u[:, 17], [n, size, size]."""
  grid = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
  phi = np.float32(2 * np.pi) * u[:, 17, None, None]
  ramp = 0.5 + grid[None, None, :] * np.cos(phi) + grid[None, :, None] * np.sin(phi)
  return np.clip(ramp, 0.0, 1.0, out=ramp)


def generate(num_images: int, image_size: int = 32, channels: int = 3,
             seed: int | Sequence[int] = 0) -> tuple[np.ndarray, np.ndarray]:
  """Deterministic procedural shape images.

  Args:
    num_images: N >= 0.
    image_size: height and width in pixels (>= 8).
    channels: 3 (RGB) or 1 (luminance of the RGB image).
    seed: a non-negative int or a sequence of them (np.random.default_rng's seed).

  Returns:
    (images uint8 [N, image_size, image_size, channels], labels int64 [N] in 0..3, see CLASS_NAMES).
  """
  if num_images < 0:
    raise ValueError(f"num_images must be >= 0, got {num_images}.")
  if image_size < 8:
    raise ValueError(f"image_size must be >= 8, got {image_size}.")
  if channels not in (1, 3):
    raise ValueError(f"channels must be 1 or 3, got {channels}.")
  params = np.random.default_rng(seed).random((num_images, _NUM_PARAMS)).astype(np.float32)
  labels = np.minimum((params[:, 0] * NUM_CLASSES).astype(np.int64), NUM_CLASSES - 1)
  images = np.empty((num_images, image_size, image_size, channels), np.uint8)
  for start in range(0, num_images, _CHUNK):
    chunk = slice(start, start + _CHUNK)
    u = params[chunk]
    coverage = _coverage(u, labels[chunk], image_size)  # [n, H, W]
    ramp = _ramp(u, image_size)
    light, dark0, dark1 = (c[:, :, None, None] for c in _colours(u, channels))  # [n, C, 1, 1]
    for ch in range(channels):
      value = dark0[:, ch] + (dark1[:, ch] - dark0[:, ch]) * ramp  # background
      value += (light[:, ch] - value) * coverage
      value *= 255.0
      value += 0.5  # round to nearest on the cast (values are >= 0)
      images[chunk, ..., ch] = value.astype(np.uint8)
  return images, labels
