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
import dataclasses
import datetime
import importlib.metadata
import os
import platform
import sys
from typing import Any

import jax
import torch

from benchmarks import sections as sections_lib
from benchmarks.settings import QUICK, Settings
from benchmarks.sides import torch_device
from benchmarks.timing import print_header
from cgdiff import records
from cgdiff.train import devices
from configs import base as base_config

SECTIONS = ("peak", "vae", "unet128", "unet64", "sample", "inception", "fmnist")
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


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
    results["peak"] = sections_lib.section_peak(settings, device)
  if "vae" in sections:
    results["vae"] = sections_lib.section_vae(settings, config, device)
  results["unet"] = []
  for base in settings.unet_bases:
    if f"unet{base}" in sections:
      results["unet"] += sections_lib.section_unet(base, settings, config, device)
  if "sample" in sections:
    results["sample"] = sections_lib.section_sample(settings, config, device)
  if "inception" in sections:
    results["inception"] = sections_lib.section_inception(settings, device)
  if "fmnist" in sections:
    results["fmnist"] = sections_lib.section_fmnist(settings, device)
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
