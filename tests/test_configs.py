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
from configs import fmnist_base
from experiments import fmnist_rows
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


# --- the Fashion-MNIST results rows (experiments/fmnist_rows.py, README "Protocol") ---------------------
# What defines each row; everything else must be fmnist_base's.
ROW_DEFINITIONS = {
    "c": {"stages": ("vae", "ldm", "eval"), "vae.kl": "regular", "ldm.target": "tweedie",
          "ldm.vae_source": "vae", "sample.score_source": "ldm"},
    "lsi": {"stages": ("vae", "ldm", "eval"), "vae.kl": "regular", "ldm.target": "lsi",
            "ldm.vae_source": "vae", "sample.score_source": "ldm"},
    "cg_scalar": {"stages": ("vae", "ldm", "eval"), "vae.kl": "regular", "ldm.target": "critic_gate",
                  "ldm.vae_source": "vae", "gate.granularity": "example", "sample.score_source": "ldm"},
    "cg_element": {"stages": ("vae", "ldm", "eval"), "vae.kl": "regular", "ldm.target": "critic_gate",
                   "ldm.vae_source": "vae", "gate.granularity": "element", "sample.score_source": "ldm"},
    "cg_prior": {"stages": ("vae", "stats", "ldm", "eval"), "vae.kl": "regular",
                 "ldm.target": "critic_gate_prior", "ldm.vae_source": "vae", "stats.vae_source": "vae",
                 "gate.granularity": "element", "sample.score_source": "ldm"},
    "a": {"stages": ("cotrain", "eval"), "cotrain.kl": "modified", "cotrain.score_target": "lsi",
          "cotrain.encoder_score_gradient": True, "sample.score_source": "cotrain"},
    "b": {"stages": ("cotrain", "ldm", "eval"), "cotrain.kl": "modified", "cotrain.score_target": "lsi",
          "cotrain.encoder_score_gradient": True, "ldm.target": "tweedie", "ldm.vae_source": "cotrain",
          "sample.score_source": "ldm"},
    "d": {"stages": ("cotrain", "eval"), "cotrain.kl": "regular", "cotrain.score_target": "tweedie",
          "cotrain.encoder_score_gradient": True, "sample.score_source": "cotrain"},
}


def flatten(config, prefix=""):
  out = {}
  for key, value in config.items():
    if hasattr(value, "items"):
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = tuple(value) if isinstance(value, list) else value
  return out


@pytest.mark.parametrize("row", fmnist_rows.ROWS, ids=lambda row: row.name)
def test_fmnist_row_sets_what_defines_it_and_shares_the_rest(row):
  config = importlib.import_module(row.config[:-3].replace("/", ".")).get_config()
  flat, shared = flatten(config), flatten(fmnist_base.get_config())
  definition = ROW_DEFINITIONS[row.name]
  for key, value in definition.items():
    assert flat[key] == value, (row.name, key, flat[key])
  differing = {key for key in flat.keys() | shared.keys() if flat.get(key) != shared.get(key)}
  assert differing <= set(definition), (row.name, sorted(differing - set(definition)))
  # The row's VAE is the one its definition says: a two-stage row's is the shared regular-KL VAE, row
  # (b)'s is row (a)'s co-trained one.
  if row.vae_home == fmnist_rows.TWO_STAGE_VAE:
    assert config.ldm.vae_source == "vae" and "vae" in config.stages
  elif row.vae_home is not None:
    home = importlib.import_module(fmnist_rows.BY_NAME[row.vae_home].config[:-3].replace("/", ".")).get_config()
    assert flatten(home.cotrain) == flatten(config.cotrain) and home.seed == config.seed


def test_fmnist_rows_share_one_optimiser_and_budget():
  """The VAE trained alone, the LDM and the co-trained pair get the same AdamW, schedule, clipping, EMA,
  batch and epochs (the protocol: otherwise (c) against (a) and (d) would compare optimisers too)."""
  config = fmnist_base.get_config()
  assert config.vae.training == config.ldm.training == config.cotrain.training
  assert config.vae.training.num_steps == fmnist_base.EPOCHS * (60_000 // config.vae.training.batch_size)
  assert config.cotrain.kl_weight == config.vae.kl_weight
  assert set(ROW_DEFINITIONS) == set(fmnist_rows.BY_NAME)
