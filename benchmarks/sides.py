"""The programs the benchmark times, built the same way on both sides: cgdiff's train steps as
cgdiff.train.loop builds them (pmapped, state donated, compiled ahead of time), torch's eager (or
torch.compile'd) steps of the same architectures from cgdiff's initial weights, and the model and
config helpers the sections share.
"""

from __future__ import annotations

import copy
import functools
import time
from typing import Any

import jax
import numpy as np
import torch
from torch import nn

from benchmarks import torch_models, torch_steps
from benchmarks.settings import Settings
from benchmarks.timing import Side
from benchmarks.xla_cost import flops_of
from cgdiff.models import build
from cgdiff.train import loop as loop_lib
from cgdiff.train import state as state_lib


def torch_device() -> torch.device:
  return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def torch_sync(device: torch.device) -> None:
  if device.type == "cuda":
    torch.cuda.synchronize(device)


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
