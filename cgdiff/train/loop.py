"""The training loop: pmap over local devices, Orbax checkpoints with exact resume, writers, progress.

`train` is generic: it gets a loss function and a function giving the global batch of each step, so
the VAE, the latent diffusion model and co-training all use it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import threading
import time
from typing import Any, Callable, Sequence

import flax.jax_utils
import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from cgdiff.train import checkpoint, step as step_lib, writers
from cgdiff.train.state import TrainState, create_state, make_optimizer

# Steps dispatched but not finished, at most. XLA:CPU's client admits 32 executions in flight per
# device and blocks the thread that asks for one more; with several CPU devices and host-copied inputs
# that thread is one of the client's pool threads, which a device then lacks to start its step, while
# the other device waits for it in the gradients' all-reduce: a deadlock (README Reliability,
# tests/test_faults.py). Two keep the next step's dispatch overlapping the running one.
MAX_STEPS_IN_FLIGHT = 2


class Preempted(Exception):
  """A SIGTERM stopped training: the checkpoint of `step`, the last step dispatched when it came, is saved
  in `directory`, so rerunning the same training resumes there and loses nothing."""

  def __init__(self, step: int, directory: str):
    super().__init__(f"stopped by SIGTERM after step {step}; its checkpoint is saved in {directory}, "
                     "and the same command resumes from it.")
    self.step, self.directory = step, directory


@contextlib.contextmanager
def _sigterm_requests():
  """An Event set by SIGTERM while the block runs (the previous handler restored after it). SIGTERM is
  the stop request of schedulers (SLURM before its time limit, Kubernetes, `docker stop`) and of `kill`:
  training finishes the step it is in and saves it instead of dying with up to checkpoint_every steps
  unsaved. Handlers can be set only on the main thread; elsewhere the Event is never set."""
  requested = threading.Event()
  if threading.current_thread() is not threading.main_thread():
    yield requested
    return
  previous = signal.signal(signal.SIGTERM, lambda signum, frame: requested.set())
  try:
    yield requested
  finally:
    signal.signal(signal.SIGTERM, previous)


@dataclasses.dataclass(frozen=True)
class TrainLoopConfig:
  num_steps: int
  log_every: int = 100
  checkpoint_every: int = 1000
  keep_checkpoints: int = 3
  ema_decay: float = 0.9999
  tensorboard: bool = True

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> TrainLoopConfig:
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in config.items() if k in fields})


def _format_seconds(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


def device_batch(batch: Any, num_devices: int) -> Any:
  """This host's slice of the global batch (numpy), reshaped to [devices, per_device, ...]: the
  layout `pmapped_train_step` takes."""
  def split(x):
    x = np.asarray(x)
    per_host = x.shape[0] // jax.process_count()
    x = x[jax.process_index() * per_host:(jax.process_index() + 1) * per_host]
    return x.reshape((num_devices, per_host // num_devices) + x.shape[1:])
  return jax.tree.map(split, batch)


def replicate(tree: Any, axis_name: str = "batch", devices: Sequence[jax.Device] | None = None) -> Any:
  """One copy of `tree` per device (default: every local device), sharded the way
  jax.pmap(axis_name=...) returns its outputs.

  (flax.jax_utils.replicate uses another mesh axis name, so the second step would see new input
  shardings and compile the whole step again.)
  """
  devices = jax.local_devices() if devices is None else list(devices)
  sharding = NamedSharding(Mesh(np.array(devices), (axis_name,)), PartitionSpec(axis_name))
  return jax.tree.map(
      lambda x: jax.device_put(np.broadcast_to(np.asarray(x), (len(devices),) + np.shape(x)), sharding),
      tree)


def pmapped_train_step(loss_fn: step_lib.LossFn, tx, *, ema_decay: float,
                       devices: Sequence[jax.Device] | None = None):
  """step_lib.make_train_step pmapped over the local devices (or `devices`) as `train` calls it:
  p_step(replicated state, batch [devices, b, ...], example ids [devices, b], base key) ->
  (state, metrics); the state's buffers are donated."""
  return jax.pmap(step_lib.make_train_step(loss_fn, tx, ema_decay=ema_decay), axis_name="batch",
                  in_axes=(0, 0, 0, None), donate_argnums=(0,), devices=devices)


