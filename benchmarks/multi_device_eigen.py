"""A/B in one process: the pmapped train step on 2 CPU devices compiled with XLA's default options and
with xla_cpu_multi_thread_eigen=False (cgdiff.train.loop.CPU_MULTI_DEVICE_COMPILER_OPTIONS), alternated
12 times (5 steps each); fmnist_base's VAE and UNet (Tweedie) steps at batch 128. Prints the medians and
the median of the paired ratios default / single-threaded.

    python -m benchmarks.multi_device_eigen
"""
import os
import time
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
import jax, jax.numpy as jnp, numpy as np

from configs import fmnist_base
from cgdiff import objectives
from cgdiff.models import build
from cgdiff.train import loop as loop_lib, create_state, make_optimizer
config = fmnist_base.get_config()
rng = np.random.default_rng(0)
def vae_case():
  vae, params = build.vae_and_params(config.vae.model, (32, 32, 1), jax.random.PRNGKey(0))
  loss = lambda p, x, k: objectives.vae_loss(p, x, k, encode_fn=lambda p, x: vae.apply(p, x, method=vae.encode),
                                             decode_fn=lambda p, z: vae.apply(p, z, method=vae.decode))
  return loss, params, np.tanh(rng.standard_normal((128, 32, 32, 1))).astype(np.float32)
def ldm_case():
  from cgdiff import schedules
  net, params = build.score_net_and_params(config.score_net, (8, 8, 2), jax.random.PRNGKey(1))
  loss = objectives.diffusion_loss_fn("tweedie", eps_fn=net.apply, schedule=schedules.cosine(**config.schedule.kwargs))
  return loss, {"score": params}, (rng.standard_normal((128, 8, 8, 2)).astype(np.float32), np.full((128, 8, 8, 2), -3.0, np.float32))
for name, case in (("vae", vae_case), ("ldm", ldm_case)):
  loss, params, batch = case()
  tx = make_optimizer(config.vae.training, 1000)
  state = loop_lib.replicate(create_state(params, tx))
  p = loop_lib.pmapped_train_step(loss, tx, ema_decay=0.999)._pmapped  # the bare pmap: both compiles here
  b = loop_lib.device_batch(batch, 2); ids = loop_lib.device_batch(np.arange(128), 2); key = jax.random.PRNGKey(2)
  lowered = p.lower(state, b, ids, key)
  compiled = {"default": lowered.compile(), "single_thread_eigen": lowered.compile(compiler_options={"xla_cpu_multi_thread_eigen": False})}
  times = {k: [] for k in compiled}
  for rep in range(12):
    for k, c in compiled.items():
      s = state
      out = c(jax.tree.map(jnp.copy, s), b, ids, key); jax.block_until_ready(out)
      t = time.perf_counter()
      for _ in range(5):
        out = c(jax.tree.map(jnp.copy, s), b, ids, key)
      jax.block_until_ready(out)
      times[k].append((time.perf_counter() - t) / 5)
  med = {k: float(np.median(v)) for k, v in times.items()}
  ratio = np.median(np.array(times["default"]) / np.array(times["single_thread_eigen"]))
  print(name, {k: round(v, 4) for k, v in med.items()}, "default/single paired median", round(float(ratio), 3), flush=True)
