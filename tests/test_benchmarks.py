"""The PyTorch comparator of benchmarks/ is the same computation as cgdiff, and the benchmark command runs.

Skipped without torch (pip install -e ".[bench]"). The comparator must match cgdiff's modules exactly for
its speed to mean anything: same parameter counts at 001's full size, the same outputs for the same
parameters at a tiny size, the same schedule, the same deterministic sampler; then a tiny --quick run of
benchmarks.run writes a record with every field.

Cost: XLA compiles dominate (about 40 s on 2 busy cores), so parameter counts use jax.eval_shape (no
compile), parameters are filled by numpy, and compiled functions skip XLA's backend optimisation.
"""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

# pylint: disable=wrong-import-position
from benchmarks import run, settings, sides, timing, torch_models, torch_steps
from cgdiff import samplers, schedules
from cgdiff.models import build
from cgdiff.metrics import inception_weights
from configs import base as base_config
from configs import fmnist_base

FAST_COMPILE = {"xla_backend_optimization_level": 0}
CONFIG = base_config.get_config()
TINY_UNET = dict(kind="unet", base_channels=64, channel_mults=(1, 2), num_res_blocks=1,
                 attention_resolutions=(4,), num_heads=4)
TINY_VAE = dict(latent_channels=4, out_channels=3, channels=(16, 32, 64), num_latent_res_blocks=1,
                min_logvar=-10.0)
TINY_GATE = dict(granularity="element", hidden_channels=32, num_layers=2, time_embed_dim=16, init_logit=2.0)


def count(tree) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def nchw(x) -> "torch.Tensor":
  return torch.from_numpy(np.array(np.asarray(x).transpose(0, 3, 1, 2), np.float32))


