"""cgdiff against the PyTorch comparator of 001's recipe, side by side in one process (issue 5).

    python -m benchmarks.run                                   # everything (an hour or more on 2 cores)
    python -m benchmarks.run --quick                           # tiny sizes, 1 repetition: a smoke test
    python -m benchmarks.run --reps 7 --out benchmarks/results/NAME.json
    python -m benchmarks.run --only peak,unet64                # a subset: peak, vae, unet128, unet64, sample,
                                                               # inception, fmnist
    python -m benchmarks.run --torch-compile                   # + torch.compile'd train steps (slow compiles)
    python -m benchmarks.run --cpu-devices 1                   # JAX's single CPU device (default: one per core)

What it measures, each cgdiff program next to its torch counterpart (benchmarks.torch_models /
torch_steps: the same architectures, sizes, batch, optimiser options and maths):
  peak      float32 matmul n x n: jnp.dot (jitted) and torch.mm, GFLOP/s: the machine's limit
  vae       VAE train step, batch 128 of 32x32x3 images (001 section 3.1; config vae.training)
  unetB     UNet train step, batch 128 of 8x8x4 posteriors, base channels B in (128, 64), for the
            baseline (tweedie), critic-gate and LSI targets (config ldm.training: AdamW, clipping, EMA)
  sample    Heun-PC x 50 steps and RK4 x 10 steps at the sampling batch (config sample.batch_size) with
            the base-128 UNet, and one network forward at that batch: wall time / (NFE x forward)
  inception the TF-FID Inception-v3 to pool3 (cgdiff.metrics.inception.pool3) against the TorchScript
            network it was converted from (default_1.pt, torch.jit.load; needs the cached weights of
            `python -m cgdiff.metrics.inception_weights`, else the section is skipped), batch 50 and
            100 of the same preprocessed images, and how far their features differ; with several JAX
            CPU devices also pool3 with the batch split over them (rows `cgdiff_all_devices`: its time
            over the one-device pool3's, the library's way)
  fmnist    the results program's train steps at its sizes (configs/fmnist_base.py; README "Protocol"):
            the VAE on batch 128 of 32x32x1 images, the UNet on 8x8x2 posteriors with the three targets
            (critic-gate with its per-element gate), and row (a)'s co-training step (VAE + UNet, LSI,
            modified KL, the score loss reaching the encoder)
  the GFLOP/s of every UNet train step and Inception pool3: XLA's cost analysis of cgdiff's compiled
  program (the same FLOP count is used for torch's time) against the measured matmul peak.
The UNet steps take one fixed posterior batch (mean, logvar) on both sides: cgdiff trains on a precomputed
posterior data set, and 001's loop, which encodes every batch with the frozen VAE inside the step, would
add the same VAE forward to both; it is left out. Inputs are random (speed does not depend on the data).
Both sides start from the same weights (cgdiff's initialisation copied into the torch modules).

How: cgdiff's steps are built through its public API the way the training stages build them (objectives +
cgdiff.train.step.make_train_step, pmapped with the state donated as cgdiff.train.loop does, over the CPU
devices that experiments.run's --cpu_devices gives, one per core by default (cgdiff.train.devices);
samplers.sample under jax.jit, on one device), compiled ahead of time (compile time reported apart), then
every measurement runs the two sides alternately A B A B ... after `--warmup` untimed calls each; each
call blocks on its result (jax.block_until_ready; torch.cuda.synchronize on a GPU). Measurements whose
ratio is a target share one alternation: the three UNet targets' steps (critic-gate / baseline and LSI /
baseline time), and the network forward (4 calls per slot) with both samplers (wall / (NFE x forward));
those ratios are medians of per-repetition ratios, since this machine's speed drifts by tens of per cent
over minutes. With several CPU devices each train step is also timed on the first device alone with the
whole batch, in the same alternation (rows `cgdiff_1_device`: its time over the data-parallel step's).
torch uses as many threads as the process has cores (XLA:CPU uses them all by default); the record says
how many. The table gives the median time per call with its min-max spread, throughputs, and the speed
ratio torch time / cgdiff time (> 1: cgdiff faster), with the min-max of the per-repetition paired ratios.
A JSON record (machine, versions, commit, settings, every sample) goes to benchmarks/results/.

On a GPU (jax[cuda12] and a CUDA torch) the same command runs there: JAX's default device and
torch.cuda when available; the record names both devices.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import functools
import importlib.metadata
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import torch
from torch import nn

from benchmarks import torch_models, torch_steps
from benchmarks.xla_cost import flops_of
from cgdiff import objectives, records, samplers, schedules, score_targets
from cgdiff.models import build
from cgdiff.train import devices, loop as loop_lib
from cgdiff.train import state as state_lib
from configs import base as base_config
from configs import fmnist_base

SECTIONS = ("peak", "vae", "unet128", "unet64", "sample", "inception", "fmnist")
TARGETS = ("tweedie", "critic_gate", "lsi")
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


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


# --- devices and machine ---------------------------------------------------------------------------------
def torch_device() -> torch.device:
  return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def torch_sync(device: torch.device) -> None:
  if device.type == "cuda":
    torch.cuda.synchronize(device)


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def machine_record(device: torch.device) -> dict[str, Any]:
  jax_device = jax.devices()[0]
  return {
      "platform": platform.platform(), "cpu_model": cpu_model(), "cores": devices.available_cores(),
      "jax_backend": jax.default_backend(), "jax_device_kind": jax_device.device_kind,
      "jax_device_count": jax.local_device_count(),
      "torch_device": device.type,
      "torch_device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
      "torch_threads": torch.get_num_threads(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "load_average_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
  }


def versions() -> dict[str, str]:
  out = {"python": platform.python_version()}
  for package in ("jax", "jaxlib", "flax", "optax", "numpy", "torch"):
    try:
      out[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      out[package] = "absent"
  return out


# --- timing ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Side:
  """One framework's side of a measurement: run() does one blocking call."""

  run: Callable[[], None]
  compile_s: float | None = None   # cgdiff: lower + compile, apart from the timed calls
  flops: float | None = None       # XLA's cost analysis of the compiled program