def train(loss_fn: step_lib.LossFn, params: Any, batch_fn: Callable[[int], Any], *,
          optimizer: ml_collections.ConfigDict, loop: TrainLoopConfig, workdir: str,
          key: jax.Array) -> TrainState:
  """Trains `params` for loop.num_steps steps and returns the final (unreplicated) state.

  batch_fn(step) -> the global batch of `step` (a pytree of arrays [B, ...]); it must depend on the
  step only, which with the per-step keys makes a resumed run identical to an uninterrupted one. At
  most MAX_STEPS_IN_FLIGHT steps are dispatched and unfinished at a time. Checkpoints go to
  workdir/checkpoints, verified (checkpoint.py: a run resumes from the newest intact one), metrics to
  workdir (metrics.jsonl, TensorBoard), flushed at every log step; a resumed run drops what the killed
  run logged after its checkpoint and logs it again (writers.py). A run whose latest intact checkpoint
  is at num_steps returns it without training. A non-finite loss stops training with
  FloatingPointError naming the newest verified checkpoint; none is written after it. A SIGTERM (on the
  main thread) makes it log and save the step it is in, then raise Preempted.

  Raises:
    checkpoint.CheckpointError: workdir/checkpoints holds checkpoints, but none intact, or another model's.
    Preempted: a SIGTERM came during training (also during its last step: the caller is to stop too).
  """
  num_devices = jax.local_device_count()
  initial_share = loop.ema_decay ** loop.num_steps  # the initial parameters' weight in the final EMA
  if initial_share > 0.01:
    logging.warning("ema_decay=%g over num_steps=%d leaves %.1f%% of the initial (random) parameters in the "
                    "EMA at the last step, and the EMA is what later stages sample with: lower ema_decay "
                    "(e.g. to %.3g) or train longer.", loop.ema_decay, loop.num_steps, 100 * initial_share,
                    1.0 - 5.0 / loop.num_steps)
  tx = make_optimizer(optimizer, loop.num_steps)
  state = create_state(params, tx)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), keep=loop.keep_checkpoints,
                                 save_every=loop.checkpoint_every)
  state = ckpt.resume(state)
  start = int(state.step)
  if start:
    logging.info("resumed %s from step %d", workdir, start)
  if start >= loop.num_steps:
    ckpt.close()
    return state

  p_step = pmapped_train_step(loss_fn, tx, ema_decay=loop.ema_decay)
  writer = writers.create_writer(workdir, tensorboard=loop.tensorboard, quiet=jax.process_index() > 0,
                                 resume_step=start)
  replicated = replicate(state)
  pending: list[tuple[int, dict]] = []
  last_time, last_step, first_time = time.perf_counter(), start, None
  global_size = 0

  def check_and_log(step: int) -> None:
    nonlocal pending, last_time, last_step
    fetched = [(s, jax.tree.map(lambda x: float(np.asarray(x)[0]), m)) for s, m in jax.device_get(pending)]
    pending = []
    for s, m in fetched:
      if m["nonfinite"]:
        verified = ckpt.latest_intact_step()
        raise FloatingPointError(
            f"non-finite loss or gradient at step {s} (loss={m['loss']}); training stopped. " +
            (f"The newest verified checkpoint is step {verified} in {ckpt.directory}." if verified is not None
             else f"There is no verified checkpoint in {ckpt.directory}."))
    now = time.perf_counter()
    steps_per_sec = (step - last_step) / max(now - last_time, 1e-9)
    scalars = {k: float(np.mean([m[k] for _, m in fetched])) for k in fetched[-1][1]}
    scalars.update(steps_per_sec=steps_per_sec, examples_per_sec=steps_per_sec * global_size)
    writer.write_scalars(step, scalars)
    writer.flush()  # what is logged survives a kill
    eta = (loop.num_steps - step) / max(steps_per_sec, 1e-9)
    logging.info("%s: step %d/%d (%.1f%%), %.2f steps/s, %.0f examples/s, ETA %s", os.path.basename(workdir),
                 step, loop.num_steps, 100 * step / loop.num_steps, steps_per_sec,
                 steps_per_sec * global_size, _format_seconds(eta))
    last_time, last_step = now, step

  with _sigterm_requests() as stop:
    try:
      for step in range(start, loop.num_steps):
        batch = batch_fn(step)
        global_size = jax.tree.leaves(batch)[0].shape[0]
        if global_size % (num_devices * jax.process_count()):
          raise ValueError(f"global batch {global_size} is not divisible by {num_devices} devices x "
                           f"{jax.process_count()} hosts.")
        example_ids = device_batch(np.arange(global_size), num_devices)
        # `pending` holds the metrics of every step not yet logged, in order; steps finish in order (each
        # takes the last one's state), so the step MAX_STEPS_IN_FLIGHT back finished means all before it did.
        if len(pending) >= MAX_STEPS_IN_FLIGHT:
          jax.block_until_ready(pending[-MAX_STEPS_IN_FLIGHT][1])
        replicated, metrics = p_step(replicated, device_batch(batch, num_devices), example_ids, key)
        pending.append((step, metrics))
        done = step + 1
        if first_time is None:
          jax.block_until_ready(metrics)
          first_time = time.perf_counter()
          logging.info("first step (compilation included) took %.1f s; %d device(s), %d examples each",
                       first_time - last_time, num_devices, global_size // (num_devices * jax.process_count()))
          last_time, last_step = first_time, done
        stopping = stop.is_set()
        saving = done % loop.checkpoint_every == 0 or done == loop.num_steps or stopping
        if done % loop.log_every == 0 or saving:
          check_and_log(done)
        if saving:
          ckpt.save(flax.jax_utils.unreplicate(replicated), force=done == loop.num_steps or stopping)
        if stopping:
          logging.warning("%s: SIGTERM: stopping after step %d, saved", os.path.basename(workdir), done)
          raise Preempted(done, ckpt.directory)
    finally:
      ckpt.close()
      writer.flush()
      writer.close()
    if stop.is_set():  # it came while the final checkpoint was being written: the caller stops too
      raise Preempted(loop.num_steps, ckpt.directory)
  return flax.jax_utils.unreplicate(replicated)
