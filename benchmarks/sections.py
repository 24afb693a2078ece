"""The benchmark's sections, each a cgdiff program next to its torch counterpart (benchmarks/run.py's
docstring lists them): the matmul peak, the VAE, UNet and co-training train steps, the samplers, Inception
pool3, and the results program's steps at its sizes. Each returns its measurements' records.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch

from benchmarks import torch_models, torch_steps
from benchmarks.settings import Settings
from benchmarks.sides import (cgdiff_train_sides, compile_aot, compile_jax, init_unet, jax_call, plain,
                              score_config, to_torch, torch_module, torch_sync, torch_train_sides, torch_unet)
from benchmarks.timing import Side, comparison, measure, measure_together, paired_ratio
from benchmarks.xla_cost import flops_of
from cgdiff import objectives, samplers, schedules, score_targets
from cgdiff.models import build
from configs import fmnist_base


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