def summary(samples: list[float]) -> dict[str, Any]:
  return {"median_s": statistics.median(samples), "min_s": min(samples), "max_s": max(samples),
          "samples_s": samples}


def alternate(sides: dict[Any, Side], reps: int, warmup: int) -> dict[Any, list[float]]:
  """Seconds per call of each side, timed alternately A B C A B C ... after `warmup` untimed calls each."""
  for _ in range(warmup):
    for side in sides.values():
      side.run()
  samples = {name: [] for name in sides}
  for _ in range(reps):
    for name, side in sides.items():
      start = time.perf_counter()
      side.run()
      samples[name].append(time.perf_counter() - start)
  return samples


def comparison(name: str, sides: dict[str, Side], samples: dict[str, list[float]], items: int, unit: str,
               **extra: Any) -> dict[str, Any]:
  """The record of one measurement of `sides` ({'cgdiff': ..., 'torch': ..., optionally
  'torch_compile': ...}) from their timed `samples`. ratios[side]: that side's time / cgdiff's time
  (> 1: cgdiff faster), of the medians and per repetition (paired); speed_ratio is the one against eager
  torch."""
  out = {"name": name, "items_per_call": items, "unit": unit, **extra, "ratios": {}}
  for side_name, side in sides.items():
    out[side_name] = {**summary(samples[side_name]), "compile_s": side.compile_s, "flops": side.flops,
                      "items_per_s": items / statistics.median(samples[side_name])}
    if side_name != "cgdiff":
      paired = [t / c for c, t in zip(samples["cgdiff"], samples[side_name])]
      out["ratios"][side_name] = {"median": out[side_name]["median_s"] / out["cgdiff"]["median_s"],
                                  "paired_min": min(paired), "paired_max": max(paired), "paired": paired}
  out["speed_ratio"] = out["ratios"]["torch"]["median"]
  print_row(out)
  return out


def measure(name: str, sides: dict[str, Side], items: int, unit: str, reps: int, warmup: int,
            **extra: Any) -> dict[str, Any]:
  """Times `sides` alternately and returns `comparison`'s record."""
  return comparison(name, sides, alternate(sides, reps, warmup), items, unit, **extra)


def measure_together(groups: dict[str, dict[str, Side]], reps: int, warmup: int
                     ) -> dict[str, dict[str, list[float]]]:
  """Times every side of every group in one alternation (g1.cgdiff g1.torch g2.cgdiff ... repeated), so
  that ratios between groups (a target's step over the baseline's, a sampler over the forward) pair
  calls made moments apart: the machine's speed drifts over minutes. Returns samples[group][side]."""
  flat = alternate({(g, s): side for g, sides in groups.items() for s, side in sides.items()}, reps, warmup)
  return {g: {s: flat[(g, s)] for s in sides} for g, sides in groups.items()}


def paired_ratio(numerator: list[float], denominator: list[float]) -> dict[str, float]:
  """Median of the per-repetition ratios of two sides timed in one alternation, with their min and max."""
  ratios = [a / b for a, b in zip(numerator, denominator)]
  return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}


def print_header() -> None:
  print(f"\n{'measurement':<34s} {'cgdiff s/call [min-max]':>27s} {'torch s/call [min-max]':>27s} "
        f"{'cgdiff/s':>9s} {'torch/s':>9s} {'speed x [paired]':>20s} {'compile s':>9s}", flush=True)


