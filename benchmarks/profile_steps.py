"""Where the time of cgdiff's train steps goes on this machine: full steps, forwards, and single blocks.

    python benchmarks/profile_steps.py                       # everything (a few minutes on 2 cores)
    python benchmarks/profile_steps.py --only=peak,unet64    # a subset: peak, unet64, unet128, vae, blocks
    python benchmarks/profile_steps.py --only=unet64 --ops   # + op time by kind, the 25 costliest ops

For the UNet of 001 (base 64 and 128, batch 128, 8x8x4 latents) and the VAE (batch 128, 32x32x3) it
times the jitted train step exactly as the training stages build it (cgdiff.train.step.make_train_step
around experiments/training.py's losses, pmapped with the state donated, as cgdiff.train.loop does), the
forward alone, and the forward and forward + backward of each block type alone, and a large jnp.dot: the
float32 matmul peak every GFLOP/s figure is compared with. FLOPs are XLA's cost analysis of the compiled
program. Timings are medians over --reps calls after a warm-up call; compile time is reported apart.

The blocks section times each of cgdiff's blocks next to its plain reference, "(ref)": flax's
nn.GroupNorm and nn.Conv (on the upsampled map for upsampling convs), and the attention block with
jax.nn.dot_product_attention, with the speed-up. Per-op times (--ops) need
XLA_FLAGS=--xla_cpu_enable_xprof_traceme=true; add --xla_dump_to=DIR to map op names to the HLO.

A speed profiler, not the benchmark: the side-by-side comparison with PyTorch lives elsewhere in
benchmarks/. XLA flags come from the environment (XLA_FLAGS) or --xla_flags, set before jax is imported.
"""

from __future__ import annotations

