"""What the stages share: data, networks and their parameters, posterior data sets, batching, and
what a trained stage's checkpoints depend on.

Workdir layout: <workdir>/<stage>/ holds a stage's checkpoints/, config.json (the settings it was
trained with), metrics.jsonl and TensorBoard events (vae/, ldm/, cotrain/), stats/ the latent
statistics, samples/ the samples and their records.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from absl import logging

from cgdiff import records, schedules, score_targets
from cgdiff.data import pipeline
from cgdiff.models import build
from cgdiff.train import TrainLoopConfig, create_state, make_optimizer
from cgdiff.train import checkpoint, checksums
from experiments import latent_space

# The stages that train a VAE (the values of config.ldm / config.stats.vae_source). config.vae_workdir,
# where set, puts them in another workdir, so that rows can share one VAE (the five two-stage rows of a
# seed; row (b) uses row (a)'s).
VAE_SOURCES = ("vae", "cotrain")


def stage_dir(config: ml_collections.ConfigDict, workdir: str, stage: str) -> str:
  """<workdir>/<stage>, or <config.vae_workdir>/<stage> for the autoencoder stages where it is set."""
  if stage in VAE_SOURCES and config.get("vae_workdir"):
    return os.path.join(config.vae_workdir, stage)
  return os.path.join(workdir, stage)


def schedule(config: ml_collections.ConfigDict) -> schedules.Schedule:
  return schedules.make(config.schedule.name, **config.schedule.kwargs)


def train_images(config: ml_collections.ConfigDict, split: str = "train") -> np.ndarray:
  """float32 [N, 32, 32, C] in [-1, 1] of config.data (not for the 2-D toy)."""
  data = config.data
  kwargs = dict(data.get("kwargs", {}))
  images = pipeline.load_images(data.name, split, data_dir=data.get("data_dir"), **kwargs)
  logging.info("data %s/%s: %s", data.name, split, images.shape)
  return images


def batch_fn(data: Any, batch_size: int, seed: int) -> Callable[[int], Any]:
  """step -> the global batch of `step` (a shuffled slice of every array in `data`, same rows)."""
  n = jax.tree.leaves(data)[0].shape[0]
  batcher = pipeline.Batcher(np.arange(n), batch_size, seed)
  return lambda step: jax.tree.map(lambda x: x[batcher.indices(step)], data)


def loop_config(training: ml_collections.ConfigDict) -> tuple[ml_collections.ConfigDict, TrainLoopConfig]:
  """(optimizer group, loop settings) of a stage's `training` group."""
  return training, TrainLoopConfig.from_config(training)


def init_vae(config: ml_collections.ConfigDict, key: jax.Array | None, image_shape: tuple[int, ...]):
  """(module, params) of config.vae.model; key None: shapes only (a template for restoring)."""
  return build.vae_and_params(config.vae.model, image_shape, key)


def init_score_net(config: ml_collections.ConfigDict, key: jax.Array | None, latent_shape: tuple[int, ...]):
  """(module, params) of config.score_net; key None: shapes only."""
  if config.score_net.get("dropout", 0.0):
    # The objectives call the network with train=False and no dropout key: refuse rather than
    # silently train without the dropout the config asks for.
    raise ValueError("score_net.dropout > 0 is not supported by the training stages yet; set it to 0.")
  return build.score_net_and_params(config.score_net, latent_shape, key)


def init_ldm(config: ml_collections.ConfigDict, latent_shape, *, abstract: bool = False):
  """(score network, gate or None, {"score": ..., ["gate": ...]}) of the `ldm` stage (shapes only when
  abstract)."""
  key_score, key_gate = jax.random.split(jax.random.PRNGKey(config.seed + 2))
  if abstract:
    key_score = key_gate = None
  score_net, score_params = init_score_net(config, key_score, latent_shape)
  params, gate = {"score": score_params}, None
  if score_targets.get(config.ldm.target).needs_gate:
    gate, params["gate"] = build.gate_and_params(config.gate, latent_shape, key_gate)
  return score_net, gate, params


def checkpoint_dir(config: ml_collections.ConfigDict, workdir: str, stage: str) -> str:
  return os.path.join(stage_dir(config, workdir, stage), "checkpoints")


def latest_step(config: ml_collections.ConfigDict, workdir: str, stage: str) -> int:
  """The step of the newest intact checkpoint of `stage` (what a later stage restores)."""
  step = checksums.latest_intact_step(checkpoint_dir(config, workdir, stage))
  if step is None:
    raise FileNotFoundError(f"no intact checkpoint in {checkpoint_dir(config, workdir, stage)}: run the "
                            f"`{stage}` stage first.")
  return step


