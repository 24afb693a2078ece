"""The training loop: exact resume, device-count invariance of the step, non-finite losses, EMA, LR."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from cgdiff import objectives, schedules
from cgdiff.models import MLPScoreNet
from cgdiff.train import TrainLoopConfig, checkpoint, create_state, make_optimizer, train
from cgdiff.train import state as state_lib

NET = MLPScoreNet(hidden=16, num_layers=1)
SCHEDULE = schedules.cosine()


def optimizer_config(**overrides):
  config = ml_collections.ConfigDict(dict(learning_rate=1e-2, warmup_steps=2, lr_schedule="cosine",
                                          b1=0.9, b2=0.999, weight_decay=1e-4, grad_clip=1.0))
  config.update(overrides)
  return config


def toy_problem(num_points: int = 64):
  rng = np.random.default_rng(0)
  data = (rng.normal(size=(num_points, 2)).astype(np.float32),
          rng.uniform(-3, -1, size=(num_points, 2)).astype(np.float32))
  params = {"score": NET.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)), jnp.zeros((1,)))}
  loss_fn = functools.partial(objectives.diffusion_loss, eps_fn=NET.apply, schedule=SCHEDULE,
                              target="tweedie")
  batch_fn = lambda step: jax.tree.map(lambda x: x[(np.arange(16) + 16 * step) % num_points], data)
  return loss_fn, params, batch_fn


def run(workdir, batch_fn=None, num_steps=6, loss_fn=None):
  default_loss, params, default_batches = toy_problem()
  return train(loss_fn or default_loss, params, batch_fn or default_batches, optimizer=optimizer_config(),
               loop=TrainLoopConfig(num_steps=num_steps, log_every=1, checkpoint_every=2,
                                    ema_decay=0.9, tensorboard=False),
               workdir=str(workdir), key=jax.random.PRNGKey(1))


class Interrupt(Exception):
  pass


def test_resume_after_a_kill_gives_the_uninterrupted_result(tmp_path):
  reference = run(tmp_path / "straight")
  _, _, batches = toy_problem()

  def dies_at_step_5(step):
    if step == 5:
      raise Interrupt()
    return batches(step)

  with pytest.raises(Interrupt):
    run(tmp_path / "killed", batch_fn=dies_at_step_5)
  assert checkpoint.Checkpointer(str(tmp_path / "killed" / "checkpoints")).latest_step() == 4
  resumed = run(tmp_path / "killed")
  assert int(resumed.step) == int(reference.step) == 6
  # Same ops on the same inputs on the same machine: bit-identical, not merely close.
  chex.assert_trees_all_equal(resumed.params, reference.params)
  chex.assert_trees_all_equal(resumed.ema_params, reference.ema_params)
  # A finished run is not trained again.
  again = run(tmp_path / "killed")
  chex.assert_trees_all_equal(again.params, reference.params)


def test_nonfinite_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
  loss_fn, _, _ = toy_problem()

  def nan_from_step_3(params, batch, keys):
    loss, metrics = loss_fn(params, batch, keys)
    bad = batch[0][0, 0] == 999.0
    return jnp.where(bad, jnp.nan, loss), metrics

  _, _, batches = toy_problem()

  def poisoned(step):
    mean, logvar = batches(step)
    if step == 3:
      mean = mean.copy()
      mean[0, 0] = 999.0
    return mean, logvar

  with pytest.raises(FloatingPointError, match="step 3"):
    run(tmp_path, batch_fn=poisoned, loss_fn=nan_from_step_3)
  ckpt = checkpoint.Checkpointer(str(tmp_path / "checkpoints"))
  assert ckpt.latest_step() == 2
  _, params, _ = toy_problem()
  like = create_state(params, make_optimizer(optimizer_config(), 6))
  restored = ckpt.restore(like)
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(restored))


def test_writers_log_metrics_per_interval(tmp_path):
  run(tmp_path, num_steps=4)
  lines = open(tmp_path / "metrics.jsonl").read().strip().split("\n")
  assert len(lines) == 4 and '"loss"' in lines[0] and '"steps_per_sec"' in lines[-1]


def test_learning_rate_warms_up_then_decays():
  schedule = state_lib.learning_rate_schedule(optimizer_config(warmup_steps=10), num_steps=110)
  np.testing.assert_allclose([schedule(0), schedule(5), schedule(10), schedule(60), schedule(110)],
                             [0.0, 5e-3, 1e-2, 5e-3, 0.0], atol=1e-7)
  constant = state_lib.learning_rate_schedule(optimizer_config(warmup_steps=0, lr_schedule="constant"), 10)
  assert constant(0) == constant(9) == 1e-2
  with pytest.raises(ValueError, match="lr_schedule"):
    state_lib.learning_rate_schedule(optimizer_config(lr_schedule="linear"), 10)


def test_ema_update():
  ema = state_lib.ema_update({"w": jnp.array(1.0)}, {"w": jnp.array(3.0)}, 0.75)
  assert ema["w"] == 1.5
  assert state_lib.ema_update({"w": 1.0}, {"w": 3.0}, 0.0)["w"] == 3.0


SCRIPT = textwrap.dedent("""
    import functools, flax.jax_utils, jax, jax.numpy as jnp, numpy as np, ml_collections
    from cgdiff import objectives, schedules
    from cgdiff.models import MLPScoreNet
    from cgdiff.train import create_state, make_optimizer
    from cgdiff.train import loop as loop_lib
    assert jax.local_device_count() == 8, jax.devices()
    net = MLPScoreNet(hidden=16, num_layers=1)
    params = {"score": net.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)), jnp.zeros((1,)))}
    loss_fn = functools.partial(objectives.diffusion_loss, eps_fn=net.apply,
                                schedule=schedules.cosine(), target="lsi")
    opt = ml_collections.ConfigDict(dict(learning_rate=1e-2, warmup_steps=0, lr_schedule="constant",
                                         b1=0.9, b2=0.999, weight_decay=1e-4, grad_clip=1.0))
    tx = make_optimizer(opt, 10)
    rng = np.random.default_rng(0)
    batch = (rng.normal(size=(32, 2)).astype(np.float32), rng.uniform(-3, -1, size=(32, 2)).astype(np.float32))
    results = []
    for n in (1, 8):
      p_step = loop_lib.pmapped_train_step(loss_fn, tx, ema_decay=0.9, devices=jax.devices()[:n])
      state = flax.jax_utils.replicate(create_state(params, tx), jax.devices()[:n])
      split = lambda x: x.reshape((n, 32 // n) + x.shape[1:])
      for _ in range(3):
        state, metrics = p_step(state, jax.tree.map(split, batch), split(np.arange(32)), jax.random.PRNGKey(1))
      results.append(jax.tree.map(lambda x: np.asarray(x[0]), (state.params, metrics["loss"])))
    leaves1, leaves8 = jax.tree.leaves(results[0]), jax.tree.leaves(results[1])
    # float32 sums in a different order (8 partial means, then pmean): rounding of a few ulps per op.
    err = max(float(np.max(np.abs(a - b) / (np.abs(a) + 1e-3))) for a, b in zip(leaves1, leaves8))
    print("max relative difference", err)
    assert err < 1e-4, err
""")


def test_step_on_8_devices_equals_step_on_1_device():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "max relative difference" in result.stdout


def test_an_ema_that_keeps_the_initial_parameters_is_warned_about(tmp_path, caplog):
  """decay 0.9 over 6 steps: 0.9^6 = 53% of the EMA is the initial parameters."""
  with caplog.at_level("WARNING"):
    run(tmp_path, num_steps=6)
  assert any("leaves 53.1% of the initial" in r.getMessage() for r in caplog.records), caplog.text