import argparse
import collections
import functools
import glob
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTIONS = ("peak", "unet64", "unet128", "vae", "blocks")


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
  parser.add_argument("--reps", type=int, default=5, help="timed calls per measurement (median)")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--targets", default="tweedie",
                      help="UNet step targets, comma-separated: tweedie (baseline), critic_gate, lsi")
  parser.add_argument("--ops", action="store_true", help="per-op time of each full step (jax.profiler)")
  parser.add_argument("--xla_flags", default="", help="appended to XLA_FLAGS before jax is imported")
  return parser.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None and ARGS.xla_flags:
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + ARGS.xla_flags).strip()
sys.path.insert(0, ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cgdiff import objectives
from cgdiff.models import build, conv as conv_lib, layers
from benchmarks.xla_cost import flops_of, op_kinds
from cgdiff.train import loop as loop_lib, state as state_lib
from configs import base as base_config
from experiments import common, training


# --- measuring ------------------------------------------------------------------------------------------
def median_ms(fn, reps: int) -> tuple[float, float, float]:
  """(median, min, max) wall time in ms of fn() over `reps` calls; fn must block on its result."""
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    fn()
    times.append(1e3 * (time.perf_counter() - start))
  return float(np.median(times)), float(np.min(times)), float(np.max(times))


def report(label: str, ms: tuple[float, float, float], flops: float, peak: float | None,
           extra: str = "") -> None:
  flops = flops or 0.0  # None: the backend gave no cost analysis
  gflops = flops / (ms[0] * 1e6) if flops else 0.0
  share = f" {100 * gflops / peak:5.1f}% peak" if peak and gflops else ""
  print(f"  {label:<44s} {ms[0]:9.2f} ms [{ms[1]:.2f}-{ms[2]:.2f}] {flops / 1e9:8.2f} GFLOP "
        f"{gflops:7.1f} GFLOP/s{share}{extra}", flush=True)


def time_jitted(fn, args, reps: int):
  """(compiled, compile seconds, (median, min, max) ms) of jax.jit(fn)(*args)."""
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - start
  jax.block_until_ready(compiled(*args))
  return compiled, compile_s, median_ms(lambda: jax.block_until_ready(compiled(*args)), reps)


def matmul_peak(reps: int, n: int = 4096) -> float:
  """GFLOP/s of an n x n float32 jnp.dot: the machine's float32 matmul peak as XLA reaches it."""
  rng = np.random.default_rng(0)
  a, b = (jnp.asarray(rng.standard_normal((n, n)), jnp.float32) for _ in range(2))
  _, _, ms = time_jitted(jnp.dot, (a, b), max(reps, 3))
  gflops = 2 * n**3 / (ms[0] * 1e6)
  print(f"matmul peak: {n}x{n} float32 jnp.dot {ms[0]:.1f} ms -> {gflops:.1f} GFLOP/s", flush=True)
  return gflops


def op_profile(fn, kinds: dict[str, dict[str, str]], top: int = 25) -> None:
  """Runs fn() under jax.profiler and prints the op time per kind of work (xla_cost.op_kinds of the
  compiled program: convolution, dot, reduction, data movement, elementwise) and the `top` XLA ops
  (thunks) by total time, with their kind, output shape and the JAX operation they came from. Op times
  are summed over threads, so they add up to more than the wall time when ops run in parallel."""
  from jax.profiler import ProfileData
  directory = tempfile.mkdtemp(prefix="cgdiff_profile_")
  jax.profiler.start_trace(directory)
  fn()
  jax.profiler.stop_trace()
  totals, counts = collections.Counter(), collections.Counter()
  for path in glob.glob(os.path.join(directory, "**", "*.xplane.pb"), recursive=True):
    for plane in ProfileData.from_file(path).planes:
      for line in plane.lines:
        if line.name == "python":
          continue
        for event in line.events:
          name = event.name
          if name.startswith(("ThreadpoolListener", "end: ", "ThunkExecutor", "SlinkyThreadPool")):
            continue
          totals[name] += event.duration_ns / 1e6
          counts[name] += 1
  total = max(sum(totals.values()), 1e-9)
  unknown = {"kind": "?", "shape": "", "op_name": ""}
  by_kind = collections.Counter()
  for name, ms in totals.items():
    by_kind[kinds.get(name, unknown)["kind"]] += ms
  print(f"    op profile: {total:.1f} ms in {sum(counts.values())} op events; by kind: " +
        ", ".join(f"{kind} {100 * ms / total:.1f}%" for kind, ms in by_kind.most_common()), flush=True)
  for name, ms in totals.most_common(top):
    info = kinds.get(name, unknown)
    print(f"    {ms:9.2f} ms {100 * ms / total:5.1f}%  x{counts[name]:<4d} {name[:24]:<24s} {info['kind']:<13s} "
          f"{info['shape'][:28]:<28s} {info['op_name'][-60:]}")


# --- full train steps -----------------------------------------------------------------------------------
def time_train_step(label: str, loss_fn, params, batch, training_config, reps: int, peak: float,
                    ops: bool) -> None:
  tx = state_lib.make_optimizer(training_config, training_config.num_steps)
  p_step = loop_lib.pmapped_train_step(loss_fn, tx, ema_decay=training_config.ema_decay)
  state = loop_lib.replicate(state_lib.create_state(params, tx))
  batch, ids = loop_lib.device_batch((batch, np.arange(jax.tree.leaves(batch)[0].shape[0])), 1)  # one device
  key = jax.random.PRNGKey(0)
  start = time.perf_counter()
  compiled = p_step.lower(state, batch, ids, key).compile()
  compile_s = time.perf_counter() - start
  flops = flops_of(compiled) or 0.0
  holder = [state]

  def run():
    holder[0], metrics = p_step(holder[0], batch, ids, key)
    jax.block_until_ready(metrics)

  run()
  # The machine may be shared: a 2048^3 matmul timed between the steps gives the peak of the moment.
  rng = np.random.default_rng(5)
  a, b = (jnp.asarray(rng.standard_normal((2048, 2048)), jnp.float32) for _ in range(2))
  matmul = jax.jit(jnp.dot).lower(a, b).compile()
  jax.block_until_ready(matmul(a, b))
  step_times, matmul_times = [], []
  for _ in range(reps):
    step_times.append(median_ms(run, 1)[0])
    matmul_times.append(median_ms(lambda: jax.block_until_ready(matmul(a, b)), 1)[0])
  ms = (float(np.median(step_times)), min(step_times), max(step_times))
  concurrent = 2 * 2048**3 / (float(np.median(matmul_times)) * 1e6)
  images = jax.tree.leaves(batch)[0].shape[1] / (ms[0] / 1e3)
  share = (f", {100 * flops / (ms[0] * 1e6) / concurrent:.0f}% of the {concurrent:.0f} GFLOP/s matmul peak"
           " timed alongside")
  report(label, ms, flops, peak, f"  {images:7.1f} img/s  (compile {compile_s:.1f} s{share})")
  if ops:
    op_profile(lambda: [run() for _ in range(2)], op_kinds(compiled.as_text()))


def unet_section(base: int, args, peak: float) -> None:
  print(f"UNet base {base}, batch {args.batch}, 8x8x4 latents", flush=True)
  config = base_config.get_config()
  config.score_net.base_channels = base
  rng = np.random.default_rng(1)
  shape = (args.batch, 8, 8, 4)
  posterior = (jnp.asarray(rng.standard_normal(shape), jnp.float32),
               jnp.asarray(rng.uniform(-3.0, -1.0, shape), jnp.float32))
  for target in args.targets.split(","):
    config.ldm.target = target
    loss_fn, params = training.ldm_loss_fn(config, "", shape[1:])
    if target == "tweedie":
      score_net = build.score_net(config.score_net)
      t = jnp.asarray(rng.uniform(0.0, 1.0, args.batch), jnp.float32)
      compiled, _, ms = time_jitted(score_net.apply, (params["score"], posterior[0], t), args.reps)
      report("forward", ms, flops_of(compiled), peak)
      print(f"  parameters: {sum(x.size for x in jax.tree.leaves(params['score'])):,}")
    time_train_step(f"train step ({target})", loss_fn, params, posterior, config.ldm.training,
                    args.reps, peak, args.ops)


def vae_section(args, peak: float) -> None:
  print(f"VAE, batch {args.batch}, 32x32x3 images", flush=True)
  config = base_config.get_config()
  module, params = common.init_vae(config, jax.random.PRNGKey(0), (32, 32, 3))
  images = jnp.asarray(np.tanh(np.random.default_rng(2).standard_normal((args.batch, 32, 32, 3))),
                       jnp.float32)
  compiled, _, ms = time_jitted(module.apply, (params, images), args.reps)
  report("forward (encode + decode of the mean)", ms, flops_of(compiled), peak)
  loss_fn = functools.partial(
      objectives.vae_loss,
      encode_fn=lambda p, x: module.apply(p, x, method=module.encode),
      decode_fn=lambda p, z: module.apply(p, z, method=module.decode),
      kl=config.vae.kl, kl_weight=config.vae.kl_weight)
  time_train_step("train step", loss_fn, params, images, config.vae.training, args.reps, peak, args.ops)


# --- single blocks --------------------------------------------------------------------------------------
class UpsampledFlaxConv(nn.Module):
  """Reference for Conv(upsample=2): nearest x2 (layers.upsample_nearest), then flax's 3x3 nn.Conv."""

  features: int

  @nn.compact
  def __call__(self, x):
    return nn.Conv(self.features, (3, 3), padding=((1, 1), (1, 1)))(layers.upsample_nearest(x))


class FlaxAttention(nn.Module):
  """Reference for layers.AttentionBlock: the same block with jax.nn.dot_product_attention."""

  num_heads: int = 4

  @nn.compact
  def __call__(self, x):
    b, hgt, wid, c = x.shape
    h = layers.GroupNorm()(x).reshape(b, hgt * wid, c)
    qkv = nn.Dense(3 * c)(h).reshape(b, hgt * wid, 3, self.num_heads, c // self.num_heads)
    out = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])
    return x + nn.Dense(c)(out.reshape(b, hgt * wid, c)).reshape(x.shape)