def _cell(side: dict[str, Any]) -> str:
  return f"{side['median_s']:9.4f} [{side['min_s']:.4f}-{side['max_s']:.4f}]"


def print_row(rec: dict[str, Any]) -> None:
  """The cgdiff-vs-torch row, then one row per further comparator (torch.compile, cgdiff on one device)
  in the torch columns."""
  cg = rec["cgdiff"]
  order = sorted(rec["ratios"], key=lambda side: side != "torch")
  for i, side in enumerate(order):
    th, ratio, first = rec[side], rec["ratios"][side], i == 0
    label = rec["name"] if first else f"  {side}"
    cg_cell = _cell(cg) if first else ""
    cg_rate = f"{cg['items_per_s']:.1f}" if first else ""
    speed = f"{ratio['median']:.2f} [{ratio['paired_min']:.2f}-{ratio['paired_max']:.2f}]"
    compile_s = (cg if first else th).get("compile_s")
    compile_cell = f"{compile_s:.1f}" if compile_s is not None else ""
    print(f"{label:<34s} {cg_cell:>27s} {_cell(th):>27s} {cg_rate:>9s} {th['items_per_s']:9.1f} {speed:>20s} "
          f"{compile_cell:>9s}", flush=True)


# --- cgdiff programs -------------------------------------------------------------------------------------
def compile_jax(fn, args: tuple, settings: Settings, **jit_kwargs) -> tuple[Any, float]:
  """(compiled jax.jit(fn) for args, seconds to lower and compile)."""
  return compile_aot(jax.jit(fn, **jit_kwargs), args, settings)


def compile_aot(jitted, args: tuple, settings: Settings) -> tuple[Any, float]:
  """(an already jitted function compiled for args, with its own compile options and the settings', seconds
  to lower and compile)."""
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile(compiler_options=settings.compiler_options)
  return compiled, time.perf_counter() - start


def jax_call(compiled, args: tuple) -> Side:
  return Side(lambda: jax.block_until_ready(compiled(*args)))


def cgdiff_train_side(loss_fn, params, batch, training, settings: Settings,
                      devices: list[jax.Device] | None = None) -> Side:
  """cgdiff's train step as cgdiff.train.loop builds and calls it (pmapped over the local devices, or
  `devices`, the batch split among them; state donated)."""
  devices = jax.local_devices() if devices is None else devices
  tx = state_lib.make_optimizer(training, training.num_steps)
  p_step = loop_lib.pmapped_train_step(loss_fn, tx, ema_decay=training.ema_decay, devices=devices)
  size = jax.tree.leaves(batch)[0].shape[0]
  batch, ids = loop_lib.device_batch((batch, np.arange(size)), len(devices))
  key = jax.random.PRNGKey(0)
  holder = [loop_lib.replicate(state_lib.create_state(params, tx), devices=devices)]
  start = time.perf_counter()
  compiled = p_step.lower(holder[0], batch, ids, key).compile(compiler_options=settings.compiler_options)
  compile_s = time.perf_counter() - start
  # XLA's cost analysis is of one device's program (its share of the batch): the step's FLOPs are that
  # times the devices (the replicated optimiser update, ~20 FLOPs per parameter, is then counted per
  # device: < 0.1% of a UNet step).
  flops = flops_of(compiled)

  def run():
    holder[0], metrics = compiled(holder[0], batch, ids, key)
    jax.block_until_ready((holder[0], metrics))

  return Side(run, compile_s, flops * len(devices) if flops else None)


def cgdiff_train_sides(loss_fn, params, batch, training, settings: Settings) -> dict[str, Side]:
  """{'cgdiff': the step on every local device[, 'cgdiff_1_device': the same step on the first device
  alone, with the whole batch]}: with several CPU devices the second measures what the data-parallel
  split gains (its ratio is its time over cgdiff's)."""
  sides = {"cgdiff": cgdiff_train_side(loss_fn, params, batch, training, settings)}
  if jax.local_device_count() > 1:
    sides["cgdiff_1_device"] = cgdiff_train_side(loss_fn, params, batch, training, settings,
                                                 devices=jax.local_devices()[:1])
  return sides


# --- torch programs --------------------------------------------------------------------------------------
def torch_train_sides(modules: dict[str, nn.Module], loss_fn, batch, training, device: torch.device,
                      settings: Settings) -> dict[str, Side]:
  """{'torch': eager train step[, 'torch_compile': the same with torch.compile(loss_fn)]}, each on its
  own copy of `modules`; torch.compile's first call (its compile) is timed apart."""
  sides = {}
  for name, compiled in [("torch", False)] + [("torch_compile", True)] * settings.torch_compile:
    model = nn.ModuleDict({k: copy.deepcopy(m) for k, m in modules.items()}).to(device)
    trainer = torch_steps.Trainer(model, torch.compile(loss_fn) if compiled else loss_fn, training)

    def run(trainer=trainer):
      trainer.step(batch)
      torch_sync(device)

    sides[name] = Side(run)
    if compiled:
      start = time.perf_counter()
      run()
      sides[name].compile_s = time.perf_counter() - start
  return sides


