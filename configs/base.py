"""Defaults shared by every image configuration: 001's CIFAR-10 recipe at full size.

Groups: data, schedule, vae, stats, score_net, gate, ldm, cotrain, sample. Each experiment's config
starts from this and overrides what differs; every knob is read in one place in experiments/.
"""

import ml_collections


def training(**overrides) -> ml_collections.ConfigDict:
  """A `training` group: batch, steps, optimizer (optax AdamW + clipping), EMA, logging, checkpoints."""
  config = ml_collections.ConfigDict({
      "batch_size": 128,
      "num_steps": 1000,
      "learning_rate": 2e-4,
      "warmup_steps": 0,
      "lr_schedule": "constant",  # or "cosine" (decay to 0 at num_steps, after the warm-up)
      "b1": 0.9,
      "b2": 0.999,
      "weight_decay": 0.0,
      "grad_clip": 1.0,
      "ema_decay": 0.0,  # 0: the EMA is the parameters
      "log_every": 100,
      "checkpoint_every": 5000,
      "keep_checkpoints": 3,
      "tensorboard": True,
  })
  config.update(overrides)
  return config


def shrink_training(config: ml_collections.ConfigDict, steps: int = 2, batch_size: int = 8) -> None:
  """Every training group to `steps` steps of `batch_size`, no warm-up, one checkpoint, no TensorBoard:
  the `tiny` variants' training, which runs a config's every stage in seconds (tests, CI)."""
  for name in ("vae", "ldm", "cotrain"):
    if name in config:
      config[name].training.update(num_steps=steps, batch_size=batch_size, log_every=1,
                                   checkpoint_every=steps, warmup_steps=0, tensorboard=False)


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.stages = ("vae", "stats", "ldm", "sample")

  # Where the autoencoder stages (`vae`, `cotrain`) live: '' is the run's own workdir; another workdir
  # lets several runs share one VAE (experiments.common.stage_dir).
  config.vae_workdir = ""

  config.data = ml_collections.ConfigDict({
      "name": "cifar10",  # "cifar10" | "fashion_mnist" | "synthetic" | "toy2d"
      "data_dir": ml_collections.FieldReference(None, field_type=str),
      "kwargs": ml_collections.ConfigDict({"download": False}),
      "image_shape": (32, 32, 3),
  })

  config.schedule = ml_collections.ConfigDict(
      {"name": "cosine", "kwargs": ml_collections.ConfigDict({"t_min": 1e-3, "t_max": 0.995})})

  # 001 section 3.1: 32x32 -> 8x8x4, small KL weight, Adam 2e-4, batch 128, 200 epochs (78k steps).
  config.vae = ml_collections.ConfigDict({
      "model": ml_collections.ConfigDict({"latent_channels": 4, "out_channels": 3,
                                          "channels": (64, 128, 256), "num_latent_res_blocks": 0,
                                          "min_logvar": -10.0}),
      "kl": "regular",
      "kl_weight": 1e-3,
      "training": training(num_steps=78_000),
  })
  config.stats = ml_collections.ConfigDict({"vae_source": "vae"})

  # 001 section 3.2.
  config.score_net = ml_collections.ConfigDict({
      "kind": "unet", "base_channels": 128, "channel_mults": (1, 2, 2), "num_res_blocks": 2,
      "attention_resolutions": (8, 4, 2), "num_heads": 4, "dropout": 0.0, "time_scale": 1000.0,
      "scale_shift_norm": False})
  config.gate = ml_collections.ConfigDict({
      "granularity": "example", "hidden_channels": 128, "num_layers": 2, "time_embed_dim": 16,
      "init_logit": 2.0})

  # 001 sections 5.6-5.7: AdamW 2e-4, weight decay 1e-4, clipping 1, EMA, ~200 epochs.
  config.ldm = ml_collections.ConfigDict({
      "target": "critic_gate",  # "tweedie" | "lsi" | "critic_gate" | "critic_gate_prior" (biased)
      "vae_source": "vae",  # the frozen VAE: "vae" (two-stage) or "cotrain" (002's row (b))
      "training": training(num_steps=78_000, weight_decay=1e-4, warmup_steps=10_000,
                           lr_schedule="cosine", ema_decay=0.9999),
  })

  # 002 Algorithm 1.
  config.cotrain = ml_collections.ConfigDict({
      "kl": "modified", "kl_weight": 1e-3, "score_target": "lsi", "score_weight": 1.0,
      "stiffness_weight": 0.0, "encoder_score_gradient": True,
      "training": training(num_steps=78_000, weight_decay=1e-4, ema_decay=0.999),
  })

  config.sample = ml_collections.ConfigDict({
      "score_source": "ldm",  # "ldm" or "cotrain"
      "method": "heun_pc", "num_steps": 50, "num_samples": 64, "batch_size": 64})

  # Stage `eval` (001 section 6.2, MATH.md section 7), with config.sample's source, method and steps:
  # FID of num_samples samples against the Inception statistics of the reference split (001: the 10k
  # CIFAR-10 test images, 50k samples), reconstruction FID, latent SW2 and the figures.
  config.eval = ml_collections.ConfigDict({
      "num_samples": 50_000, "batch_size": 500,
      "reference_split": "test", "num_reference": 0,  # 0: the whole split
      "num_reconstructions": 10_000,
      "fid": True,
      "inception_weights": ml_collections.FieldReference(None, field_type=str),  # None: the cache
      "inception_batch_size": 100,
      # Reference statistics and reconstruction features; None: ~/.cache/cgdiff/fid_stats
      "cache_dir": ml_collections.FieldReference(None, field_type=str),
      "sw2_projections": 512, "sw2_seed": 0,
      # The real-vs-real SW2 floor: mean and sd over this many disjoint sets of training latents (one
      # draw is heavy-tailed), each against the reference latents; fewer when the training set is short.
      "sw2_floor_draws": 5,
      # The outer fraction of ranks (half at each end) that the trimmed SW2^2 leaves out, and whose share
      # of the untrimmed sum is reported: how much of the distance a few far samples make.
      "sw2_tail": 0.01,
      # Fixed noise banks shared by every row and seed (cgdiff.metrics.banks): the samplers' z_T, the
      # posterior eps of each real image; bank_seed also seeds the SDE path noise and the floor's sets.
      "bank_dir": ml_collections.FieldReference(None, field_type=str),  # None: ~/.cache/cgdiff/eval_banks
      "bank_seed": 0,
      # Rows per saved chunk of latents and features (rounded up to whole batches): what a killed
      # evaluation does not redo.
      "chunk_size": 1000,
      "profile_times": 24, "profile_batch": 512,  # score targets and gate across time
  })
  # Stage `diagnose` (experiments/diagnosis.py): gates and targets on real posteriors across time.
  config.diagnose = ml_collections.ConfigDict({
      "split": "test", "num_posteriors": 1000, "num_times": 24,
      # Var(target | z_t) by exact posterior sampling on the field of the first field_components
      # posteriors: num_points z_t per time, num_draws posterior draws at each.
      "field_components": 2000, "num_points": 16, "num_draws": 256,
  })
  return config


def two_stage(target: str) -> ml_collections.ConfigDict:
  """001's VAE and UNet, trained in two stages on `target` (tweedie or lsi: neither reads the latent
  statistics, which only 001's prior CSEM needs)."""
  config = get_config()
  config.stages = ("vae", "ldm", "sample")
  config.ldm.target = target
  return config
