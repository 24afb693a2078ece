"""The space the diffusion model lives in, chosen once from config.data by `of(config)`.

  Images   a VAE's latents: the posteriors are the encoder's over the training images, samples are
           decoded to images (an 8x8 grid PNG; FID in the `eval` stage).
  Toy      004's 2-D fractal tree (cgdiff.data.toy2d): no VAE, the latent is the data; the posteriors
           are the field's Gaussian components drawn by weight (each plays one image's posterior), and
           samples are scored against exact samples of the field (SW2, a scatter plot).

The rest of the experiment code asks the chosen space (`space.has_vae`, `space.latent_shape(vae)`,
`space.write_samples(...)`) instead of testing the data set's name. This module sits below the
stages: it restores nothing from a workdir (experiments/common.py does, for the spaces with a VAE).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from cgdiff import plots, targets
from cgdiff.data import pipeline, toy2d
from cgdiff.metrics import sw2

TOY = "toy2d"
DATA_NAMES = pipeline.SOURCES + (TOY,)  # the values of config.data.name


@functools.partial(jax.jit, static_argnames="vae")
def _decode_batch(params, z, *, vae):
  return vae.apply(params, z, method=vae.decode)


def to_uint8(images: np.ndarray) -> np.ndarray:
  """[-1, 1] floats -> uint8 pixels, as a PNG would store them."""
  return np.clip(np.round((images + 1) * 127.5), 0, 255).astype(np.uint8)


class Images:
  """The latents of a VAE over config.data's images."""

  has_vae = True

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config

  def latent_shape(self, vae, image_shape: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """(h, w, C) of the VAE's latents for images of image_shape (default config.data.image_shape)."""
    height, width = (image_shape or self.config.data.image_shape)[:2]
    return (height // vae.downsample_factor, width // vae.downsample_factor, vae.latent_channels)

  @staticmethod
  def decode(vae, vae_params, latents: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Images in [-1, 1] (float32, the decoder's raw output clipped) of latents [N, h, w, C], decoded in
    batches of `batch_size` (one compilation per VAE and batch shape for the process)."""
    images = np.concatenate([np.asarray(_decode_batch(vae_params, latents[i:i + batch_size], vae=vae))
                             for i in range(0, len(latents), batch_size)])
    return np.clip(images, -1.0, 1.0)

  def write_samples(self, out_dir: str, name: str, latents: np.ndarray, *, vae, vae_params,
                    title: str) -> dict[str, Any]:
    """<name>.npz (latents, uint8 images) and <name>.png (an 8x8 grid); returns the record's fields."""
    images = self.decode(vae, vae_params, latents)
    np.savez(os.path.join(out_dir, f"{name}.npz"), latents=latents, images=to_uint8(images))
    figure = plots.plot_image_grid(images, os.path.join(out_dir, f"{name}.png"),
                                   title=f"{self.config.data.name}: {title}")
    return {"figure": figure}


@functools.lru_cache(maxsize=4)
def _toy_field(depth: int, components_per_branch: int, seed: int, data_std: float):
  return toy2d.fractal_tree_field(depth, components_per_branch, seed, data_std)


class Toy:
  """004's 2-D fractal tree: a Gaussian field whose exact score and samples are known."""

  has_vae = False

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config

  def field(self):
    """(means [K, 2], logvars [K, 2], log_weights [K]) of config.data.field."""
    field = self.config.data.field
    return _toy_field(field.depth, field.components_per_branch, field.seed, field.data_std)

  def latent_shape(self, vae=None, image_shape=None) -> tuple[int, ...]:
    del vae, image_shape
    return (2,)

  def posteriors(self) -> tuple[np.ndarray, np.ndarray]:
    """config.data.num_points components drawn by weight (seed config.seed): (mean, logvar) [N, 2]."""
    means, logvars, log_weights = self.field()
    rng = np.random.default_rng(self.config.seed)
    idx = rng.choice(means.shape[0], self.config.data.num_points, p=np.exp(log_weights))
    return means[idx].astype(np.float32), logvars[idx].astype(np.float32)

  def write_samples(self, out_dir: str, name: str, latents: np.ndarray, *, vae, vae_params,
                    title: str) -> dict[str, Any]:
    """<name>.npz (latents) and <name>.png (a scatter against as many exact samples); returns the
    record's fields, with the squared SW2 to the exact samples (128 seeded directions)."""
    del vae, vae_params, title
    means, logvars, log_weights = self.field()
    _, exact = targets.sample_gaussian_field(jax.random.PRNGKey(self.config.seed + 6), means, logvars,
                                             log_weights, latents.shape[0])
    exact = np.asarray(exact)
    bank = sw2.projection_bank(2, 128, seed=self.config.seed)
    fields = {"sw2_squared_vs_exact": sw2.sliced_wasserstein2(latents, exact, bank),
              "figure": plots.plot_samples_2d(exact, {name: latents}, os.path.join(out_dir, f"{name}.png"))}
    np.savez(os.path.join(out_dir, f"{name}.npz"), latents=latents)
    return fields


def of(config: ml_collections.ConfigDict) -> Images | Toy:
  """The latent space of config.data.name."""
  return Toy(config) if config.data.name == TOY else Images(config)