def to_torch(x, device: torch.device) -> torch.Tensor:
  """NHWC array -> NCHW float32 tensor on `device` (rank != 4: as is)."""
  x = np.array(x, np.float32)  # a writable copy
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if x.ndim == 4 else x).to(device)


def torch_module(module: nn.Module, params) -> nn.Module:
  """`module` with cgdiff's initial parameters (the same weights on both sides)."""
  module.load_state_dict(torch_models.flax_to_torch_state(params, module))
  return module


# --- the sections ----------------------------------------------------------------------------------------
def section_peak(settings: Settings, device: torch.device) -> dict[str, Any]:
  n = settings.matmul_n
  rng = np.random.default_rng(0)
  a, b = (rng.standard_normal((n, n)).astype(np.float32) for _ in range(2))
  ja, jb = jnp.asarray(a), jnp.asarray(b)
  compiled, compile_s = compile_jax(jnp.dot, (ja, jb), settings)
  ta, tb = torch.from_numpy(a).to(device), torch.from_numpy(b).to(device)

  def torch_mm():
    torch.mm(ta, tb)
    torch_sync(device)

  cg = jax_call(compiled, (ja, jb))
  cg.compile_s, cg.flops = compile_s, 2.0 * n**3
  rec = measure(f"matmul {n}x{n} f32 (GFLOP/call)", {"cgdiff": cg, "torch": Side(torch_mm, flops=2.0 * n**3)},
                2 * n**3 / 1e9, "GFLOP", max(settings.reps, 3), settings.warmup)
  rec["peak_gflops"] = {side: rec[side]["items_per_s"] for side in ("cgdiff", "torch")}
  return rec


def section_vae(settings: Settings, config, device: torch.device) -> dict[str, Any]:
  model_cfg = plain({**config.vae.model.to_dict(), **(settings.vae_model or {})})
  module, params = build.vae_and_params(model_cfg, settings.image_shape, jax.random.PRNGKey(0))
  images = jnp.asarray(np.tanh(np.random.default_rng(2).standard_normal(
      (settings.vae_batch,) + settings.image_shape)), jnp.float32)
  loss_fn = functools.partial(
      objectives.vae_loss, encode_fn=lambda p, x: module.apply(p, x, method=module.encode),
      decode_fn=lambda p, z: module.apply(p, z, method=module.decode), kl=config.vae.kl,
      kl_weight=config.vae.kl_weight)
  cg = cgdiff_train_sides(loss_fn, params, images, config.vae.training, settings)
  tvae = torch_module(torch_models.VAE(**model_cfg), params)
  th = torch_train_sides({"vae": tvae}, torch_steps.vae_loss(config.vae.kl_weight), to_torch(images, device),
                         config.vae.training, device, settings)
  shape = "x".join(map(str, settings.image_shape))
  return measure(f"VAE train step b{settings.vae_batch} {shape} (img)", {**cg, **th},
                 settings.vae_batch, "images", settings.reps, settings.warmup,
                 parameters=int(sum(x.size for x in jax.tree.leaves(params))))


def section_cotrain(settings: Settings, config, device: torch.device) -> dict[str, Any]:
  """config.cotrain's step (002 Algorithm 1): VAE + score network on a batch of images."""
  cfg = config.cotrain
  if cfg.stiffness_weight or not cfg.encoder_score_gradient:
    raise ValueError("the torch co-training step has no stiffness term and always trains the encoder.")
  vae_cfg = plain({**config.vae.model.to_dict(), **(settings.vae_model or {})})
  vae, vae_params = build.vae_and_params(vae_cfg, settings.image_shape, jax.random.PRNGKey(0))
  images = jnp.asarray(np.tanh(np.random.default_rng(3).standard_normal(
      (settings.vae_batch,) + settings.image_shape)), jnp.float32)
  score_cfg = score_config(config, config.score_net.base_channels, settings)
  net, score_params = init_unet(score_cfg, settings.latent_shape)
  params = {"vae": vae_params, "score": score_params}
  schedule = schedules.make(config.schedule.name, **config.schedule.kwargs)
  loss_fn = functools.partial(
      objectives.cotrain_loss, encode_fn=lambda p, x: vae.apply(p, x, method=vae.encode),
      decode_fn=lambda p, z: vae.apply(p, z, method=vae.decode), eps_fn=net.apply, schedule=schedule,
      kl=cfg.kl, kl_weight=cfg.kl_weight, score_target=cfg.score_target, score_weight=cfg.score_weight,
      stiffness_weight=cfg.stiffness_weight, encoder_score_gradient=cfg.encoder_score_gradient)
  modules = {"vae": torch_module(torch_models.VAE(**vae_cfg), params["vae"]),
             "score": torch_module(torch_unet(score_cfg, settings.latent_shape), score_params)}
  torch_loss = torch_steps.cotrain_loss(torch_steps.CosineSchedule(**config.schedule.kwargs.to_dict()), cfg.kl,
                                        cfg.kl_weight, cfg.score_target, cfg.score_weight)
  sides = {**cgdiff_train_sides(loss_fn, params, images, cfg.training, settings),
           **torch_train_sides(modules, torch_loss, to_torch(images, device), cfg.training, device, settings)}
  shape = "x".join(map(str, settings.image_shape))
  return measure(f"co-train step {cfg.score_target} b{settings.vae_batch} {shape} (img)", sides,
                 settings.vae_batch, "images", settings.reps, settings.warmup,
                 parameters=int(sum(x.size for x in jax.tree.leaves(params))))


