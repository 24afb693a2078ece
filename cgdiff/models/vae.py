"""Convolutional VAE of 001 section 3.1 (Flax linen, NHWC): architecture and parameters only.

Encoder, for the default channels (64, 128, 256) and a (B, 32, 32, 3) input:

    ConvBlock(64, stride 1)    32x32
    ConvBlock(128, stride 2)   16x16
    ConvBlock(256, stride 2)   8x8
    num_latent_res_blocks x ResBlock(256)   (001: "optionally 1-2"; default 0)
    Conv1x1(2 C) -> mean, raw logvar      each (B, 8, 8, C)

Decoder, the mirror image:

    ConvBlock(256)  8x8, num_latent_res_blocks x ResBlock(256),
    nearest x2, ConvBlock(128)  16x16, nearest x2, ConvBlock(64)  32x32,
    Conv3x3(out_channels), tanh -> x_hat in [-1, 1]

One entry of `channels` per resolution: the first is at the input size, every further one halves H and W
(a stride-2 ConvBlock), so the downsampling factor is 2^(len(channels) - 1) (4 by default: 32x32 -> 8x8).

Posterior-logvar floor (MATH.md errata 7): `encode` returns
    logvar = min_logvar + softplus(raw - min_logvar),
a smooth floor: logvar > min_logvar always, logvar ~= raw when raw >> min_logvar, and its derivative
sigmoid(raw - min_logvar) is never exactly 0, so an encoder pushed against the floor still gets a gradient
(a hard max would cut it). min_logvar = None disables the floor (logvar = raw).

The reparameterised sample z = mean + exp(logvar / 2) eps and the losses live outside the models
(cgdiff.targets.sample_posterior, the objectives).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cgdiff.models.layers import ConvBlock, ResBlock, check_image_batch, conv1x1, conv3x3

Array = jax.Array


def soft_floor(x: Array, floor: float) -> Array:
  """floor + softplus(x - floor): a smooth max(x, floor) with a nonzero gradient everywhere."""
  return floor + jax.nn.softplus(x - floor)


class VAE(nn.Module):
  """Convolutional VAE with a per-pixel diagonal Gaussian posterior (001 section 3.1).

  Attributes:
    latent_channels: C of the latent (4 for CIFAR-10, 2 for Fashion-MNIST).
    out_channels: image channels of the decoder output (3 or 1).
    channels: conv channels per resolution, from the input size down to the latent size.
    num_latent_res_blocks: residual blocks at the latent resolution, in the encoder and in the decoder.
    min_logvar: smooth floor of the posterior log-variance (None: no floor).
  """

  latent_channels: int = 4
  out_channels: int = 3
  channels: Sequence[int] = (64, 128, 256)
  num_latent_res_blocks: int = 0
  min_logvar: float | None = -10.0

  @property
  def downsample_factor(self) -> int:
    """Input size / latent size: 2^(len(channels) - 1)."""
    return 2 ** (len(self.channels) - 1)

  def setup(self):
    if not self.channels:
      raise ValueError("VAE.channels must list at least one channel count.")
    chans = tuple(self.channels)
    self.enc_blocks = [ConvBlock(c, stride=1 if i == 0 else 2) for i, c in enumerate(chans)]
    self.enc_res = [ResBlock(chans[-1]) for _ in range(self.num_latent_res_blocks)]
    self.enc_head = conv1x1(2 * self.latent_channels)
    self.dec_in = ConvBlock(chans[-1])
    self.dec_res = [ResBlock(chans[-1]) for _ in range(self.num_latent_res_blocks)]
    self.dec_blocks = [ConvBlock(c, upsample=2) for c in reversed(chans[:-1])]
    self.dec_out = conv3x3(self.out_channels)

  def encode(self, x: Array) -> tuple[Array, Array]:
    """Posterior parameters of q(z | x).

    Args:
      x: (B, H, W, out_channels) images in [-1, 1]; H and W divisible by `downsample_factor`.

    Returns:
      mean, logvar: each (B, H / f, W / f, latent_channels), f = downsample_factor; logvar floored.
    """
    check_image_batch("VAE.encode input x", x, self.downsample_factor, channels=self.out_channels)
    h = x
    for block in self.enc_blocks:
      h = block(h)
    for block in self.enc_res:
      h = block(h)
    mean, raw_logvar = jnp.split(self.enc_head(h), 2, axis=-1)
    logvar = raw_logvar if self.min_logvar is None else soft_floor(raw_logvar, self.min_logvar)
    return mean, logvar

  def decode(self, z: Array) -> Array:
    """Image from a latent.

    Args:
      z: (B, h, w, latent_channels).

    Returns:
      x_hat: (B, h f, w f, out_channels) in [-1, 1] (tanh), f = downsample_factor.
    """
    check_image_batch("VAE.decode input z", z, channels=self.latent_channels)
    h = self.dec_in(z)
    for block in self.dec_res:
      h = block(h)
    for block in self.dec_blocks:
      h = block(h)  # nearest x2, conv3x3, GroupNorm, SiLU
    return jnp.tanh(self.dec_out(h))

  def __call__(self, x: Array) -> tuple[Array, Array, Array]:
    """(mean, logvar, decode(mean)): a deterministic pass through every parameter (use it to init).

    Args:
      x: (B, H, W, out_channels).

    Returns:
      mean, logvar: (B, H / f, W / f, latent_channels); x_hat: (B, H, W, out_channels).
    """
    mean, logvar = self.encode(x)
    return mean, logvar, self.decode(mean)