def time_block(label: str, module: nn.Module, inputs: tuple, reps: int, peak: float) -> tuple[float, float]:
  """Forward, and forward + backward (gradients of <out, cotangent> w.r.t. params and the first input);
  returns their median ms."""
  params = build.init(module, jax.random.PRNGKey(0), *inputs)
  compiled, _, fwd_ms = time_jitted(module.apply, (params, *inputs), reps)
  report(f"{label} fwd", fwd_ms, flops_of(compiled), peak)
  out_shape = jax.eval_shape(module.apply, params, *inputs)
  cotangent = jnp.asarray(np.random.default_rng(3).standard_normal(out_shape.shape), jnp.float32)

  def fwd_bwd(p, x, *rest):
    return jax.grad(lambda p, x: jnp.vdot(module.apply(p, x, *rest), cotangent), argnums=(0, 1))(p, x)

  compiled, _, ms = time_jitted(fwd_bwd, (params, *inputs), reps)
  report(f"{label} fwd+bwd", ms, flops_of(compiled), peak)
  return fwd_ms[0], ms[0]


def compare_block(label: str, module: nn.Module, reference: nn.Module | None, inputs: tuple, reps: int,
                  peak: float) -> None:
  """time_block of cgdiff's module and of its plain flax reference, and the speed-ups."""
  ours = time_block(label, module, inputs, reps, peak)
  if reference is not None:
    ref = time_block(f"  (ref) {label}", reference, inputs, reps, peak)
    print(f"  {'':<44s} speed-up over the reference: fwd {ref[0] / ours[0]:.2f}x, "
          f"fwd+bwd {ref[1] / ours[1]:.2f}x", flush=True)


