"""Critic gate g(z_t, t) in [0, 1] (001 sections 2.6 and 3.3, which leave the network unspecified).

The gate weights the two per-particle score targets (MATH.md section 3, errata 5):

    blend = (1 - g) * csem + g * tweedie,    g = 1: Tweedie (DSM), g = 0: CSEM.

The oracle gate sigma^2 / (sigma^2 + alpha^2 v) (identity 3) is near 1 except at small t, so the gate
starts near Tweedie: the last layer has a zero kernel and bias `init_logit`, g = sigmoid(init_logit) at
init (0.88 for the default 2.0), the same for every input.

Network, for image latents (B, H, W, C) (convs) and for toy vectors (B, D) (Dense layers):

    temb = TimeEmbedding(hidden, time_embed_dim, time_scale)(t)        (B, hidden)
    num_layers x  h = SiLU(GroupNorm(conv3x3(h)) + Dense(SiLU(temb)))     (rank 2: no norm, Dense)

(time is added after the norm, so a GroupNorm with one channel per group cannot erase it)
    head by granularity:
      "example": mean over H, W -> Dense(1)   -> (B, 1, 1, 1)    rank 2: Dense(1) -> (B, 1)
      "channel": mean over H, W -> Dense(C)   -> (B, 1, 1, C)    rank 2: as "element"
      "element": conv1x1(C)                   -> (B, H, W, C)    rank 2: Dense(D) -> (B, D)
    g = sigmoid(head)

"example" is 001's scalar gate (B, 1, 1, 1); finer gates can follow the per-element oracle more closely
(MATH.md identity 3).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from cgdiff.models.layers import GroupNorm, TimeEmbedding, broadcast_time, conv1x1, conv3x3

Array = jax.Array

GRANULARITIES = ("example", "channel", "element")


class CriticGate(nn.Module):
  """g(z_t, t) in [0, 1]: the Tweedie weight of the critic-gate target (1 - g weights CSEM).

  Attributes:
    granularity: "example", "channel" or "element" (see the module docstring for the output shapes).
    hidden_channels: width of the hidden conv / Dense layers (001's sketch: hidden_dim=128).
    num_layers: hidden layers, >= 1.
    time_embed_dim: width of the sinusoidal time features (001's sketch: 16).
    time_scale: t is multiplied by it before the sinusoidal embedding.
    init_logit: bias of the zero-kernel last layer: g = sigmoid(init_logit) at init.
  """

  granularity: str = "example"
  hidden_channels: int = 64
  num_layers: int = 2
  time_embed_dim: int = 16
  time_scale: float = 1000.0
  init_logit: float = 2.0

  @nn.compact
  def __call__(self, z: Array, t: Array) -> Array:
    """Gate values.

    Args:
      z: (B, H, W, C) image latents or (B, D) vectors: the noisy z_t.
      t: (B,) continuous times (a scalar is broadcast).

    Returns:
      g in [0, 1]: rank 4: (B, 1, 1, 1) / (B, 1, 1, C) / (B, H, W, C) for "example" / "channel" /
      "element"; rank 2: (B, 1) for "example", (B, D) otherwise.
    """
    if self.granularity not in GRANULARITIES:
      raise ValueError(f"CriticGate.granularity must be one of {GRANULARITIES}, got {self.granularity!r}.")
    if self.num_layers < 1:
      raise ValueError(f"CriticGate.num_layers must be >= 1, got {self.num_layers}.")
    if z.ndim not in (2, 4):
      raise ValueError(f"CriticGate expects z of rank 4 (B, H, W, C) or rank 2 (B, D), got shape {z.shape}.")
    t = broadcast_time(t, z.shape[0])
    temb = nn.silu(TimeEmbedding(self.hidden_channels, self.time_embed_dim, self.time_scale,
                                 name="time_embed")(t))                           # (B, hidden)
    head_init = dict(kernel_init=nn.initializers.zeros,
                     bias_init=nn.initializers.constant(self.init_logit))
    features = z.shape[-1]
    h = z
    if z.ndim == 4:
      for i in range(self.num_layers):
        h = GroupNorm(name=f"norm{i}")(conv3x3(self.hidden_channels, name=f"conv{i}")(h))
        h = nn.silu(h + nn.Dense(self.hidden_channels, name=f"time_proj{i}")(temb)[:, None, None, :])
      if self.granularity == "element":
        logit = conv1x1(features, name="head", **head_init)(h)                      # (B, H, W, C)
      else:
        pooled = jnp.mean(h, axis=(1, 2), keepdims=True)                          # (B, 1, 1, hidden)
        width = features if self.granularity == "channel" else 1
        logit = nn.Dense(width, name="head", **head_init)(pooled)                 # (B, 1, 1, width)
    else:
      for i in range(self.num_layers):
        h = nn.Dense(self.hidden_channels, name=f"dense{i}")(h)
        h = nn.silu(h + nn.Dense(self.hidden_channels, name=f"time_proj{i}")(temb))
      width = 1 if self.granularity == "example" else features
      logit = nn.Dense(width, name="head", **head_init)(h)                        # (B, width)
    return jax.nn.sigmoid(logit)
