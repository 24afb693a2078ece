"""Networks from configuration groups (ml_collections ConfigDicts or dicts of module attributes)."""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from cgdiff.models.gate import CriticGate
from cgdiff.models.mlp import MLPScoreNet
from cgdiff.models.unet import UNet
from cgdiff.models.vae import VAE

SCORE_NETS = {"unet": UNet, "mlp": MLPScoreNet}


def _kwargs(config: Any) -> dict[str, Any]:
  as_dict = dict(config.to_dict() if hasattr(config, "to_dict") else config)
  return {k: tuple(v) if isinstance(v, list) else v for k, v in as_dict.items()}


def vae(config: Mapping[str, Any]) -> VAE:
  """VAE(**config): latent_channels, out_channels, channels, num_latent_res_blocks, min_logvar."""
  return VAE(**_kwargs(config))


def score_net(config: Mapping[str, Any]) -> nn.Module:
  """config.kind in SCORE_NETS ('unet' for image latents, 'mlp' for vectors); the rest are attributes."""
  kwargs = _kwargs(config)
  kind = kwargs.pop("kind")
  if kind not in SCORE_NETS:
    raise ValueError(f"unknown score network kind {kind!r}; expected one of {sorted(SCORE_NETS)}.")
  return SCORE_NETS[kind](**kwargs)


def gate(config: Mapping[str, Any]) -> CriticGate:
  """CriticGate(**config): granularity, hidden_channels, num_layers, time_embed_dim, init_logit."""
  return CriticGate(**_kwargs(config))


def init(module: nn.Module, key, *example_inputs) -> Any:
  """module.init(key, *example_inputs), compiled as one program without XLA's backend optimisations.

  Initialisation runs once, so optimising its code is wasted time: on a CPU this cuts the start-up of
  a UNet from ~30 s (op-by-op) to a few seconds. The parameters are the same random draws.
  """
  compiled = jax.jit(module.init).lower(key, *example_inputs).compile(
      compiler_options={"xla_backend_optimization_level": 0})
  return compiled(key, *example_inputs)


def abstract_init(module: nn.Module, *example_inputs) -> Any:
  """The shapes and dtypes of module.init's parameters (jax.ShapeDtypeStruct leaves), computing
  nothing: the template to restore a checkpoint into."""
  return jax.eval_shape(module.init, jax.random.PRNGKey(0), *example_inputs)


def initialised(module: nn.Module, key, *example_inputs) -> tuple[nn.Module, Any]:
  """(module, parameters): init(module, key, ...) or, with key None, abstract_init (shapes only)."""
  if key is None:
    return module, abstract_init(module, *example_inputs)
  return module, init(module, key, *example_inputs)


def vae_and_params(config: Mapping[str, Any], image_shape: tuple[int, ...], key=None) -> tuple[VAE, Any]:
  """The VAE of `config` and its parameters for images [B, *image_shape] (abstract when key is None)."""
  return initialised(vae(config), key, jnp.zeros((1,) + tuple(image_shape)))


def score_net_and_params(config: Mapping[str, Any], latent_shape: tuple[int, ...],
                         key=None) -> tuple[nn.Module, Any]:
  """The score network of `config` and its parameters for latents [B, *latent_shape] and times [B]."""
  return initialised(score_net(config), key, jnp.zeros((1,) + tuple(latent_shape)), jnp.zeros((1,)))


def gate_and_params(config: Mapping[str, Any], latent_shape: tuple[int, ...], key=None) -> tuple[CriticGate, Any]:
  """The critic gate of `config` and its parameters for latents [B, *latent_shape] and times [B]."""
  return initialised(gate(config), key, jnp.zeros((1,) + tuple(latent_shape)), jnp.zeros((1,)))