def section_fmnist(settings: Settings, device: torch.device) -> list[dict[str, Any]]:
  """The results program's steps at its sizes (configs/fmnist_base.py): VAE, UNet (three targets),
  co-training (row (a)). The settings' model overrides (quick) apply on top."""
  config = fmnist_base.get_config()
  image_shape = tuple(config.data.image_shape)
  vae = build.vae(plain({**config.vae.model.to_dict(), **(settings.vae_model or {})}))
  factor = vae.downsample_factor
  fmnist = dataclasses.replace(settings, image_shape=image_shape,
                               latent_shape=(image_shape[0] // factor, image_shape[1] // factor,
                                             vae.latent_channels))
  return [section_vae(fmnist, config, device),
          *section_unet(config.score_net.base_channels, fmnist, config, device),
          section_cotrain(fmnist, config, device)]


def plain(cfg: dict[str, Any]) -> dict[str, Any]:
  """A config group as module keyword arguments: lists (ConfigDict's sequences) as tuples."""
  return {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}


def score_config(config, base: int, settings: Settings) -> dict[str, Any]:
  """config.score_net at `base` channels with the settings' overrides."""
  return plain({**config.score_net.to_dict(), "base_channels": base, **(settings.unet_model or {})})


def torch_unet(cfg: dict[str, Any], latent_shape: tuple[int, ...]) -> torch_models.UNet:
  kwargs = {k: v for k, v in cfg.items() if k != "kind"}
  return torch_models.UNet(in_channels=latent_shape[-1], resolution=latent_shape[0], **kwargs)


def init_unet(cfg: dict[str, Any], latent_shape: tuple[int, ...]):
  """(cgdiff UNet, its initial parameters); initialised once per configuration (sections share it)."""
  return _init_unet(tuple(sorted(cfg.items())), latent_shape)


@functools.cache
def _init_unet(cfg_items: tuple, latent_shape: tuple[int, ...]):
  return build.score_net_and_params(dict(cfg_items), latent_shape, jax.random.PRNGKey(1))


def section_unet(base: int, settings: Settings, config, device: torch.device) -> list[dict[str, Any]]:
  cfg = score_config(config, base, settings)
  shape = (settings.unet_batch,) + settings.latent_shape
  net, score_params = init_unet(cfg, settings.latent_shape)
  gate, gate_params = build.gate_and_params(config.gate, settings.latent_shape, jax.random.PRNGKey(2))
  rng = np.random.default_rng(1)
  posterior = (jnp.asarray(rng.standard_normal(shape), jnp.float32),
               jnp.asarray(rng.uniform(-3.0, -1.0, shape), jnp.float32))
  torch_posterior = tuple(to_torch(x, device) for x in posterior)
  schedule = schedules.make(config.schedule.name, **config.schedule.kwargs)
  torch_schedule = torch_steps.CosineSchedule(**config.schedule.kwargs.to_dict())
  training = config.ldm.training
  groups, extras = {}, {}
  for target in settings.targets:
    critic = score_targets.get(target).needs_gate
    params = {"score": score_params, **({"gate": gate_params} if critic else {})}
    loss_fn = objectives.diffusion_loss_fn(target, eps_fn=net.apply, schedule=schedule,
                                           gate_fn=gate.apply if critic else None)
    modules = {"score": torch_module(torch_unet(cfg, settings.latent_shape), score_params)}
    if critic:
      gate_module = torch_models.CriticGate(settings.latent_shape[-1], **config.gate.to_dict())
      modules["gate"] = torch_module(gate_module, gate_params)
    groups[target] = {**cgdiff_train_sides(loss_fn, params, posterior, training, settings),
                      **torch_train_sides(modules, torch_steps.diffusion_loss(torch_schedule, target),
                                          torch_posterior, training, device, settings)}
    extras[target] = {"base": base, "target": target,
                      "parameters": int(sum(x.size for x in jax.tree.leaves(params)))}
  samples = measure_together(groups, settings.reps, settings.warmup)
  out = []
  for target, sides in groups.items():
    rec = comparison(f"UNet{base} step {target} b{settings.unet_batch} (lat)", sides, samples[target],
                     settings.unet_batch, "latents", **extras[target])
    if target != "tweedie" and "tweedie" in samples:
      rec["over_baseline"] = {side: paired_ratio(samples[target][side], samples["tweedie"][side])
                              for side in ("cgdiff", "torch")}
    out.append(rec)
  return out


