"""UNet noise predictor eps_hat(z_t, t) for latent diffusion (001 section 3.2; improved-diffusion layout).

For the defaults on a (B, 8, 8, 4) latent (base 128, mults (1, 2, 2), 2 ResBlocks per level, attention at
8x8, 4x4 and 2x2, time embedding width 4 * 128 = 512):

    time:  sinusoidal(time_scale * t, 128) -> Dense 512 -> SiLU -> Dense 512
    in:    conv3x3 -> 128                                            8x8   skip
    down:  level 0: 2 x [ResBlock 128 + Attn]                        8x8   skip each, Downsample -> 4x4 skip
           level 1: 2 x [ResBlock 256 + Attn]                        4x4   skip each, Downsample -> 2x2 skip
           level 2: 2 x [ResBlock 256 + Attn]                        2x2   skip each
    mid:   ResBlock 256, Attn, ResBlock 256                          2x2
    up:    level 2: 3 x [concat skip, ResBlock 256 + Attn], Upsample 2x2 -> 4x4
           level 1: 3 x [concat skip, ResBlock 256 + Attn], Upsample 4x4 -> 8x8
           level 0: 3 x [concat skip, ResBlock 128 + Attn]
    out:   GroupNorm, SiLU, conv3x3 -> C (zero-initialised: eps_hat = 0 at init)

ResBlocks add the time embedding as a per-channel shift before their second GroupNorm (001's sketch);
with scale_shift_norm=True they scale and shift after it instead (improved-diffusion's option, needed
when a level has <= 32 channels: one channel per group would erase a shift, see layers.ResBlock).
Attention is applied wherever the feature map's height is in `attention_resolutions` (plus always in the
middle block, as in improved-diffusion). Time is continuous (a float per example, MATH.md section 1).
"""

from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cgdiff.models.layers import (AttentionBlock, Downsample, GroupNorm, ResBlock, TimeEmbedding,
                                  Upsample, broadcast_time, check_image_batch, conv3x3)

Array = jax.Array


class UNet(nn.Module):
  """DDPM-style UNet on NHWC latents: eps_hat = UNet(z_t, t), the same shape as z_t.

  Attributes:
    base_channels: channels of the first level; the time embedding has 4 * base_channels.
    channel_mults: channel multiplier per resolution level; len - 1 stride-2 downsamplings.
    num_res_blocks: ResBlocks per level on the way down (one more on the way up, as in DDPM).
    attention_resolutions: feature-map heights at which self-attention follows each ResBlock.
    num_heads: attention heads (must divide every level's channel count).
    dropout: ResBlock dropout rate (active when train=True; needs a 'dropout' rng).
    time_scale: t is multiplied by it before the sinusoidal embedding (1000: DDPM step units).
    out_channels: output channels; None means those of the input.
    zero_init_out: zero-initialise the last conv (eps_hat = 0 at init).
    scale_shift_norm: time conditioning by scale and shift after the ResBlocks' second GroupNorm
      (improved-diffusion's option; required when a level has <= 32 channels, see ResBlock).
  """

  base_channels: int = 128
  channel_mults: Sequence[int] = (1, 2, 2)
  num_res_blocks: int = 2
  attention_resolutions: Sequence[int] = (8, 4, 2)
  num_heads: int = 4
  dropout: float = 0.0
  time_scale: float = 1000.0
  out_channels: int | None = None
  zero_init_out: bool = True
  scale_shift_norm: bool = False

  @nn.compact
  def __call__(self, z: Array, t: Array, train: bool = False) -> Array:
    """Noise prediction.

    Args:
      z: (B, H, W, C) noisy latents; H and W divisible by 2^(len(channel_mults) - 1).
      t: (B,) continuous times (a scalar is broadcast).
      train: enables dropout.

    Returns:
      eps_hat: (B, H, W, out_channels or C).
    """
    if not self.channel_mults:
      raise ValueError("UNet.channel_mults must have at least one level.")
    num_levels = len(self.channel_mults)
    check_image_batch("UNet input z", z, 2 ** (num_levels - 1))
    t = broadcast_time(t, z.shape[0])
    attn_res = set(self.attention_resolutions)
    res_block = functools.partial(ResBlock, dropout=self.dropout, scale_shift_norm=self.scale_shift_norm)

    temb = TimeEmbedding(4 * self.base_channels, self.base_channels, self.time_scale,
                         name="time_embed")(t)                                    # (B, 4 base)
    h = conv3x3(self.base_channels, name="conv_in")(z)
    skips = [h]
    res = z.shape[1]
    for level, mult in enumerate(self.channel_mults):
      for i in range(self.num_res_blocks):
        h = res_block(self.base_channels * mult, name=f"down{level}_res{i}")(h, temb, train)
        if res in attn_res:
          h = AttentionBlock(self.num_heads, name=f"down{level}_attn{i}")(h)
        skips.append(h)
      if level != num_levels - 1:
        h = Downsample(name=f"down{level}_downsample")(h)
        skips.append(h)
        res //= 2

    h = res_block(name="mid_res0")(h, temb, train)
    h = AttentionBlock(self.num_heads, name="mid_attn")(h)
    h = res_block(name="mid_res1")(h, temb, train)

    for level in reversed(range(num_levels)):
      mult = self.channel_mults[level]
      for i in range(self.num_res_blocks + 1):
        h = jnp.concatenate([h, skips.pop()], axis=-1)
        h = res_block(self.base_channels * mult, name=f"up{level}_res{i}")(h, temb, train)
        if res in attn_res:
          h = AttentionBlock(self.num_heads, name=f"up{level}_attn{i}")(h)
      if level != 0:
        h = Upsample(name=f"up{level}_upsample")(h)
        res *= 2

    out_channels = z.shape[-1] if self.out_channels is None else self.out_channels
    h = nn.silu(GroupNorm(name="norm_out")(h))
    kernel_init = nn.initializers.zeros if self.zero_init_out else nn.initializers.lecun_normal()
    return conv3x3(out_channels, name="conv_out", kernel_init=kernel_init)(h)