def restore_ema_params(config: ml_collections.ConfigDict, workdir: str, stage: str, params: Any) -> Any:
  """The EMA parameters of the trained `stage` in `workdir` (its newest intact checkpoint), once its
  stored settings are checked against `config`'s (check_stage_settings); `params` (concrete or
  abstract) gives their structure."""
  training = config[stage].training
  tx = make_optimizer(training, training.num_steps)
  like = jax.eval_shape(lambda p: create_state(p, tx), params)
  ckpt_dir = checkpoint_dir(config, workdir, stage)
  if not os.path.isdir(ckpt_dir):
    raise FileNotFoundError(f"no checkpoints in {ckpt_dir}: run the `{stage}` stage first.")
  check_stage_settings(config, workdir, stage, training=False)
  return checkpoint.restore_params(ckpt_dir, like, ema=True)


def trained_cotrain(config: ml_collections.ConfigDict, workdir: str, image_shape):
  """(VAE module, score network, {"vae": ..., "score": ...}) of the finished `cotrain` stage."""
  vae, vae_params = init_vae(config, None, image_shape)
  score_net, score_params = init_score_net(config, None,
                                           latent_space.of(config).latent_shape(vae, image_shape))
  params = restore_ema_params(config, workdir, "cotrain", {"vae": vae_params, "score": score_params})
  return vae, score_net, params


def trained_vae(config: ml_collections.ConfigDict, workdir: str, source: str, image_shape):
  """(module, params) of the VAE trained by stage `source` ('vae' or 'cotrain')."""
  if source == "vae":
    module, params = init_vae(config, None, image_shape)
    return module, restore_ema_params(config, workdir, "vae", params)
  if source == "cotrain":
    module, _, params = trained_cotrain(config, workdir, image_shape)
    return module, params["vae"]
  raise ValueError(f"unknown VAE source {source!r}; expected one of {VAE_SOURCES}.")


def encoded_training_set(config: ml_collections.ConfigDict, workdir: str,
                         vae_source: str) -> tuple[np.ndarray, np.ndarray]:
  """Posterior parameters (mean, logvar) [N, h, w, C] of the training images under a trained VAE."""
  images = train_images(config)
  module, params = trained_vae(config, workdir, vae_source, images.shape[1:])
  return encode_all(module, params, images)


@functools.partial(jax.jit, static_argnames="vae_module")
def _encode_batch(params, x, *, vae_module):
  return vae_module.apply(params, x, method=vae_module.encode)