def filled_params(module, *inputs, seed: int = 0):
  """Parameters of module.init's shapes, from numpy: kernels N(0, 1/fan_in), GroupNorm scales
  1 + N(0, 0.1^2), biases N(0, 0.1^2); nothing is zero, so every parameter changes the output."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    fan_in = np.prod(leaf.shape[:-1]) if leaf.ndim > 1 else 100.0
    offset = 1.0 if path[-1].key == "scale" else 0.0
    return jnp.asarray(offset + rng.standard_normal(leaf.shape) / np.sqrt(fan_in), jnp.float32)

  return jax.tree_util.tree_map_with_path(fill, jax.eval_shape(module.init, jax.random.PRNGKey(0), *inputs))


def torch_unet(cfg: dict) -> torch_models.UNet:
  return sides.torch_unet(cfg, (8, 8, 4))


@pytest.mark.parametrize("base", [128, 64])
def test_unet_parameter_count_matches_at_full_size(base):
  cfg = sides.score_config(CONFIG, base, settings.Settings())
  net = build.score_net(cfg)
  shapes = build.abstract_init(net, jnp.zeros((1, 8, 8, 4)), jnp.zeros((1,)))
  assert torch_models.count_parameters(torch_unet(cfg)) == count(shapes)


def test_vae_and_gate_parameter_counts_match_at_full_size():
  vae_cfg = sides.plain(CONFIG.vae.model.to_dict())
  vae = build.vae(vae_cfg)
  tvae = torch_models.VAE(**vae_cfg)
  assert torch_models.count_parameters(tvae) == count(build.abstract_init(vae, jnp.zeros((1, 32, 32, 3))))
  for granularity in ("example", "channel", "element"):
    cfg = {**CONFIG.gate.to_dict(), "granularity": granularity}
    shapes = build.abstract_init(build.gate(cfg), jnp.zeros((1, 8, 8, 4)), jnp.zeros((1,)))
    assert torch_models.count_parameters(torch_models.CriticGate(4, **cfg)) == count(shapes), granularity


def test_torch_schedule_matches_cgdiff():
  # cgdiff evaluates in float32, the comparator in float64. The worst conditioned is beta = tan(theta)
  # near t_max: relative condition theta / (sin theta cos theta) ~ 200 times float32's 6e-8 is 1.2e-5;
  # rtol 1e-4 leaves a factor 8. log-SNR crosses 0, so it gets an absolute tolerance of the same size.
  schedule = schedules.cosine(**CONFIG.schedule.kwargs)
  comparator = torch_steps.CosineSchedule(**CONFIG.schedule.kwargs.to_dict())
  t = np.linspace(schedule.t_min, schedule.t_max, 201)
  for name in ("alpha", "sigma", "beta"):
    np.testing.assert_allclose(getattr(comparator, name)(torch.tensor(t, dtype=torch.float32)).numpy(),
                               np.asarray(getattr(schedule, name)(jnp.asarray(t, jnp.float32))), rtol=1e-4,
                               err_msg=name)
  np.testing.assert_allclose(comparator.log_snr(torch.tensor(t)).numpy(),
                             np.asarray(schedule.log_snr(jnp.asarray(t, jnp.float32))), atol=1e-4)
  for steps in (10, 50):
    np.testing.assert_allclose(comparator.time_grid(steps).numpy(),
                               np.asarray(schedules.time_grid(schedule, steps)), atol=1e-6)


def _flax_and_torch(kind: str):
  """(Flax module, its filled params, the torch module with the same weights, inputs NHWC)."""
  z = jnp.asarray(np.random.default_rng(1).standard_normal((3, 8, 8, 4)), jnp.float32)
  t = jnp.asarray([0.01, 0.5, 0.99], jnp.float32)
  if kind == "unet":
    module, inputs, comparator = build.score_net(TINY_UNET), (z, t), torch_unet(TINY_UNET)
  elif kind == "gate":
    module, inputs, comparator = build.gate(TINY_GATE), (z, t), torch_models.CriticGate(4, **TINY_GATE)
  else:
    x = jnp.tanh(jnp.asarray(np.random.default_rng(2).standard_normal((2, 16, 16, 3)), jnp.float32))
    module, inputs, comparator = build.vae(TINY_VAE), (x,), torch_models.VAE(**TINY_VAE)
  params = filled_params(module, *inputs)
  comparator.load_state_dict(torch_models.flax_to_torch_state(params, comparator))
  return module, params, comparator, inputs


@pytest.mark.parametrize("kind", ["unet", "vae", "gate"])
def test_same_parameters_give_the_same_outputs(kind):
  # float32 round-off: each of the ~30 layers in sequence adds about sqrt(fan_in) * 6e-8 <= 3e-6 relative
  # error (fan_in <= 9 * 256), GroupNorm re-scales it but does not amplify it: 1e-4 of the output's scale
  # bounds the sum with a factor > 1. Layouts differ (NHWC vs NCHW), so this also checks every transpose.
  module, params, comparator, inputs = _flax_and_torch(kind)
  expected = jax.jit(module.apply, compiler_options=FAST_COMPILE)(params, *inputs)
  with torch.no_grad():
    got = comparator(*(nchw(x) if x.ndim == 4 else torch.from_numpy(np.array(x)) for x in inputs))
  for e, g in zip(jax.tree.leaves(expected), got if isinstance(got, tuple) else (got,)):
    e = np.asarray(e).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(g.numpy(), e, atol=1e-4 * np.max(np.abs(e)))


def test_rk4_sampler_matches_cgdiff():
  # A linear noise model eps(z, t) = c z has no round-off of its own: the two RK4 integrations differ
  # by float32 round-off of the schedule and the updates only, ~1e-6 relative over 3 steps.
  c = 0.3
  schedule = schedules.cosine(**CONFIG.schedule.kwargs)
  comparator = torch_steps.CosineSchedule(**CONFIG.schedule.kwargs.to_dict())
  z = jnp.asarray(np.random.default_rng(3).standard_normal((5, 8, 8, 4)), jnp.float32)
  score_fn = samplers.score_from_eps(lambda params, zz, tt: c * zz, None, schedule)
  expected = samplers.sample(score_fn, schedule, jax.random.PRNGKey(0), z.shape, method="rk4", num_steps=3,
                             z_init=z)
  got = torch_steps.sample(lambda zz, tt: c * zz, comparator, (5, 4, 8, 8), method="rk4", num_steps=3,
                           z_init=nchw(z))
  np.testing.assert_allclose(got.numpy(), np.asarray(expected).transpose(0, 3, 1, 2), rtol=1e-4, atol=1e-5)


def test_heun_pc_keeps_a_standard_normal_with_its_exact_score():
  # Data N(0, I) stays N(0, I) under the VP process: eps = sigma z exactly. 2000 x 4 draws: the sample
  # standard deviation has sd 1/sqrt(2 * 8000) = 0.008; 0.04 is 5 sd (plus Heun's small step error).
  comparator = torch_steps.CosineSchedule(**CONFIG.schedule.kwargs.to_dict())
  eps_model = lambda z, t: comparator.sigma(t).view(-1, 1, 1, 1) * z
  z = torch_steps.sample(eps_model, comparator, (2000, 4, 1, 1), method="heun_pc", num_steps=50,
                         generator=torch.Generator().manual_seed(0))
  assert torch.isfinite(z).all()
  assert abs(float(z.std()) - 1.0) < 0.04 and abs(float(z.mean())) < 0.04


def test_quick_benchmark_writes_a_record_with_every_field(tmp_path):
  # One UNet target (the critic-gate, which exercises the most: two networks on each side) keeps the
  # run at about 40 s of CPU, nearly all of it XLA compiles; the other targets differ only in the loss.
  quick = dataclasses.replace(settings.QUICK, targets=("critic_gate",))
  path = tmp_path / "quick.json"
  run.benchmark(quick, tuple(s for s in run.SECTIONS if s not in ("inception", "fmnist")),
                out=str(path))  # see below
  record = json.loads(path.read_text())
  assert {"date", "command", "git_commit", "machine", "versions", "settings", "results", "derived",
          "wall_s"} <= set(record)
  assert {"platform", "cpu_model", "cores", "jax_device_kind", "torch_device", "torch_threads"} <= set(
      record["machine"])
  assert {"python", "jax", "jaxlib", "flax", "torch"} <= set(record["versions"])
  results = record["results"]
  assert [m["target"] for m in results["unet"]] == ["critic_gate"]
  assert [m.get("method") for m in results["sample"]] == [None, "heun_pc", "rk4"]
  for m in [results["peak"], results["vae"], *results["unet"], *results["sample"]]:
    assert m["speed_ratio"] > 0, m["name"]
    for side in ("cgdiff", "torch"):
      assert len(m[side]["samples_s"]) >= quick.reps and m[side]["median_s"] > 0, m["name"]
  unet = results["unet"][0]["cgdiff"]
  assert unet["compile_s"] > 0 and unet["flops"] > 0
  derived = record["derived"]
  assert len(derived["unet_gflops"]) == 1 and derived["unet_gflops"][0]["cgdiff_gflops"] > 0
  assert derived["target_over_baseline"] == []  # no baseline step in this run
  assert [set(row) for row in derived["sampler_overhead"]] == [{"name", "cgdiff", "torch"}] * 2
  for rec in results["sample"][1:]:
    for side in ("cgdiff", "torch"):
      spread = rec["wall_over_nfe_forward_spread"][side]
      assert spread["min"] <= rec["wall_over_nfe_forward"][side] == spread["median"] <= spread["max"]


@pytest.mark.skipif(not all(os.path.exists(os.path.join(inception_weights.default_cache_dir(), name))
                            for name in (inception_weights.CACHE_NAME, inception_weights.PT_NAME)),
                    reason=f"no cached Inception weights; run `{inception_weights.FETCH_COMMAND}`")
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_quick_inception_section_times_pool3_against_the_torchscript_network(tmp_path):
  # Batch 2 and no backend optimisation: about 30 s, the compile of the network.
  record = run.benchmark(settings.QUICK, ("peak", "inception"), out=str(tmp_path / "inception.json"))
  (rec,) = record["results"]["inception"]
  assert rec["name"] == "Inception pool3 b2 (img)" and rec["items_per_call"] == 2 and rec["speed_ratio"] > 0
  assert rec["cgdiff"]["flops"] > 0 and rec["cgdiff"]["compile_s"] > 0
  assert len(rec["torch"]["samples_s"]) == len(rec["cgdiff"]["samples_s"]) == settings.QUICK.reps
  # The same network on the same inputs: test_fid's bound, 1e-4 of the feature scale.
  assert 0 <= rec["feature_max_rel_diff"] < 1e-4
  (row,) = record["derived"]["inception_gflops"]
  assert row["name"] == rec["name"] and row["cgdiff_gflops"] > 0 and row["cgdiff_share_of_jnp_dot_peak"] > 0


def test_quick_fmnist_section_times_the_results_programs_steps(tmp_path):
  # The results program's VAE (32x32x1 images), UNet (the three targets, per-element gate) and row (a)'s
  # co-training step, at the quick model sizes: the configs' shapes and options reach both sides.
  quick = dataclasses.replace(settings.QUICK, targets=("tweedie", "critic_gate"))
  record = run.benchmark(quick, ("fmnist",), out=str(tmp_path / "fmnist.json"))
  names = [rec["name"] for rec in record["results"]["fmnist"]]
  assert names[0] == "VAE train step b4 32x32x1 (img)" and names[-1] == "co-train step lsi b4 32x32x1 (img)"
  assert [rec.get("target") for rec in record["results"]["fmnist"][1:-1]] == ["tweedie", "critic_gate"]
  for rec in record["results"]["fmnist"]:
    assert rec["speed_ratio"] > 0 and rec["cgdiff"]["flops"] > 0, rec["name"]
  cotrain, vae = record["results"]["fmnist"][-1], record["results"]["fmnist"][0]
  assert cotrain["parameters"] > vae["parameters"]  # VAE + UNet
  assert [row["name"] for row in record["derived"]["target_over_baseline"]] == [
      f"UNet{fmnist_base.get_config().score_net.base_channels} critic_gate / tweedie step time"]


def test_torch_cotrain_loss_is_the_sum_of_its_terms():
  # With every random draw zero: z0 = mean, eps = 0, z_t = alpha mean, so the LSI target is 0 and the
  # loss is MSE(decode(mean), x) + kl_weight * 1/2 mean(mean^2 + v) (modified) + MSE(score(z_t, t), 0).
  vae, unet = torch_models.VAE(**TINY_VAE), torch_models.UNet(in_channels=4, resolution=8, **{
      k: v for k, v in TINY_UNET.items() if k != "kind"})
  model = torch.nn.ModuleDict({"vae": vae, "score": unet})
  images = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (2, 3, 32, 32)).astype(np.float32))
  schedule = torch_steps.CosineSchedule()
  torch.manual_seed(0)
  with torch.no_grad():
    original = torch.randn_like
    torch.randn_like = torch.zeros_like
    try:
      loss = torch_steps.cotrain_loss(schedule, "modified", 0.5, "lsi", score_weight=2.0)(model, images)
    finally:
      torch.randn_like = original
    torch.manual_seed(0)
    t = torch.empty(2).uniform_(schedule.t_min, schedule.t_max)
    mean, logvar = vae.encode(images)
    alpha = schedule.alpha(t).view(-1, 1, 1, 1)
    expected = (torch.mean((vae.decode(mean) - images) ** 2) + 0.5 * 0.5 * torch.mean(mean**2 + logvar.exp())
                + 2.0 * torch.mean(unet(alpha * mean, t) ** 2))
  assert torch.allclose(loss, expected, rtol=1e-5), (loss, expected)


def test_grouped_alternation_interleaves_every_side_and_pairs_the_ratios():
  # Ratios between groups (target step / baseline step, sampler / forward) pair calls made moments apart:
  # after the warm-up round every repetition calls each side once, in the same order.
  calls = []
  side = lambda name: timing.Side(lambda: calls.append(name))
  groups = {"a": {"cgdiff": side("a.cg"), "torch": side("a.th")}, "b": {"cgdiff": side("b.cg")}}
  samples = timing.measure_together(groups, reps=3, warmup=1)
  assert calls == ["a.cg", "a.th", "b.cg"] * 4
  assert {g: {s: len(x) for s, x in sides.items()} for g, sides in samples.items()} == {
      "a": {"cgdiff": 3, "torch": 3}, "b": {"cgdiff": 3}}
  assert timing.paired_ratio([2.0, 6.0, 3.0], [1.0, 2.0, 3.0]) == {"median": 2.0, "min": 1.0, "max": 3.0}


def test_with_two_cpu_devices_the_train_steps_are_timed_on_one_device_too(tmp_path):
  # The device count is fixed when JAX starts, so this runs the command in a fresh process: the VAE step
  # (batch 4 at --quick) pmapped over two CPU devices, and on the first one alone in the same alternation.
  path = tmp_path / "devices.json"
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  result = subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", "--only", "vae", "--cpu-devices",
                           "2", "--out", str(path)], env=env, capture_output=True, text=True, timeout=600,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert result.returncode == 0, result.stderr[-3000:]
  assert "cgdiff_1_device" in result.stdout
  record = json.loads(path.read_text())
  assert record["machine"]["jax_device_count"] == 2
  vae = record["results"]["vae"]
  assert set(vae["ratios"]) == {"torch", "cgdiff_1_device"}
  assert len(vae["cgdiff_1_device"]["samples_s"]) == len(vae["cgdiff"]["samples_s"]) >= 1
  assert vae["speed_ratio"] == vae["ratios"]["torch"]["median"]
  # The FLOPs of the whole step, not of one device's half: within the replicated optimiser update.
  flops = vae["cgdiff"]["flops"], vae["cgdiff_1_device"]["flops"]
  assert abs(flops[0] / flops[1] - 1) < 0.01, flops
