"""Every configuration loads, names known stages and objectives, and builds its networks (shapes only)."""

from __future__ import annotations

import glob
import importlib
import os

import jax
import jax.numpy as jnp
import pytest

from cgdiff import objectives, samplers
from cgdiff.models import build
from experiments import run as run_lib
from experiments import validation

CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(os.path.dirname(__file__), "..", "configs", "*.py"))
                 if not p.endswith("__init__.py"))


@pytest.mark.parametrize("name", CONFIGS)
def test_config_is_consistent(name):
  module = importlib.import_module(f"configs.{name}")
  config = module.get_config()
  assert set(config.stages) <= set(run_lib.STAGES), config.stages
  if "ldm" not in config or config.stages == ("exact_field",):
    return
  assert config.ldm.target in objectives.SCORE_TARGETS
  assert config.sample.method in samplers.METHODS
  if config.data.name == "toy2d":
    latent = (2,)
  else:
    vae = build.vae(config.vae.model)
    h, w, c = config.data.image_shape
    assert c == config.vae.model.out_channels
    jax.eval_shape(vae.init, jax.random.PRNGKey(0), jnp.zeros((1, h, w, c)))
    latent = (h // vae.downsample_factor, w // vae.downsample_factor, vae.latent_channels)
  net = build.score_net(config.score_net)
  jax.eval_shape(net.init, jax.random.PRNGKey(0), jnp.zeros((1,) + latent), jnp.zeros((1,)))


@pytest.mark.parametrize("name", CONFIGS)
def test_config_passes_the_checks_a_run_starts_with(name):
  config = importlib.import_module(f"configs.{name}").get_config()
  assert validation.config_problems(config, config.stages, run_lib.STAGES) == []
