"""The benchmark's sizes and repetitions (`python -m benchmarks.run`): the full run's and --quick's."""

from __future__ import annotations

import dataclasses

TARGETS = ("tweedie", "critic_gate", "lsi")


@dataclasses.dataclass(frozen=True)
class Settings:
  """Sizes and repetitions. Model options not listed here come from configs/base.py (001's recipe)."""

  reps: int = 5                       # timed calls per side and measurement
  warmup: int = 2                     # untimed calls per side before them (train steps, peak)
  matmul_n: int = 4096                # the peak's square matmul
  vae_batch: int = 128
  image_shape: tuple[int, ...] = (32, 32, 3)
  vae_model: dict | None = None       # overrides of config.vae.model
  unet_batch: int = 128
  latent_shape: tuple[int, ...] = (8, 8, 4)
  unet_bases: tuple[int, ...] = (128, 64)
  unet_model: dict | None = None      # overrides of config.score_net besides base_channels
  targets: tuple[str, ...] = TARGETS
  sample_base: int = 128
  sample_batch: int | None = None     # None: config.sample.batch_size
  heun_steps: int = 50
  rk4_steps: int = 10
  sample_reps: int | None = 3         # None: reps (a Heun-PC call at base 128 is ~100 forwards)
  sample_warmup: int = 1              # a sampler call is itself 40-100 network calls
  forward_calls: int = 4              # network forwards per timed slot next to the samplers
  inception_batches: tuple[int, ...] = (50, 100)
  inception_warmup: int = 1           # after the call that compares the features (a call is ~10-20 s)
  compiler_options: dict | None = None  # XLA options of every cgdiff compile (quick: no backend optimisation)
  torch_compile: bool = False         # also time the torch train steps under torch.compile
  quick: bool = False


QUICK = Settings(
    reps=1, warmup=1, matmul_n=256, vae_batch=4, vae_model={"channels": (8, 16)}, unet_batch=4,
    latent_shape=(4, 4, 4), unet_bases=(64,),
    unet_model={"channel_mults": (1,), "num_res_blocks": 1, "attention_resolutions": ()},
    sample_base=64, sample_batch=4, heun_steps=2, rk4_steps=1, sample_reps=1, forward_calls=1,
    inception_batches=(2,), inception_warmup=0,
    compiler_options={"xla_backend_optimization_level": 0}, quick=True)