def section_sample(settings: Settings, config, device: torch.device) -> list[dict[str, Any]]:
  cfg = score_config(config, settings.sample_base, settings)
  batch = settings.sample_batch or config.sample.batch_size
  shape = (batch,) + settings.latent_shape
  net, params = init_unet(cfg, settings.latent_shape)
  schedule = schedules.make(config.schedule.name, **config.schedule.kwargs)
  tnet = torch_module(torch_unet(cfg, settings.latent_shape), params).to(device).eval()
  torch_schedule = torch_steps.CosineSchedule(**config.schedule.kwargs.to_dict())
  reps = settings.sample_reps or settings.reps
  z = jnp.asarray(np.random.default_rng(3).standard_normal(shape), jnp.float32)
  t = jnp.full((batch,), 0.5, jnp.float32)
  compiled, compile_s = compile_jax(net.apply, (params, z, t), settings)
  tz, tt = to_torch(z, device), to_torch(t, device)
  torch_shape = tuple(tz.shape)

  def torch_forward():
    with torch.inference_mode():
      tnet(tz, tt)
    torch_sync(device)

  k = settings.forward_calls
  forward_cg = jax_call(compiled, (params, z, t))
  groups = {"forward": {  # k forwards per slot: a sampler call is ~NFE forwards, so time the forward well
      "cgdiff": Side(lambda: [forward_cg.run() for _ in range(k)], compile_s, flops_of(compiled)),
      "torch": Side(lambda: [torch_forward() for _ in range(k)])}}

  methods = (("heun_pc", settings.heun_steps), ("rk4", settings.rk4_steps))
  for method, steps in methods:
    def run(p, key, method=method, steps=steps):
      return samplers.sample(samplers.score_from_eps(net.apply, p, schedule), schedule, key, shape,
                             method=method, num_steps=steps)
    key = jax.random.PRNGKey(4)
    compiled, compile_s = compile_jax(run, (params, key), settings)
    cg = jax_call(compiled, (params, key))
    cg.compile_s = compile_s

    def torch_sample(method=method, steps=steps):
      torch_steps.sample(tnet, torch_schedule, torch_shape, method=method,
                         num_steps=steps, device=device)
      torch_sync(device)

    groups[method] = {"cgdiff": cg, "torch": Side(torch_sample)}
  # The forward and both samplers in one alternation: wall / (NFE x forward) pairs calls made together.
  samples = measure_together(groups, reps, settings.sample_warmup)
  samples["forward"] = {side: [x / k for x in xs] for side, xs in samples["forward"].items()}
  out = [comparison(f"UNet{settings.sample_base} forward b{batch} (lat)", groups["forward"],
                    samples["forward"], batch, "latents", calls_per_slot=k)]
  for method, steps in methods:
    nfe = samplers.nfe(method, steps)
    rec = comparison(f"{method} x{steps} NFE {nfe} b{batch} (lat)", groups[method], samples[method], batch,
                     "latents", method=method, num_steps=steps, nfe=nfe)
    overhead = {side: paired_ratio(samples[method][side], [nfe * f for f in samples["forward"][side]])
                for side in ("cgdiff", "torch")}
    rec["wall_over_nfe_forward"] = {side: r["median"] for side, r in overhead.items()}
    rec["wall_over_nfe_forward_spread"] = overhead
    out.append(rec)
  return out


