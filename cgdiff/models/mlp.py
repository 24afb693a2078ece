"""MLP noise predictor for rank-2 toy data (B, D) (the 2-D mixtures of 004): eps_hat(z_t, t).

    temb = TimeEmbedding(hidden, hidden, time_scale)(t)          (B, hidden)
    h = Dense(hidden)(z)
    num_layers x  h = Dense(hidden)(SiLU(h + Dense(SiLU(temb))))
    eps_hat = Dense(D)(SiLU(h))                                  (B, D)
"""

from __future__ import annotations

import flax.linen as nn
import jax

from cgdiff.models.layers import TimeEmbedding, broadcast_time

Array = jax.Array


class MLPScoreNet(nn.Module):
  """Time-conditioned MLP predicting the noise of a (B, D) batch.

  Attributes:
    hidden: width of every hidden layer and of the time embedding.
    num_layers: time-conditioned hidden layers.
    time_scale: t is multiplied by it before the sinusoidal embedding.
    out_features: output width; None means D of the input.
  """

  hidden: int = 256
  num_layers: int = 3
  time_scale: float = 1000.0
  out_features: int | None = None

  @nn.compact
  def __call__(self, z: Array, t: Array, train: bool = False) -> Array:
    """Noise prediction.

    Args:
      z: (B, D) noisy points.
      t: (B,) continuous times (a scalar is broadcast).
      train: unused (no dropout); kept for the common network signature.

    Returns:
      eps_hat: (B, out_features or D).
    """
    del train
    if z.ndim != 2:
      raise ValueError(f"MLPScoreNet expects z of rank 2 (B, D), got shape {z.shape}.")
    t = broadcast_time(t, z.shape[0])
    temb = nn.silu(TimeEmbedding(self.hidden, self.hidden, self.time_scale, name="time_embed")(t))
    h = nn.Dense(self.hidden, name="dense_in")(z)
    for i in range(self.num_layers):
      h = h + nn.Dense(self.hidden, name=f"time_proj{i}")(temb)
      h = nn.Dense(self.hidden, name=f"dense{i}")(nn.silu(h))
    out = z.shape[-1] if self.out_features is None else self.out_features
    return nn.Dense(out, name="dense_out")(nn.silu(h))
