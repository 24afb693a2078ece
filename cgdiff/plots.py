"""Matplotlib figures written as PNG files (headless: the Agg backend)."""

from __future__ import annotations

import os
from typing import Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import numpy as np  # noqa: E402


def _save(fig, path: str) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=120, bbox_inches="tight")
  plt.close(fig)
  return path


def plot_target_variances(log_snr, variances: Mapping[str, np.ndarray], path: str,
                          gate=None, title: str = "") -> str:
  """Conditional variance of each score target given z_t against log-SNR (log scale); optionally the mean
  oracle gate E[g*] on a second axis. Returns the path."""
  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  for name, values in variances.items():
    ax.plot(log_snr, values, label=name, marker=".")
  ax.set_yscale("log")
  ax.set_xlabel("log-SNR  log(alpha^2 / sigma^2)   (noise <-  -> data)")
  ax.set_ylabel("mean element-wise Var(target | z_t)")
  if gate is not None:
    ax2 = ax.twinx()
    ax2.plot(log_snr, gate, color="gray", linestyle="--", label="E[g*] (oracle gate)")
    ax2.set_ylim(-0.02, 1.02)
    ax2.set_ylabel("E[g*]")
    ax2.legend(loc="lower left")
  ax.legend(loc="upper right")
  ax.set_title(title)
  return _save(fig, path)


def plot_samples_2d(reference: np.ndarray, samples: Mapping[str, np.ndarray], path: str,
                    lim: float = 2.0) -> str:
  """Scatter plots of 2-D samples, the reference first, one panel each. Returns the path."""
  panels = {"exact": reference, **samples}
  cols = min(4, len(panels))
  rows = -(-len(panels) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
  for ax, (name, points) in zip(axes.ravel(), panels.items()):
    points = np.asarray(points)
    ax.scatter(points[:, 0], points[:, 1], s=0.5, alpha=0.5)
    ax.set_title(name, fontsize=9)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
  for ax in axes.ravel()[len(panels):]:
    ax.axis("off")
  return _save(fig, path)


def image_grid(images: np.ndarray, nrow: int = 8) -> np.ndarray:
  """Tiles images [N, H, W, C] in [-1, 1] into one uint8 [nrow*H + gaps, ncol*W + gaps, C] picture."""
  images = np.asarray(images)
  n, h, w, c = images.shape
  ncol = -(-n // nrow)
  grid = np.full((nrow * (h + 1) + 1, ncol * (w + 1) + 1, c), 255, np.uint8)
  pixels = np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)
  for i in range(n):
    r, col = divmod(i, ncol)
    grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + col * (w + 1):1 + col * (w + 1) + w] = pixels[i]
  return grid


def plot_image_grid(images: np.ndarray, path: str, nrow: int = 8, title: str = "") -> str:
  """An nrow x nrow grid (001 section 6.4) of images [N, H, W, C] in [-1, 1] as a PNG."""
  grid = image_grid(images[: nrow * nrow], nrow)
  fig, ax = plt.subplots(figsize=(grid.shape[1] / 40, grid.shape[0] / 40 + (0.3 if title else 0)))
  ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray" if grid.shape[-1] == 1 else None,
            interpolation="nearest")
  ax.axis("off")
  if title:
    ax.set_title(title, fontsize=8)
  return _save(fig, path)