def encode_all(vae_module, params, images: np.ndarray, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
  """Posterior parameters (mean, logvar) [N, h, w, C] of every image, in batches (one compilation per VAE
  and batch shape for the process)."""
  means, logvars = [], []
  for start in range(0, images.shape[0], batch_size):
    mean, logvar = jax.device_get(_encode_batch(params, images[start:start + batch_size],
                                                vae_module=vae_module))
    means.append(mean)
    logvars.append(logvar)
  return np.concatenate(means), np.concatenate(logvars)


def posterior_dataset(config: ml_collections.ConfigDict, workdir: str, vae_source: str):
  """The posteriors the latent diffusion model learns the aggregate of: (mean, logvar) [N, ...].

  A space with a VAE: the frozen VAE's encoder over the training set (encoded once; z0 is drawn afresh
  each step from these). The 2-D toy: its components drawn by weight (latent_space.Toy.posteriors).
  """
  space = latent_space.of(config)
  if space.has_vae:
    return encoded_training_set(config, workdir, vae_source)
  return space.posteriors()


# What a trained stage's checkpoints depend on. Rerunning a workdir with a changed setting used to reuse
# the old model silently (and later records named the new settings): each training stage now stores
# its settings in <workdir>/<stage>/config.json when it starts, and refuses to resume under other
# settings, as does every later stage that restores it (stats, ldm on a VAE, sample, eval).

# The config groups whose settings a training stage's checkpoints depend on, besides those of the
# trained stages it reads (upstream_stages).
STAGE_GROUPS = {
    "vae": ("seed", "data", "vae"),
    "ldm": ("seed", "data", "schedule", "score_net", "gate", "ldm"),
    "cotrain": ("seed", "data", "schedule", "vae", "score_net", "cotrain"),
}
# The training stages, each the name of its config group (with a `training` group: cgdiff.train's
# optimizer and loop settings) and of its directory in a workdir.
TRAINING_STAGES = tuple(STAGE_GROUPS)
# Settings in those groups that change how a run is logged or kept, or where data is read from, not
# what it trains: they may change between runs.
EXEMPT_TRAINING_KEYS = ("log_every", "checkpoint_every", "keep_checkpoints", "tensorboard")
EXEMPT_KEYS = ("data.data_dir", "data.kwargs.download")
STAGE_SETTINGS = "config.json"


class ConfigDriftError(ValueError):
  """A workdir's trained stage was made with other settings than the current config's."""


def upstream_stages(config: ml_collections.ConfigDict, stage: str) -> tuple[str, ...]:
  """The trained stages whose results `stage` trains on: the frozen VAE of an image `ldm` (and the VAE
  that the latent statistics of `critic_gate_prior` come from)."""
  if stage != "ldm" or not latent_space.of(config).has_vae:
    return ()
  sources = [config.ldm.vae_source]
  if score_targets.get(config.ldm.target).needs_prior:
    sources.append(config.stats.vae_source)
  return tuple(dict.fromkeys(sources))


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def stage_settings(config: ml_collections.ConfigDict, stage: str) -> dict[str, Any]:
  """{"group.key...": value} of every setting `stage`'s checkpoints depend on (JSON values: tuples
  are lists), those of its upstream stages included, the exempt ones left out."""
  groups = set(STAGE_GROUPS[stage]).union(*(STAGE_GROUPS[s] for s in upstream_stages(config, stage)))
  if stage == "ldm" and score_targets.get(config.ldm.target).needs_prior:
    groups.add("stats")
  flat = _flatten(config.to_dict())
  kept = {key: value for key, value in sorted(flat.items())
          if key.split(".")[0] in groups and key not in EXEMPT_KEYS
          and not (".training." in key and key.rsplit(".", 1)[1] in EXEMPT_TRAINING_KEYS)}
  return json.loads(json.dumps(kept, default=str))


def settings_drift(stored: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
  """{key: (stored value, current value)} of every key whose values differ (missing: None)."""
  return {key: (stored.get(key), current.get(key)) for key in sorted(set(stored) | set(current))
          if stored.get(key) != current.get(key)}


def is_continuation(config: ml_collections.ConfigDict, stage: str,
                    drift: dict[str, tuple[Any, Any]]) -> bool:
  """True when the only change is a larger num_steps of `stage` under a constant learning rate: the
  run continued from its checkpoint equals one trained for the new num_steps from the start (batches
  and keys depend on the step only). A 'cosine' schedule decays to 0 at num_steps: not so."""
  key = f"{stage}.training.num_steps"
  if set(drift) != {key} or config[stage].training.lr_schedule != "constant":
    return False
  old, new = drift[key]
  return isinstance(old, int) and new > old


def _has_checkpoints(config: ml_collections.ConfigDict, workdir: str, stage: str) -> bool:
  return bool(checksums.checkpoint_steps(checkpoint_dir(config, workdir, stage)))


def check_stage_settings(config: ml_collections.ConfigDict, workdir: str, stage: str, *,
                         training: bool) -> None:
  """Compares the settings stored with `stage`'s checkpoints with `config`'s (stage_settings).

  training: the stage is about to train (resume); it may also continue to a larger num_steps
  (is_continuation). Otherwise a later stage is about to use its checkpoints.

  Raises:
    ConfigDriftError: the stage has checkpoints made under other settings; the message names the keys
      (stored -> current) and how to go on.
  """
  path = os.path.join(stage_dir(config, workdir, stage), STAGE_SETTINGS)
  if not _has_checkpoints(config, workdir, stage):
    return
  if not os.path.exists(path):
    logging.warning("%s has checkpoints but no %s (made before cgdiff stored a stage's settings): "
                    "they cannot be checked against the current config%s.", stage_dir(config, workdir, stage),
                    STAGE_SETTINGS, "; the current settings are stored as theirs" if training else "")
    return
  with open(path) as f:
    drift = settings_drift(json.load(f), stage_settings(config, stage))
  if not drift or (training and is_continuation(config, stage, drift)):
    return
  raise ConfigDriftError(drift_message(config, workdir, stage, drift, training=training))


def drift_message(config: ml_collections.ConfigDict, workdir: str, stage: str,
                  drift: dict[str, tuple[Any, Any]], *, training: bool) -> str:
  """ConfigDriftError's paragraph: what differs, why that is refused, how to go on."""
  changes = ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in drift.items())
  directory = stage_dir(config, workdir, stage)
  text = (f"the `{stage}` stage in {directory} was trained with other settings than the current "
          f"config's: {changes} (stored -> current). Its checkpoints would be used as if the current "
          f"settings had made them")
  if not training:
    text += " (and records would name the current settings)"
  steps_key = f"{stage}.training.num_steps"
  if steps_key in drift:
    text += (f". {steps_key} may only grow, and only with lr_schedule 'constant' (the run then continues "
             f"to the new num_steps); with 'cosine' the learning rate decays to 0 at num_steps, so a run "
             f"continued to another num_steps is not the run trained for it")
    if not training and is_continuation(config, stage, drift):
      text += f"; run the `{stage}` stage first to continue it"
  return (f"{text}. To train with the current settings use a new --workdir; to use this workdir, run "
          f"with the stored settings ({os.path.join(directory, STAGE_SETTINGS)}).")


def record_stage_settings(config: ml_collections.ConfigDict, workdir: str, stage: str) -> None:
  """Stores `stage`'s settings (stage_settings) in its directory, for check_stage_settings."""
  records.write_json(os.path.join(stage_dir(config, workdir, stage), STAGE_SETTINGS), stage_settings(config, stage))
