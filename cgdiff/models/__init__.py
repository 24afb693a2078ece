"""Flax linen networks of cgdiff: architecture and parameters only (no diffusion maths).

    VAE           001 section 3.1 encoder / decoder, encode -> (mean, logvar), decode -> x_hat
    UNet          001 section 3.2 noise predictor eps_hat(z_t, t) on NHWC latents
    CriticGate    g(z_t, t) in [0, 1], blend = (1 - g) csem + g tweedie
    MLPScoreNet   noise predictor for (B, D) toy data
    Conv, conv2d  flax.linen.Conv's parameters and map, computed for XLA:CPU (conv.py)
"""

from cgdiff.models.conv import Conv, conv2d
from cgdiff.models.gate import GRANULARITIES, CriticGate
from cgdiff.models.layers import (AttentionBlock, ConvBlock, Downsample, GroupNorm, ResBlock,
                                  TimeEmbedding, Upsample, group_count, sinusoidal_embedding)
from cgdiff.models.mlp import MLPScoreNet
from cgdiff.models.unet import UNet
from cgdiff.models.vae import VAE, soft_floor

__all__ = [
    "AttentionBlock",
    "Conv",
    "ConvBlock",
    "CriticGate",
    "Downsample",
    "GRANULARITIES",
    "GroupNorm",
    "MLPScoreNet",
    "ResBlock",
    "TimeEmbedding",
    "UNet",
    "Upsample",
    "VAE",
    "conv2d",
    "group_count",
    "sinusoidal_embedding",
    "soft_floor",
]
