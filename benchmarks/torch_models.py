"""001's networks in plain eager PyTorch (NCHW): the comparator of cgdiff.models, layer for layer.

    VAE         001 section 3.1: ConvBlocks (conv3x3 -> GroupNorm -> SiLU), 1x1 head -> (mean, logvar)
    UNet        001 section 3.2: sinusoidal time MLP, ResBlocks with GroupNorm, attention, skip concat
    CriticGate  001 section 3.3 (network unspecified there): cgdiff's gate, g(z_t, t) in [0, 1]

Written the way a PyTorch user would write them from 001 (nn.Conv2d / nn.GroupNorm / nn.Linear,
F.scaled_dot_product_attention), with the sizes and options of cgdiff's modules so that parameter
counts and FLOPs are the same: the group rule `group_count`, GroupNorm epsilon 1e-6, a single qkv 1x1
conv (the parameters of 001's three), the time embedding through SiLU before each ResBlock's projection,
continuous time scaled by `time_scale`, and cgdiff's initialisation of the last layers (zero output conv,
gate head with zero weight and bias `init_logit`). Where 001's sketch differs (integer time steps,
GroupNorm(32, ch) for every width) cgdiff's choice is taken: the cost is the same.

Submodules carry the names of the Flax modules' parameter scopes (`down0_res0.conv1`, `enc_blocks_1.norm`,
...), so `flax_to_torch_state` maps a cgdiff parameter tree onto a torch module by name.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from flax import traverse_util
from torch import nn

from cgdiff.models.layers import GROUP_NORM_EPSILON, group_count

Tensor = torch.Tensor


def group_norm(channels: int) -> nn.GroupNorm:
  """nn.GroupNorm with cgdiff's group rule (001's min(32, C) where it divides C) and epsilon."""
  return nn.GroupNorm(group_count(channels), channels, eps=GROUP_NORM_EPSILON)


def conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
  """3x3 convolution with padding=1 (001)."""
  return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1)


def sinusoidal_embedding(t: Tensor, dim: int, scale: float, max_period: float = 10_000.0) -> Tensor:
  """[sin(scale t w_k), cos(scale t w_k)], w_k = max_period^(-k / half): t (B,) -> (B, dim)."""
  half = dim // 2
  freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
  args = (scale * t.float())[:, None] * freqs[None, :]
  emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
  return F.pad(emb, (0, 1)) if dim % 2 else emb


class TimeEmbedding(nn.Module):
  """sinusoidal(t, embed_dim) -> Linear(features) -> SiLU -> Linear(features): (B,) -> (B, features)."""

  def __init__(self, embed_dim: int, features: int, scale: float = 1000.0):
    super().__init__()
    self.embed_dim, self.scale = embed_dim, scale
    self.dense0 = nn.Linear(embed_dim, features)
    self.dense1 = nn.Linear(features, features)

  def forward(self, t: Tensor) -> Tensor:
    return self.dense1(F.silu(self.dense0(sinusoidal_embedding(t, self.embed_dim, self.scale))))


class ConvBlock(nn.Module):
  """conv3x3(stride) -> GroupNorm -> SiLU (001 section 3.1): (B, C_in, H, W) -> (B, out, H/s, W/s)."""

  def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
    super().__init__()
    self.conv = conv3x3(in_ch, out_ch, stride)
    self.norm = group_norm(out_ch)

  def forward(self, x: Tensor) -> Tensor:
    return F.silu(self.norm(self.conv(x)))


class ResBlock(nn.Module):
  """GN-SiLU-conv3x3, + Linear(SiLU(temb)) per channel, GN-SiLU-conv3x3, + skip (1x1 if C changes).

  scale_shift_norm: GN(h) * (1 + s) + b with [s, b] = Linear(SiLU(temb)) instead of the additive shift.
  time_dim None: no time input (the VAE's latent-resolution blocks).
  """

  def __init__(self, in_ch: int, out_ch: int, time_dim: int | None = None, dropout: float = 0.0,
               scale_shift_norm: bool = False):
    super().__init__()
    self.scale_shift_norm = scale_shift_norm
    self.norm1 = group_norm(in_ch)
    self.conv1 = conv3x3(in_ch, out_ch)
    if time_dim is not None:
      self.time_proj = nn.Linear(time_dim, 2 * out_ch if scale_shift_norm else out_ch)
    self.norm2 = group_norm(out_ch)
    self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
    self.conv2 = conv3x3(out_ch, out_ch)
    if in_ch != out_ch:
      self.skip = nn.Conv2d(in_ch, out_ch, 1)

  def forward(self, x: Tensor, temb: Tensor | None = None) -> Tensor:
    """x: (B, C_in, H, W); temb: (B, time_dim) or None -> (B, out_ch, H, W)."""
    h = self.conv1(F.silu(self.norm1(x)))
    if temb is None:
      h = self.norm2(h)
    elif self.scale_shift_norm:
      scale, shift = self.time_proj(F.silu(temb))[:, :, None, None].chunk(2, dim=1)
      h = self.norm2(h) * (1.0 + scale) + shift
    else:
      h = self.norm2(h + self.time_proj(F.silu(temb))[:, :, None, None])
    h = self.conv2(self.dropout(F.silu(h)))
    return (self.skip(x) if hasattr(self, "skip") else x) + h


class AttentionBlock(nn.Module):
  """GroupNorm -> qkv 1x1 conv -> multi-head softmax attention over H*W -> 1x1 projection, residual."""

  def __init__(self, channels: int, num_heads: int = 4):
    super().__init__()
    self.num_heads = num_heads
    self.norm = group_norm(channels)
    self.qkv = nn.Conv2d(channels, 3 * channels, 1)
    self.proj = nn.Conv2d(channels, channels, 1)

  def forward(self, x: Tensor) -> Tensor:
    """x: (B, C, H, W) -> (B, C, H, W); logits scaled by (C / heads)^-1/2 as in 001."""
    b, c, hgt, wid = x.shape
    qkv = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, hgt * wid)
    q, k, v = (u.transpose(-1, -2) for u in qkv.unbind(1))            # each (B, heads, HW, head_dim)
    out = F.scaled_dot_product_attention(q, k, v)                       # (B, heads, HW, head_dim)
    return x + self.proj(out.transpose(-1, -2).reshape(b, c, hgt, wid))


class Downsample(nn.Module):
  """Stride-2 conv3x3."""

  def __init__(self, channels: int):
    super().__init__()
    self.conv = conv3x3(channels, channels, stride=2)

  def forward(self, x: Tensor) -> Tensor:
    return self.conv(x)


class Upsample(nn.Module):
  """Nearest x2, then conv3x3."""

  def __init__(self, channels: int):
    super().__init__()
    self.conv = conv3x3(channels, channels)

  def forward(self, x: Tensor) -> Tensor:
    return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class UNet(nn.Module):
  """The UNet of 001 section 3.2 / cgdiff.models.UNet on NCHW latents: eps_hat = UNet(z_t, t).

  The same attributes as the Flax module, plus `resolution` (the input height, which decides where
  attention goes; the Flax module reads it from its input).
  """

  def __init__(self, in_channels: int = 4, resolution: int = 8, base_channels: int = 128,
               channel_mults: Sequence[int] = (1, 2, 2), num_res_blocks: int = 2,
               attention_resolutions: Sequence[int] = (8, 4, 2), num_heads: int = 4, dropout: float = 0.0,
               time_scale: float = 1000.0, out_channels: int | None = None, zero_init_out: bool = True,
               scale_shift_norm: bool = False):
    super().__init__()
    time_dim = 4 * base_channels
    self.time_embed = TimeEmbedding(base_channels, time_dim, time_scale)
    self.conv_in = conv3x3(in_channels, base_channels)
    res_block = lambda cin, cout: ResBlock(cin, cout, time_dim, dropout, scale_shift_norm)
    # The forward pass is a list of (kind, module): "res" blocks take temb, "push" saves a skip,
    # "cat" concatenates the last saved skip, "call" is a plain module call.
    self.plan: list[tuple[str, nn.Module | None]] = []
    ch, res, skip_ch = base_channels, resolution, [base_channels]

    def add(kind: str, name: str | None, module: nn.Module | None = None) -> None:
      if module is not None:
        self.add_module(name, module)
      self.plan.append((kind, module))

    for level, mult in enumerate(channel_mults):
      for i in range(num_res_blocks):
        add("res", f"down{level}_res{i}", res_block(ch, base_channels * mult))
        ch = base_channels * mult
        if res in attention_resolutions:
          add("call", f"down{level}_attn{i}", AttentionBlock(ch, num_heads))
        add("push", None)
        skip_ch.append(ch)
      if level != len(channel_mults) - 1:
        add("call", f"down{level}_downsample", Downsample(ch))
        add("push", None)
        skip_ch.append(ch)
        res //= 2
    add("res", "mid_res0", res_block(ch, ch))
    add("call", "mid_attn", AttentionBlock(ch, num_heads))
    add("res", "mid_res1", res_block(ch, ch))
    for level in reversed(range(len(channel_mults))):
      for i in range(num_res_blocks + 1):
        add("cat", None)
        add("res", f"up{level}_res{i}", res_block(ch + skip_ch.pop(), base_channels * channel_mults[level]))
        ch = base_channels * channel_mults[level]
        if res in attention_resolutions:
          add("call", f"up{level}_attn{i}", AttentionBlock(ch, num_heads))
      if level != 0:
        add("call", f"up{level}_upsample", Upsample(ch))
        res *= 2
    self.norm_out = group_norm(ch)
    self.conv_out = conv3x3(ch, in_channels if out_channels is None else out_channels)
    if zero_init_out:
      nn.init.zeros_(self.conv_out.weight)
      nn.init.zeros_(self.conv_out.bias)

  def forward(self, z: Tensor, t: Tensor) -> Tensor:
    """z: (B, C, H, W) noisy latents; t: (B,) continuous times -> eps_hat (B, C_out, H, W)."""
    temb = self.time_embed(t)
    h = self.conv_in(z)
    skips = [h]
    for kind, module in self.plan:
      if kind == "push":
        skips.append(h)
      elif kind == "cat":
        h = torch.cat([h, skips.pop()], dim=1)
      elif kind == "res":
        h = module(h, temb)
      else:
        h = module(h)
    return self.conv_out(F.silu(self.norm_out(h)))


class VAE(nn.Module):
  """The VAE of 001 section 3.1 / cgdiff.models.VAE on NCHW images, same attributes."""

  def __init__(self, latent_channels: int = 4, out_channels: int = 3,
               channels: Sequence[int] = (64, 128, 256), num_latent_res_blocks: int = 0,
               min_logvar: float | None = -10.0):
    super().__init__()
    self.min_logvar = min_logvar
    chans = tuple(channels)
    self.num_enc, self.num_res, self.num_dec = len(chans), num_latent_res_blocks, len(chans) - 1
    for i, c in enumerate(chans):
      in_ch, stride = (out_channels, 1) if i == 0 else (chans[i - 1], 2)
      self.add_module(f"enc_blocks_{i}", ConvBlock(in_ch, c, stride))
    for i in range(num_latent_res_blocks):
      self.add_module(f"enc_res_{i}", ResBlock(chans[-1], chans[-1]))
      self.add_module(f"dec_res_{i}", ResBlock(chans[-1], chans[-1]))
    self.enc_head = nn.Conv2d(chans[-1], 2 * latent_channels, 1)
    self.dec_in = ConvBlock(latent_channels, chans[-1])
    up = chans[::-1]
    for i in range(self.num_dec):
      self.add_module(f"dec_blocks_{i}", ConvBlock(up[i], up[i + 1]))
    self.dec_out = conv3x3(chans[0], out_channels)

  def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
    """x: (B, 3, H, W) in [-1, 1] -> mean, logvar (B, C, H/f, W/f); logvar smoothly floored."""
    h = x
    for i in range(self.num_enc):
      h = self.get_submodule(f"enc_blocks_{i}")(h)
    for i in range(self.num_res):
      h = self.get_submodule(f"enc_res_{i}")(h)
    mean, logvar = self.enc_head(h).chunk(2, dim=1)
    if self.min_logvar is not None:
      logvar = self.min_logvar + F.softplus(logvar - self.min_logvar)
    return mean, logvar

  def decode(self, z: Tensor) -> Tensor:
    """z: (B, C, h, w) -> x_hat (B, 3, h f, w f) in [-1, 1]."""
    h = self.dec_in(z)
    for i in range(self.num_res):
      h = self.get_submodule(f"dec_res_{i}")(h)
    for i in range(self.num_dec):
      h = self.get_submodule(f"dec_blocks_{i}")(F.interpolate(h, scale_factor=2, mode="nearest"))
    return torch.tanh(self.dec_out(h))

  def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(mean, logvar, decode(mean)), as the Flax module's __call__."""
    mean, logvar = self.encode(x)
    return mean, logvar, self.decode(mean)


class CriticGate(nn.Module):
  """cgdiff.models.CriticGate on NCHW latents: g(z_t, t) in [0, 1], the Tweedie weight of the blend.

  num_layers x h = SiLU(GN(conv3x3(h)) + Linear(SiLU(temb))); head: "example" mean-pool -> Linear(1)
  (B, 1, 1, 1), "channel" mean-pool -> Linear(C) (B, C, 1, 1), "element" 1x1 conv (B, C, H, W).
  """

  def __init__(self, latent_channels: int = 4, granularity: str = "example", hidden_channels: int = 64,
               num_layers: int = 2, time_embed_dim: int = 16, time_scale: float = 1000.0,
               init_logit: float = 2.0):
    super().__init__()
    self.granularity, self.num_layers = granularity, num_layers
    self.time_embed = TimeEmbedding(time_embed_dim, hidden_channels, time_scale)
    for i in range(num_layers):
      self.add_module(f"conv{i}", conv3x3(latent_channels if i == 0 else hidden_channels, hidden_channels))
      self.add_module(f"norm{i}", group_norm(hidden_channels))
      self.add_module(f"time_proj{i}", nn.Linear(hidden_channels, hidden_channels))
    if granularity == "element":
      self.head = nn.Conv2d(hidden_channels, latent_channels, 1)
    else:
      self.head = nn.Linear(hidden_channels, latent_channels if granularity == "channel" else 1)
    nn.init.zeros_(self.head.weight)
    nn.init.constant_(self.head.bias, init_logit)

  def forward(self, z: Tensor, t: Tensor) -> Tensor:
    temb = F.silu(self.time_embed(t))
    h = z
    for i in range(self.num_layers):
      h = self.get_submodule(f"norm{i}")(self.get_submodule(f"conv{i}")(h))
      h = F.silu(h + self.get_submodule(f"time_proj{i}")(temb)[:, :, None, None])
    if self.granularity == "element":
      return torch.sigmoid(self.head(h))
    return torch.sigmoid(self.head(h.mean(dim=(2, 3))))[:, :, None, None]


def count_parameters(module: nn.Module) -> int:
  return sum(p.numel() for p in module.parameters())


def flax_to_torch_state(variables: Any, module: nn.Module) -> dict[str, Tensor]:
  """A state dict for `module` from a cgdiff parameter tree ({'params': ...} or the bare tree).

  Scope names are the same on both sides; kernels are transposed: Dense (in, out) -> (out, in),
  Conv (kh, kw, in, out) -> (out, in, kh, kw), then reshaped to the torch parameter (a Dense feeding a
  1x1 conv). Raises KeyError / ValueError unless every parameter of both is matched.
  """
  tree = variables.get("params", variables) if hasattr(variables, "get") else variables
  targets = dict(module.named_parameters())
  state = {}
  for path, value in traverse_util.flatten_dict(tree).items():
    name = ".".join(path[:-1]) + (".bias" if path[-1] == "bias" else ".weight")
    array = np.asarray(value)
    array = array.transpose(3, 2, 0, 1) if array.ndim == 4 else array.T if array.ndim == 2 else array
    state[name] = torch.from_numpy(np.array(array, dtype=np.float32)).reshape(targets[name].shape)
  if set(state) != set(targets):
    raise ValueError(f"unmatched parameters: {sorted(set(state) ^ set(targets))}")
  return state