def conv_blocks(base: int, x, reps: int, peak: float) -> None:
  conv = lambda c_out, stride=1, k=3: (
      conv_lib.Conv(c_out, k, stride, padding=(k - 1) // 2),
      nn.Conv(c_out, (k, k), strides=(stride, stride), padding=((k - 1) // 2,) * 2))
  b2, b4 = 2 * base, 4 * base
  for label, (ours, ref), shape in [
      (f"conv3x3 8x8 {base}->{base}", conv(base), (8, 8, base)),
      (f"conv3x3 8x8 {3 * base}->{base} (up0)", conv(base), (8, 8, 3 * base)),
      (f"conv3x3 s2 8x8 {base} (Downsample)", conv(base, 2), (8, 8, base)),
      (f"conv3x3 4x4 {b2}->{b2}", conv(b2), (4, 4, b2)),
      (f"conv3x3 s2 4x4 {b2} (Downsample)", conv(b2, 2), (4, 4, b2)),
      (f"conv3x3 2x2 {b2}->{b2}", conv(b2), (2, 2, b2)),
      (f"conv3x3 2x2 {b4}->{b2} (up2)", conv(b2), (2, 2, b4)),
      (f"conv1x1 8x8 {b2}->{base} (skip)", conv(base, k=1), (8, 8, b2))]:
    compare_block(label, ours, ref, (x(*shape),), reps, peak)
  compare_block(f"Upsample conv 4x4x{b2} -> 8x8", conv_lib.Conv(b2, upsample=2), UpsampledFlaxConv(b2),
                (x(4, 4, b2),), reps, peak)


def blocks_section(args, peak: float) -> None:
  b = args.batch
  rng = np.random.default_rng(4)
  x = lambda *shape: jnp.asarray(rng.standard_normal((b,) + shape), jnp.float32)
  print(f"Blocks, batch {b}; (ref): the plain flax / lax / jax.nn form of the same block", flush=True)
  for hw, c in [(8, 64), (8, 128), (4, 256), (2, 256), (32, 64), (16, 128)]:
    compare_block(f"GroupNorm {hw}x{hw}x{c}", layers.GroupNorm(),
                  nn.GroupNorm(num_groups=layers.group_count(c), epsilon=layers.GROUP_NORM_EPSILON),
                  (x(hw, hw, c),), args.reps, peak)
  for base in (64, 128):
    print(f"UNet base {base} blocks", flush=True)
    conv_blocks(base, x, args.reps, peak)
    for hw, c in [(8, base), (4, 2 * base), (2, 2 * base)]:
      compare_block(f"Attention {hw}x{hw}x{c}", layers.AttentionBlock(4), FlaxAttention(4),
                    (x(hw, hw, c),), args.reps, peak)
    temb = x(4 * base)
    for label, c_in, c_out, hw in [("8x8", base, base, 8), ("8x8 (up0)", 2 * base, base, 8),
                                   ("4x4", 2 * base, 2 * base, 4), ("2x2", 2 * base, 2 * base, 2)]:
      compare_block(f"ResBlock {label} {c_in}->{c_out}", layers.ResBlock(c_out), None,
                    (x(hw, hw, c_in), temb), args.reps, peak)
  print("VAE blocks", flush=True)
  for hw, c_in, c_out, stride, up in [(32, 3, 64, 1, 1), (32, 64, 128, 2, 1), (16, 128, 256, 2, 1),
                                      (8, 4, 256, 1, 1), (8, 256, 128, 1, 2), (16, 128, 64, 1, 2),
                                      (32, 64, 3, 1, 1)]:
    label = f"VAE conv {hw}x{hw} {c_in}->{c_out}" + (" s2" if stride == 2 else "") + (
        " after nearest x2" if up == 2 else "")
    ref = (UpsampledFlaxConv(c_out) if up == 2
           else nn.Conv(c_out, (3, 3), strides=(stride, stride), padding=((1, 1), (1, 1))))
    compare_block(label, conv_lib.Conv(c_out, 3, stride, upsample=up), ref, (x(hw, hw, c_in),),
                  args.reps, peak)


def main(args: argparse.Namespace) -> None:
  sections = args.only.split(",")
  unknown = set(sections) - set(SECTIONS)
  if unknown:
    raise SystemExit(f"unknown sections {sorted(unknown)}; expected some of {SECTIONS}")
  print(f"jax {jax.__version__} on {jax.devices()[0].device_kind} x{jax.device_count()}, "
        f"{os.cpu_count()} CPUs, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, load {os.getloadavg()}")
  peak = matmul_peak(args.reps)
  for base in (64, 128):
    if f"unet{base}" in sections:
      unet_section(base, args, peak)
  if "vae" in sections:
    vae_section(args, peak)
  if "blocks" in sections:
    blocks_section(args, peak)


if __name__ == "__main__":
  main(ARGS)