def section_inception(settings: Settings, device: torch.device) -> list[dict[str, Any]]:
  """Inception pool3, cgdiff's `inception.pool3` (on the first JAX device) against torch.jit.load of the
  TorchScript file it was converted from, per batch size of settings.inception_batches, on the same
  preprocessed images; [] when the weights are not cached. Each record has `feature_max_rel_diff`, max
  |cgdiff - torch| / max |torch| over the batch's features, and with several JAX devices a side
  `cgdiff_all_devices`: pool3 jitted with the batch split over the local devices."""
  from cgdiff.metrics import inception, inception_weights  # pylint: disable=g-import-not-at-top
  pt = os.path.join(inception_weights.default_cache_dir(), inception_weights.PT_NAME)
  try:
    variables = jax.device_put(inception_weights.load_inception_params(), jax.devices()[0])
    if not os.path.exists(pt):
      raise FileNotFoundError(f"no TorchScript file at {pt}; run `{inception_weights.FETCH_COMMAND}`.")
  except FileNotFoundError as error:
    print(f"inception: skipped: {error}", flush=True)
    return []
  model = torch.jit.load(pt, map_location=device).eval()
  count = jax.local_device_count()
  out = []
  for batch in settings.inception_batches:
    images = np.random.default_rng(6).uniform(-1.0, 1.0, (batch, 64, 64, 3)).astype(np.float32)
    x = jax.device_put(inception.preprocess(jnp.asarray(images)), jax.devices()[0])  # [B, 299, 299, 3]
    program = inception.pool3_program(jax.default_backend())  # what inception.pool3 runs, compile options too
    compiled, compile_s = compile_aot(program, (variables, x), settings)
    sides = {"cgdiff": jax_call(compiled, (variables, x))}
    sides["cgdiff"].compile_s, sides["cgdiff"].flops = compile_s, flops_of(compiled)
    tx = to_torch(x, device)

    def torch_pool3(tx=tx):
      with torch.inference_mode():
        features = model(tx)
      torch_sync(device)
      return features

    sides["torch"] = Side(torch_pool3)
    if count > 1 and batch % count == 0:
      mesh = jax.sharding.Mesh(np.array(jax.local_devices()), ("batch",))
      split = (jax.device_put(variables, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())),
               jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch"))))
      compiled_split, compile_s = compile_aot(program, split, settings)
      sides["cgdiff_all_devices"] = jax_call(compiled_split, split)
      sides["cgdiff_all_devices"].compile_s = compile_s
    ours, theirs = np.asarray(compiled(variables, x)), torch_pool3().cpu().numpy()  # also a first warm-up
    rel_diff = float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))
    out.append(measure(f"Inception pool3 b{batch} (img)", sides, batch, "images", settings.reps,
                       settings.inception_warmup, batch=batch, feature_max_rel_diff=rel_diff,
                       jax_devices=count))
  return out


# --- derived figures and the record ----------------------------------------------------------------------
def derived(results: dict[str, Any]) -> dict[str, Any]:
  """GFLOP/s of the UNet steps and of Inception pool3 against the peaks (rows' gflop_per_step: per call),
  target-step / baseline-step time, sampler overhead."""
  out: dict[str, Any] = {"unet_gflops": [], "inception_gflops": [], "target_over_baseline": [],
                         "sampler_overhead": []}
  peak = results.get("peak", {}).get("peak_gflops", {})
  unet = results.get("unet", []) + [rec for rec in results.get("fmnist", []) if "target" in rec]
  for key, recs in (("unet_gflops", unet), ("inception_gflops", results.get("inception", []))):
    for rec in recs:
      flops = rec["cgdiff"]["flops"]
      if not flops:
        continue
      row = {"name": rec["name"], "gflop_per_step": flops / 1e9}
      for side in ("cgdiff", "torch"):
        gflops = flops / rec[side]["median_s"] / 1e9
        row[f"{side}_gflops"] = gflops
        row[f"{side}_share_of_jnp_dot_peak"] = gflops / peak["cgdiff"] if peak else None
        row[f"{side}_share_of_torch_mm_peak"] = gflops / peak["torch"] if peak else None
      out[key].append(row)
  for rec in unet:
    if "over_baseline" in rec:  # medians of the ratios of calls paired in one alternation
      out["target_over_baseline"].append(
          {"name": f"UNet{rec['base']} {rec['target']} / tweedie step time",
           **{side: rec["over_baseline"][side]["median"] for side in ("cgdiff", "torch")}})
  for rec in results.get("sample", []):
    if "wall_over_nfe_forward" in rec:
      out["sampler_overhead"].append({"name": rec["name"], **rec["wall_over_nfe_forward"]})
  return out


def print_derived(figures: dict[str, Any]) -> None:
  tables = (("unet_gflops", "UNet train step (XLA FLOPs)"), ("inception_gflops", "Inception pool3 (XLA FLOPs)"))
  for key, title in tables:
    if not figures.get(key):
      continue
    print(f"\n{title:<34s} {'GFLOP':>8s} {'cgdiff GFLOP/s':>15s} {'% jnp.dot':>10s} "
          f"{'torch GFLOP/s':>14s} {'% torch.mm':>11s}")
    for row in figures[key]:
      share = lambda x: f"{100 * x:9.1f}%" if x is not None else f"{'':>10s}"
      print(f"{row['name']:<34s} {row['gflop_per_step']:8.1f} {row['cgdiff_gflops']:15.1f} "
            f"{share(row['cgdiff_share_of_jnp_dot_peak'])} {row['torch_gflops']:14.1f} "
            f"{share(row['torch_share_of_torch_mm_peak'])}")
  rows = figures["target_over_baseline"] + figures["sampler_overhead"]
  if rows:
    print(f"\n{'time ratio (target: <= 1.10 cg, 1.02 lsi, 1.05 sampler)':<58s} {'cgdiff':>8s} {'torch':>8s}")
    for row in figures["target_over_baseline"]:
      print(f"{row['name']:<58s} {row['cgdiff']:8.3f} {row['torch']:8.3f}")
    for row in figures["sampler_overhead"]:
      print(f"{row['name'] + ': wall / (NFE x forward)':<58s} {row['cgdiff']:8.3f} {row['torch']:8.3f}")


