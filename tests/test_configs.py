"""Every configuration loads, names known stages and objectives, and builds its networks (shapes only)."""

from __future__ import annotations

import glob
import importlib
import os

import pytest

from cgdiff import records, samplers, score_targets
from cgdiff.models import build
from configs import fmnist_base
from experiments import common, fmnist_rows, latent_space
from experiments import stages as stages_lib
from experiments import validation

_CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "configs")
CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(_CONFIG_DIR, "*.py"))
                 if not p.endswith("__init__.py"))


@pytest.mark.parametrize("name", CONFIGS)
def test_config_is_consistent(name):
  module = importlib.import_module(f"configs.{name}")
  config = module.get_config()
  assert set(config.stages) <= set(stages_lib.STAGES), config.stages
  if "ldm" not in config or config.stages == ("exact_field",):
    return
  assert config.ldm.target in score_targets.names()
  assert config.sample.method in samplers.METHODS
  space, vae = latent_space.of(config), None
  if space.has_vae:
    assert config.data.image_shape[-1] == config.vae.model.out_channels
    vae, _ = build.vae_and_params(config.vae.model, config.data.image_shape)  # shapes only
  build.score_net_and_params(config.score_net, space.latent_shape(vae))


@pytest.mark.parametrize("name", CONFIGS)
def test_config_passes_the_checks_a_run_starts_with(name):
  config = importlib.import_module(f"configs.{name}").get_config()
  assert validation.config_problems(config, config.stages, stages_lib.STAGES) == []


# --- the Fashion-MNIST results rows (experiments/fmnist_rows.py, README "Protocol") ---------------------
# What defines each row; everything else must be fmnist_base's.
ROW_DEFINITIONS = {
    "c": {"stages": ("vae", "ldm", "eval", "diagnose"), "vae.kl": "regular", "ldm.target": "tweedie",
          "ldm.vae_source": "vae", "sample.score_source": "ldm"},
    "lsi": {"stages": ("vae", "ldm", "eval", "diagnose"), "vae.kl": "regular", "ldm.target": "lsi",
            "ldm.vae_source": "vae", "sample.score_source": "ldm"},
    "cg_scalar": {"stages": ("vae", "ldm", "eval", "diagnose"), "vae.kl": "regular", "ldm.target": "critic_gate",
                  "ldm.vae_source": "vae", "gate.granularity": "example", "sample.score_source": "ldm"},
    "cg_element": {"stages": ("vae", "ldm", "eval", "diagnose"), "vae.kl": "regular", "ldm.target": "critic_gate",
                   "ldm.vae_source": "vae", "gate.granularity": "element", "sample.score_source": "ldm"},
    "cg_prior": {"stages": ("vae", "stats", "ldm", "eval", "diagnose"), "vae.kl": "regular",
                 "ldm.target": "critic_gate_prior", "ldm.vae_source": "vae", "stats.vae_source": "vae",
                 "gate.granularity": "element", "sample.score_source": "ldm"},
    "a": {"stages": ("cotrain", "eval", "diagnose"), "cotrain.kl": "modified", "cotrain.score_target": "lsi",
          "cotrain.encoder_score_gradient": True, "sample.score_source": "cotrain"},
    "b": {"stages": ("cotrain", "ldm", "eval", "diagnose"), "cotrain.kl": "modified", "cotrain.score_target": "lsi",
          "cotrain.encoder_score_gradient": True, "ldm.target": "tweedie", "ldm.vae_source": "cotrain",
          "sample.score_source": "ldm"},
    "d": {"stages": ("cotrain", "eval", "diagnose"), "cotrain.kl": "regular", "cotrain.score_target": "tweedie",
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
  config = row.get_config()
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
    home = fmnist_rows.BY_NAME[row.vae_home].get_config()
    assert flatten(home.cotrain) == flatten(config.cotrain) and home.seed == config.seed


def test_fmnist_rows_share_one_optimiser_and_budget():
  """The VAE trained alone, the LDM and the co-trained pair get the same AdamW, schedule, clipping, EMA,
  batch and epochs (the protocol: otherwise (c) against (a) and (d) would compare optimisers too)."""
  config = fmnist_base.get_config()
  assert config.vae.training == config.ldm.training == config.cotrain.training
  assert config.vae.training.num_steps == fmnist_base.EPOCHS * (60_000 // config.vae.training.batch_size)
  assert config.cotrain.kl_weight == config.vae.kl_weight
  assert set(ROW_DEFINITIONS) == set(fmnist_rows.BY_NAME)


def test_the_training_stages_are_stages_and_have_training_settings():
  """common.TRAINING_STAGES (the stages whose checkpoints' settings common.STAGE_GROUPS names) are stages
  of experiments.run, each with a config group of its name holding `training` settings."""
  assert set(common.TRAINING_STAGES) <= set(stages_lib.STAGES)
  assert stages_lib.training_stages([*stages_lib.STAGES, "no_such_stage"]) == ("vae", "ldm", "cotrain")
  config = fmnist_rows.BY_NAME["b"].get_config()
  assert all(config[stage].training.num_steps > 0 for stage in common.TRAINING_STAGES)


@pytest.mark.parametrize("path", ["configs/quickstart.py", "configs/toy.py", "configs/demo.py"])
def test_tiny_variants_load_and_unknown_variants_are_refused(path):
  module = importlib.import_module(path[:-3].replace("/", "."))
  tiny, full = module.get_config("tiny"), module.get_config()
  assert validation.config_problems(tiny, tiny.stages, stages_lib.STAGES) == []
  assert records.config_hash(tiny) != records.config_hash(full)
  with pytest.raises(ValueError, match="tiny"):
    module.get_config("huge")
