"""The XLA:CPU deadlock of pmapped steps dispatched too far ahead of 2 CPU devices (README Reliability).

    python -m benchmarks.run_ahead_deadlock > benchmarks/results/run-ahead-deadlock-NAME.log

XLA:CPU's client admits 32 executions in flight per device and blocks the thread that asks for one
more; with host-copied inputs that thread is one of the client's pool threads (2 on 2 cores), and a
device can be left without one to start its step while the other device waits for it in an
all-reduce. Each case runs in its own process with 2 CPU devices and collective timeouts of 5 s (warn)
+ 30 s (terminate), so a deadlock ends as an abort ("Termination timeout") after 35 s:

  pmap loop   a bare pmapped conv + all-reduce step on 1 MiB host batches, synced every `sync` steps;
  train       cgdiff.train.train on the same kind of step (TRAIN_SCRIPT, also run by
              tests/test_faults.py), 400 steps between two log steps, with the loop's
              MAX_STEPS_IN_FLIGHT (2) and with no bound (the loop before the bound).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_FLAGS = ("--xla_cpu_collective_call_warn_stuck_timeout_seconds=5 "
                 "--xla_cpu_collective_call_terminate_timeout_seconds=30")

PMAP_SCRIPT = textwrap.dedent("""
    import sys
    import jax, jax.numpy as jnp, numpy as np
    from cgdiff.train import devices
    devices.set_cpu_devices(2)
    steps, sync = int(sys.argv[1]), int(sys.argv[2])
    images = np.ones((2, 8, 32, 32, 16), np.float32)  # 512 KiB per device, copied from the host each step

    def loss(w, x):
      y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
      return jnp.mean(jnp.tanh(y) ** 2)

    def step(w, x):
      value, grad = jax.value_and_grad(loss)(w, x)
      return w - 1e-3 * jax.lax.pmean(grad, "d"), jax.lax.pmean(value, "d")

    p_step = jax.pmap(step, axis_name="d")
    w, pending = jnp.full((2, 3, 3, 16, 16), 0.01), []
    for i in range(steps):
      w, value = p_step(w, images)
      pending.append(value)
      if (i + 1) % sync == 0:
        jax.block_until_ready(pending)
        pending = []
    jax.block_until_ready(w)
    print("finished", flush=True)
""")

# Host batches of 1 MiB (512 KiB per device: XLA:CPU copies inputs of 100 KiB or more on its client
# thread pool) and a step far cheaper than the 400 steps between two log steps.
TRAIN_SCRIPT = textwrap.dedent("""
    import sys
    import jax, jax.numpy as jnp, ml_collections, numpy as np
    from cgdiff.train import TrainLoopConfig, devices, loop, train
    devices.set_cpu_devices(2)
    if len(sys.argv) > 2:
      loop.MAX_STEPS_IN_FLIGHT = int(sys.argv[2])
    images = np.random.default_rng(0).normal(size=(16, 32, 32, 16)).astype(np.float32)

    def loss_fn(params, batch, keys):
      y = jax.lax.conv_general_dilated(batch, params["w"], (1, 1), "SAME",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
      return jnp.mean(jnp.tanh(y) ** 2), {}

    optimizer = ml_collections.ConfigDict(dict(learning_rate=1e-3, warmup_steps=0, lr_schedule="constant",
                                               b1=0.9, b2=0.999, weight_decay=0.0, grad_clip=1.0))
    train(loss_fn, {"w": jnp.full((3, 3, 16, 16), 0.01)}, lambda step: images, optimizer=optimizer,
          loop=TrainLoopConfig(num_steps=400, log_every=400, checkpoint_every=400, keep_checkpoints=1,
                               ema_decay=0.9, tensorboard=False),
          workdir=sys.argv[1], key=jax.random.PRNGKey(0))
    print("trained", flush=True)
""")


def run_case(args: list[str]) -> str:
  """Runs one case in a fresh process; returns how it ended."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=TIMEOUT_FLAGS)
  start = time.perf_counter()
  result = subprocess.run([sys.executable, "-c", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
  seconds = time.perf_counter() - start
  if result.returncode == 0:
    return f"finished in {seconds:.0f} s"
  if "Termination timeout" in result.stderr:
    return f"deadlocked: aborted by the collective timeout after {seconds:.0f} s"
  return f"failed (exit {result.returncode}): {result.stderr.strip().splitlines()[-1][:200]}"


def main() -> None:
  print(f"2 CPU devices, XLA_FLAGS={TIMEOUT_FLAGS}, commit "
        + subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                         text=True).stdout.strip(), flush=True)
  for sync in (2, 8, 24, 31, 34, 40, 100, 500):
    print(f"pmap loop, 1000 steps, synced every {sync:3d}: {run_case([PMAP_SCRIPT, '1000', str(sync)])}",
          flush=True)
  for bound in ("2", "1000000000"):
    workdir = f"/tmp/run_ahead_deadlock_{bound}_{os.getpid()}"
    label = "MAX_STEPS_IN_FLIGHT=2" if bound == "2" else "no bound"
    print(f"train, 400 steps between log steps, {label}: {run_case([TRAIN_SCRIPT, workdir, bound])}", flush=True)


if __name__ == "__main__":
  main()