def benchmark(settings: Settings, sections: tuple[str, ...] = SECTIONS,
              out: str | None = None) -> dict[str, Any]:
  """Runs `sections`, prints the table and writes the JSON record to `out` (default:
  benchmarks/results/[quick-]<jax backend>-<UTC time>.json); returns the record."""
  torch.set_num_threads(devices.available_cores())
  device = torch_device()
  config = base_config.get_config()
  started = datetime.datetime.now(datetime.timezone.utc)
  record: dict[str, Any] = {
      "date": started.isoformat(timespec="seconds"), "command": " ".join(sys.argv),
      "git_commit": records.git_commit(), "machine": machine_record(device), "versions": versions(),
      "settings": dataclasses.asdict(settings), "sections": list(sections), "results": {},
  }
  m = record["machine"]
  print(f"cgdiff vs torch: jax {m['jax_backend']} ({m['jax_device_kind']}), torch {m['torch_device']} "
        f"({m['torch_device_name']}, {m['torch_threads']} threads), {m['cores']} cores, "
        f"load {m['load_average_start']}, commit {record['git_commit']}", flush=True)
  print_header()
  results = record["results"]
  if "peak" in sections:
    results["peak"] = section_peak(settings, device)
  if "vae" in sections:
    results["vae"] = section_vae(settings, config, device)
  results["unet"] = []
  for base in settings.unet_bases:
    if f"unet{base}" in sections:
      results["unet"] += section_unet(base, settings, config, device)
  if "sample" in sections:
    results["sample"] = section_sample(settings, config, device)
  if "inception" in sections:
    results["inception"] = section_inception(settings, device)
  if "fmnist" in sections:
    results["fmnist"] = section_fmnist(settings, device)
  record["derived"] = derived(results)
  print_derived(record["derived"])
  record["machine"]["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
  record["wall_s"] = (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds()
  if out is None:
    stamp = started.strftime("%Y%m%d-%H%M%S")
    out = os.path.join(RESULTS_DIR, f"{'quick-' if settings.quick else ''}{m['jax_backend']}-{stamp}.json")
  records.write_json(out, record)
  print(f"\nwrote {out} ({record['wall_s']:.0f} s)", flush=True)
  return record


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--quick", action="store_true", help="tiny sizes and 1 repetition (CI smoke test)")
  parser.add_argument("--reps", type=int, default=None, help="timed calls per side (default 5; quick 1)")
  parser.add_argument("--sample-reps", type=int, default=None,
                      help="timed sampler calls per side (default 3; quick 1)")
  parser.add_argument("--warmup", type=int, default=None,
                      help="untimed calls per side before the timed ones (default 2; samplers 1)")
  parser.add_argument("--torch-compile", action="store_true",
                      help="also time the torch train steps under torch.compile (minutes of compile on CPU)")
  parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
  parser.add_argument("--cpu-devices", default=devices.AUTO,
                      help="JAX CPU devices, as experiments.run's --cpu_devices: 'auto' (one per core, "
                      "dividing the batches) or a count; the train steps are pmapped over them as the "
                      "training stages do, and timed on one device too when there are several")
  parser.add_argument("--out", default=None,
                      help="JSON record path (default benchmarks/results/<backend>-<time>.json)")
  return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
  args = parse_args(argv)
  sections = tuple(args.only.split(","))
  unknown = set(sections) - set(SECTIONS)
  if unknown:
    raise SystemExit(f"unknown sections {sorted(unknown)}; expected some of {SECTIONS}")
  settings = QUICK if args.quick else Settings()
  overrides = {k: v for k, v in (("reps", args.reps), ("sample_reps", args.sample_reps),
                                 ("warmup", args.warmup), ("torch_compile", args.torch_compile or None))
               if v is not None}
  if overrides:
    settings = dataclasses.replace(settings, **overrides)
  devices.set_cpu_devices(devices.resolve_cpu_devices(args.cpu_devices, [settings.vae_batch, settings.unet_batch]))
  return benchmark(settings, sections, args.out)


if __name__ == "__main__":
  main()
