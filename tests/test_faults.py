"""Fault injection, by fault class: what a long run survives.

1. kill -9 during training (a real subprocess, SIGKILL): the resumed run ends bit-identical to an
   uninterrupted one (params, EMA, optimizer state) and metrics.jsonl holds every logged step once,
   with the uninterrupted run's values; what the killed run logged is on disk (jsonl and TensorBoard).
2. Damaged checkpoints (bytes overwritten in every file, files truncated, the checksum file missing):
   every one is detected; restore falls back to the previous intact checkpoint or says clearly that
   none is left; retention never deletes the last intact one.
3. Config drift: a workdir rerun with settings that change what a stage trained is refused, naming
   the keys; settings that do not (logging, checkpoint interval) are not.
4. Collectives on a loaded machine: XLA:CPU's rendezvous timeouts are the ones cgdiff sets (or the
   user's), and they decide whether a late device aborts the process.
5. Anticipated bad input (a missing config file, an unknown override key, bad values, an unwritable
   workdir): one paragraph and exit status 2 before any stage runs.

The many-trial versions are marked slow (python -m pytest -q -m slow tests/test_faults.py).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from benchmarks import run_ahead_deadlock
from cgdiff import objectives, samplers, schedules, score_targets
from cgdiff.data import pipeline
from cgdiff.models import build, gate
from cgdiff.train import TrainLoopConfig, checkpoint, checksums, create_state, make_optimizer, state, train, writers
from configs import quickstart, toy
from experiments import common, latent_space, sampling, validation
from experiments import run as run_lib
from experiments import stages as stages_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMING_KEYS = ("steps_per_sec", "examples_per_sec")  # wall-clock rates: the only values a rerun changes


# ----------------------------------------------------------------------------------------------------
# Shared: a tiny training run in a subprocess (cgdiff.train.train on a linear model whose loss uses the
# per-example keys), which can SIGKILL itself at a chosen step.

TRAIN_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import jax, jax.numpy as jnp, ml_collections, numpy as np
    from cgdiff.train import TrainLoopConfig, loop, train
    workdir, num_steps, kill_at, out, tensorboard, kill_signal = sys.argv[1:7]
    num_steps, kill_at, tensorboard = int(num_steps), int(kill_at), tensorboard == "True"
    rng = np.random.default_rng(0)
    data = (rng.normal(size=(64, 4)).astype(np.float32), rng.normal(size=(64, 4)).astype(np.float32))

    def loss_fn(params, batch, keys):
      x, y = batch
      noise = 0.1 * jax.vmap(lambda k: jax.random.normal(k, (4,)))(keys)
      pred = x @ params["w"] + params["b"]
      return jnp.mean((pred - y - noise) ** 2), {"pred_mean": jnp.mean(pred)}

    def batch_fn(step):
      if step == kill_at:
        os.kill(os.getpid(), getattr(signal, kill_signal))
      print("step", step, flush=True)
      return jax.tree.map(lambda a: a[(np.arange(8) + 8 * step) % 64], data)

    optimizer = ml_collections.ConfigDict(dict(learning_rate=1e-2, warmup_steps=2, lr_schedule="cosine",
                                               b1=0.9, b2=0.999, weight_decay=1e-4, grad_clip=1.0))
    try:
      state = train(loss_fn, {"w": jnp.zeros((4, 4)), "b": jnp.zeros((4,))}, batch_fn, optimizer=optimizer,
                    loop=TrainLoopConfig(num_steps=num_steps, log_every=1, checkpoint_every=3,
                                         keep_checkpoints=2, ema_decay=0.9, tensorboard=tensorboard),
                    workdir=workdir, key=jax.random.PRNGKey(1))
    except loop.Preempted as stop:
      print("preempted", stop.step, flush=True)
      sys.exit(143)
    leaves, _ = jax.tree_util.tree_flatten_with_path(jax.device_get(state))
    np.savez(out, **{jax.tree_util.keystr(path): np.asarray(x) for path, x in leaves})
""")


def start_training(workdir, num_steps: int, *, kill_at: int = -1, kill_signal: str = "SIGKILL",
                   tensorboard: bool = True, cache_dir) -> subprocess.Popen:
  """The training script on `workdir` in a subprocess (stdout: a line "step k" before each step), which
  sends itself `kill_signal` before step `kill_at` (exit status 143 and a line "preempted k" when a
  SIGTERM stops it).
  The persistent compilation cache makes the runs after the first skip XLA's compilation."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache_dir),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  env.pop("XLA_FLAGS", None)
  return subprocess.Popen(
      [sys.executable, "-c", TRAIN_SCRIPT, str(workdir), str(num_steps), str(kill_at),
       str(workdir) + ".npz", str(tensorboard), kill_signal], cwd=REPO, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, expected_returncode: int = 0) -> str:
  out, err = process.communicate(timeout=600)
  assert process.returncode == expected_returncode, err[-3000:]
  return out


def final_state(workdir) -> dict[str, np.ndarray]:
  with np.load(str(workdir) + ".npz") as npz:
    return dict(npz)


def jsonl(workdir) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def without_timing(records: list[dict]) -> list[dict]:
  return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def tensorboard_loss_steps(path: str) -> list[int]:
  """The steps of the "loss" scalars in one TensorBoard event file (TFRecord framing: length u64,
  its CRC u32, the Event proto, its CRC u32; a record cut short by a kill ends the list)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  with open(path, "rb") as f:
    data = f.read()
  steps, pos = [], 0
  while pos + 12 <= len(data):
    (length,) = struct.unpack("<Q", data[pos:pos + 8])
    end = pos + 12 + length
    if end + 4 > len(data):
      break
    event = event_pb2.Event.FromString(data[pos + 12:end])
    steps += [event.step for value in event.summary.value if value.tag == "loss"]
    pos = end + 4
  return steps


def event_files(workdir) -> list[str]:
  return sorted(os.path.join(workdir, n) for n in os.listdir(workdir) if n.startswith("events.out.tfevents"))


def assert_same_run(resumed, reference) -> None:
  """The resumed run ended bit-identical to the uninterrupted one, and its metrics.jsonl holds every
  step once, with the uninterrupted run's values (same ops on the same inputs: equal, not close)."""
  final, expected = final_state(resumed), final_state(reference)
  assert final.keys() == expected.keys()
  for path in expected:
    np.testing.assert_array_equal(final[path], expected[path], err_msg=path)
  assert without_timing(jsonl(resumed)) == without_timing(jsonl(reference))


def newest_step_dir(workdir) -> str:
  ckpt_dir = os.path.join(workdir, "checkpoints")
  return os.path.join(ckpt_dir, str(checksums.checkpoint_steps(ckpt_dir)[-1]))


def largest_data_file(step_dir: str) -> str:
  files = [os.path.join(root, n) for root, _, names in os.walk(step_dir) for n in names
           if "ocdbt.process" in root]
  return max(files, key=os.path.getsize)


def flip_byte(path: str, offset: int) -> None:
  with open(path, "r+b") as f:
    f.seek(offset)
    byte = f.read(1)
    f.seek(offset)
    f.write(bytes([byte[0] ^ 0xFF]))


# ----------------------------------------------------------------------------------------------------
# 1. kill -9

NUM_STEPS = 12  # checkpoints at 3, 6, 9, 12 (keep 2); a log line at every step


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("xla_cache")


def test_kill_9_at_random_steps_then_resume_is_bit_identical_and_loses_no_metrics(tmp_path, cache_dir):
  """Two trials at steps drawn at random (seeded; printed): each run SIGKILLs itself before its step k,
  so it has logged steps 1..k. Trial b's newest checkpoint is then damaged as well: the resumed run
  must fall back to the one before and still end identical."""
  kill_steps = sorted(np.random.default_rng(17).choice(np.arange(1, NUM_STEPS), 2, replace=False).tolist())
  print("kill steps", kill_steps)
  finish(start_training(tmp_path / "reference", NUM_STEPS, tensorboard=False, cache_dir=cache_dir))
  killed = {name: start_training(tmp_path / name, NUM_STEPS, kill_at=k, cache_dir=cache_dir)
            for name, k in zip("ab", kill_steps)}
  for (name, process), k in zip(killed.items(), kill_steps):
    finish(process, -signal.SIGKILL)
    logged = list(range(1, k + 1))
    assert [r["step"] for r in jsonl(tmp_path / name)] == logged
    (events,) = event_files(tmp_path / name)
    assert tensorboard_loss_steps(events) == logged
  if checksums.checkpoint_steps(str(tmp_path / "b" / "checkpoints")):
    flip_byte(largest_data_file(newest_step_dir(tmp_path / "b")), 0)
  for process in [start_training(tmp_path / name, NUM_STEPS, tensorboard=False, cache_dir=cache_dir)
                  for name in "ab"]:
    finish(process)
  for name in "ab":
    assert_same_run(tmp_path / name, tmp_path / "reference")


def test_sigterm_saves_the_step_it_comes_in_and_the_resumed_run_is_bit_identical(tmp_path, cache_dir):
  """SIGTERM (a scheduler's stop request) before step k, k not a checkpoint step (every 3rd): training ends
  step k, logs it, saves its checkpoint and stops (status 143); the rerun resumes at k + 1, not at the
  checkpoint before, and ends identical to the uninterrupted run. A SIGTERM in the last step stops the
  process too (its caller must not start the next stage), with the final checkpoint saved."""
  finish(start_training(tmp_path / "reference", NUM_STEPS, tensorboard=False, cache_dir=cache_dir))
  for name, k in (("mid", 4), ("last", NUM_STEPS - 1)):
    out = finish(start_training(tmp_path / name, NUM_STEPS, kill_at=k, kill_signal="SIGTERM",
                                tensorboard=False, cache_dir=cache_dir), 143)
    assert f"preempted {k + 1}" in out
    assert checksums.checkpoint_steps(str(tmp_path / name / "checkpoints"))[-1] == k + 1
    assert [r["step"] for r in jsonl(tmp_path / name)] == list(range(1, k + 2))
    resumed = finish(start_training(tmp_path / name, NUM_STEPS, tensorboard=False, cache_dir=cache_dir))
    assert resumed.split()[:2] == (["step", str(k + 1)] if k + 1 < NUM_STEPS else [])
    assert_same_run(tmp_path / name, tmp_path / "reference")


def test_a_resumed_run_keeps_the_metrics_logged_up_to_its_checkpoint_only(tmp_path):
  """Records after the resume step, and a line a kill cut short, are dropped (the resumed run logs
  those steps again); the rest is kept as it was."""
  lines = ['{"step": 1, "loss": 0.5}\n', '{"step": 2, "loss": 0.25}\n', '{"step": 3, "loss": 0.125}\n',
           '{"step": 4, "lo']
  assert writers.lines_through(lines, 2) == lines[:2]
  assert writers.lines_through(lines, 3) == lines[:3]
  path = tmp_path / "metrics.jsonl"
  path.write_text("".join(lines))
  writer = writers.JsonlWriter(str(path), resume_step=2)
  writer.write_scalars(3, {"loss": 0.125})
  writer.close()
  assert path.read_text() == "".join(lines[:3])


def test_the_metrics_reader_leaves_out_a_line_still_being_written(tmp_path):
  """Status, costs and reports read metrics.jsonl while a run appends to it: the line cut short is not
  a record (and not an error); every complete one is read in order."""
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.25}\n{"step": 3, "lo')
  assert writers.read_metrics(str(path)) == [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.25}]


@pytest.mark.slow
def test_kill_9_at_random_moments_many_trials(tmp_path, cache_dir):
  """Each trial kills a run 1-3 times at a random moment (after a random step starts, plus a random
  delay: kills land in steps, log writes and checkpoint saves), then lets it finish. Every trial must
  end bit-identical to the uninterrupted run with every step logged once, and each killed run's
  TensorBoard file must hold the steps its metrics.jsonl held at the kill (but for the step being
  written at that moment)."""
  num_steps, trials = 30, 12
  rng = np.random.default_rng(2026)
  finish(start_training(tmp_path / "reference", num_steps, tensorboard=False, cache_dir=cache_dir))
  kills = 0
  for trial in range(trials):
    workdir = tmp_path / f"trial{trial}"
    for _ in range(rng.integers(1, 4)):
      process = start_training(workdir, num_steps, cache_dir=cache_dir)
      target = int(rng.integers(1, num_steps))
      for line in process.stdout:
        if line.strip() == f"step {target}" or line.strip() == f"step {num_steps - 1}":
          break
      time.sleep(rng.uniform(0.0, 0.3))
      process.kill()
      process.communicate(timeout=600)
      if process.returncode == 0:  # it finished before the kill landed
        break
      kills += 1
      logged = [r["step"] for r in jsonl(workdir)] if os.path.exists(workdir / "metrics.jsonl") else []
      assert logged == list(range(1, len(logged) + 1))
      in_tensorboard = set().union(*map(tensorboard_loss_steps, event_files(workdir)))
      assert set(logged[:-1]) <= in_tensorboard, (logged, sorted(in_tensorboard))
    finish(start_training(workdir, num_steps, cache_dir=cache_dir))
    assert_same_run(workdir, tmp_path / "reference")
  print(f"{trials} trials, {kills} kills, all resumed bit-identical with every step logged once")


# ----------------------------------------------------------------------------------------------------
# 2. Damaged checkpoints

OPTIMIZER = ml_collections.ConfigDict(dict(learning_rate=1e-2, warmup_steps=0, lr_schedule="constant", b1=0.9,
                                           b2=0.999, weight_decay=0.0, grad_clip=1.0))


def state_at(step: int, width: int = 256):
  """A TrainState whose every array depends on `step`. Random values: Orbax compresses its data files,
  and arrays that compress to little sit inside its index nodes, which have checksums of their own."""
  rng = np.random.default_rng(step)
  params = {"dense": {"kernel": jnp.asarray(rng.normal(size=(width, 3)), jnp.float32),
                      "bias": jnp.arange(3.0) + step},
            "scale": jnp.float32(step)}
  state = create_state(params, make_optimizer(OPTIMIZER, 10))
  return state.replace(step=jnp.int32(step),
                       opt_state=jax.tree.map(lambda x: x + step, state.opt_state))


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory):
  """A checkpoint directory holding steps 1 and 2 of state_at (never modified: tests copy it)."""
  directory = str(tmp_path_factory.mktemp("pristine") / "checkpoints")
  ckpt = checkpoint.Checkpointer(directory, keep=None, save_every=1)
  for step in (1, 2):
    ckpt.save(state_at(step))
  ckpt.close()
  return directory


def restored(directory: str):
  ckpt = checkpoint.Checkpointer(directory, keep=None)
  try:
    return ckpt.restore(state_at(0))
  finally:
    ckpt.close()


def step_files(directory: str, step: int) -> list[str]:
  step_dir = os.path.join(directory, str(step))
  return sorted(os.path.relpath(os.path.join(root, n), step_dir) for root, _, names in os.walk(step_dir)
                for n in names)


def damaged_copies(pristine: str, tmp_path, offsets_per_file: int):
  """(description, copy of `pristine` with one byte of step 2 flipped) for offsets spread over every
  file of step 2 (data, metadata and the checksum file)."""
  trial = 0
  for relative in step_files(pristine, 2):
    size = os.path.getsize(os.path.join(pristine, "2", relative))
    for offset in sorted(set(np.linspace(0, size - 1, offsets_per_file).astype(int).tolist())):
      copy = str(tmp_path / f"trial{trial}")
      shutil.copytree(pristine, copy)
      flip_byte(os.path.join(copy, "2", relative), offset)
      trial += 1
      yield f"{relative}@{offset}", copy
      shutil.rmtree(copy)


def assert_every_damage_falls_back(pristine: str, tmp_path, offsets_per_file: int) -> int:
  expected = state_at(1)
  trials = 0
  for where, copy in damaged_copies(pristine, tmp_path, offsets_per_file):
    state = restored(copy)
    assert int(state.step) == 1, where
    chex.assert_trees_all_equal(state, expected)
    trials += 1
  return trials


def test_a_flipped_byte_anywhere_in_the_newest_checkpoint_falls_back_to_the_previous(
    two_checkpoints, tmp_path, caplog):
  assert int(restored(two_checkpoints).step) == 2
  with caplog.at_level(logging.WARNING):
    trials = assert_every_damage_falls_back(two_checkpoints, tmp_path, offsets_per_file=2)
  assert trials >= 2 * len(step_files(two_checkpoints, 2)) - 2  # two per file (one for a 1-byte file)
  assert "checkpoint step 2 in" in caplog.text and "is skipped: checksum mismatch in" in caplog.text


@pytest.mark.slow
def test_a_flipped_byte_at_many_offsets_of_every_file_is_detected(two_checkpoints, tmp_path):
  trials = assert_every_damage_falls_back(two_checkpoints, tmp_path, offsets_per_file=40)
  print(f"{trials} damaged copies (40 offsets in each of {len(step_files(two_checkpoints, 2))} files): "
        f"every one detected, every restore fell back to step 1")


@pytest.mark.parametrize("victim", ["data", "default/_METADATA", checksums.MANIFEST])
@pytest.mark.parametrize("keep_fraction", [0.0, 0.5])
def test_a_truncated_file_falls_back_to_the_previous_checkpoint(two_checkpoints, tmp_path, victim,
                                                                 keep_fraction):
  copy = str(tmp_path / "copy")
  shutil.copytree(two_checkpoints, copy)
  path = (largest_data_file(os.path.join(copy, "2")) if victim == "data" else os.path.join(copy, "2", victim))
  with open(path, "r+b") as f:
    f.truncate(int(os.path.getsize(path) * keep_fraction))
  chex.assert_trees_all_equal(restored(copy), state_at(1))


def test_an_unfinished_save_is_skipped_and_alone_means_no_checkpoint(two_checkpoints, tmp_path, caplog):
  """A step without its checksum file is a save that did not finish (a run killed between Orbax's save
  and the checksums): the older checkpoint is used, and with none the run starts from scratch."""
  copy = str(tmp_path / "copy")
  shutil.copytree(two_checkpoints, copy)
  os.remove(os.path.join(copy, "2", checksums.MANIFEST))
  with caplog.at_level(logging.WARNING):
    assert int(restored(copy).step) == 1
  assert "step 2 in" in caplog.text and "is skipped: its save did not finish" in caplog.text
  os.remove(os.path.join(copy, "1", checksums.MANIFEST))
  ckpt = checkpoint.Checkpointer(copy, keep=None)
  assert int(ckpt.resume(state_at(0)).step) == 0
  ckpt.close()


def test_checkpoints_from_before_verification_are_refused_until_trusted(two_checkpoints, tmp_path):
  """A directory that cgdiff did not mark (checkpoints written before it verified them): the error
  says how to vouch for them, and after `--trust` they are used."""
  copy = str(tmp_path / "copy")
  shutil.copytree(two_checkpoints, copy)
  for path in ("2/" + checksums.MANIFEST, "1/" + checksums.MANIFEST, checkpoint.MARKER):
    os.remove(os.path.join(copy, path))
  with pytest.raises(checkpoint.CheckpointError, match=r"no verified checkpoint in .*step 2: no "
                     r"cgdiff_checksums.json.*step 1: no cgdiff_checksums.json.*--trust"):
    restored(copy)
  assert checkpoint.main(["--trust", copy]) == 0
  chex.assert_trees_all_equal(restored(copy), state_at(2))


def test_no_intact_checkpoint_is_a_clear_error_naming_each_problem(two_checkpoints, tmp_path):
  copy = str(tmp_path / "copy")
  shutil.copytree(two_checkpoints, copy)
  flip_byte(os.path.join(copy, "2", "default", "_METADATA"), 5)
  with open(os.path.join(copy, "1", checksums.MANIFEST), "w") as f:
    f.write("{}")
  with pytest.raises(checkpoint.CheckpointError) as error:
    restored(copy)
  message = str(error.value)
  assert message.startswith(f"no intact checkpoint in {copy}: step 2: checksum mismatch in "
                            f"default/_METADATA; step 1: {checksums.MANIFEST} is unreadable")
  assert "remove the directory (or use a new workdir) to train from scratch" in message


def test_arrays_that_read_back_otherwise_than_saved_are_detected(two_checkpoints, tmp_path, caplog):
  """The second check: bytes of the array data changed and the file checksums rewritten to match (as
  if the bytes had changed before they were hashed). Orbax reads most such changes without an error
  (the measurement of issue 17); the arrays' checksums must catch every one that changes an array."""
  with caplog.at_level(logging.WARNING):
    for trial in range(12):
      copy = str(tmp_path / f"copy{trial}")
      shutil.copytree(two_checkpoints, copy)
      step_dir = os.path.join(copy, "2")
      data = largest_data_file(step_dir)
      flip_byte(data, trial * (os.path.getsize(data) - 1) // 11)
      checksums.write_manifest(step_dir, checksums.saved_arrays(checksums.read_manifest(step_dir)))
      assert checksums.file_problem(step_dir) is None
      state = restored(copy)
      # Step 2 as saved (a byte no array depends on) or, detected, the fallback to step 1.
      chex.assert_trees_all_equal(state, state_at(int(state.step)))
  assert "is skipped: array checksum mismatch in .params['dense']['kernel']" in caplog.text or \
      "is skipped: array checksum mismatch in .ema_params['dense']['kernel']" in caplog.text, caplog.text


def test_another_models_checkpoint_is_a_clear_error_naming_the_arrays(two_checkpoints):
  ckpt = checkpoint.Checkpointer(two_checkpoints, keep=None)
  with pytest.raises(checkpoint.CheckpointError, match=r"holds another model than the one being restored: "
                     r"\.params\['dense'\]\['kernel'\] is float32\[256, 3\] in the checkpoint, "
                     r"float32\[5, 3\] in the model.*use a new workdir"):
    ckpt.restore(state_at(0, width=5))
  ckpt.close()


def test_retention_never_deletes_the_last_intact_checkpoint(tmp_path):
  """keep=2: Orbax's max_to_keep=2 would delete step 1 when step 3 is saved, leaving a damaged step 2
  and step 3; when step 3 is damaged too, nothing intact would be left."""
  directory = str(tmp_path / "checkpoints")
  ckpt = checkpoint.Checkpointer(directory, keep=2, save_every=1)
  ckpt.save(state_at(1))
  ckpt.save(state_at(2))
  flip_byte(os.path.join(directory, "2", checksums.MANIFEST), 10)
  ckpt.save(state_at(3))
  assert ckpt.all_steps() == [1, 2, 3]  # two intact kept (3 and 1); the damaged 2 is newer than 1
  ckpt.save(state_at(4))
  assert ckpt.all_steps() == [3, 4]
  flip_byte(os.path.join(directory, "4", checksums.MANIFEST), 10)
  flip_byte(os.path.join(directory, "3", checksums.MANIFEST), 10)
  with pytest.raises(checkpoint.CheckpointError):
    ckpt.restore(state_at(0))
  ckpt.close()
  with pytest.raises(ValueError, match="keep must be >= 1"):
    checkpoint.Checkpointer(directory, keep=0)
  assert checkpoint.steps_to_delete([1, 2, 3, 4], intact={1}, keep=1) == []
  assert checkpoint.steps_to_delete([1, 2, 3, 4], intact={1, 3}, keep=1) == [1, 2]
  assert checkpoint.steps_to_delete([1, 2, 3, 4], intact={2, 4}, keep=2) == [1]


def test_a_damaged_step_saved_again_is_set_aside_not_deleted(two_checkpoints, tmp_path):
  copy = str(tmp_path / "copy")
  shutil.copytree(two_checkpoints, copy)
  flip_byte(os.path.join(copy, "2", "default", "_METADATA"), 0)
  ckpt = checkpoint.Checkpointer(copy, keep=None, save_every=1)
  assert int(ckpt.restore(state_at(0)).step) == 1
  ckpt.save(state_at(2))
  assert os.path.isdir(os.path.join(copy, checkpoint.SET_ASIDE, "2"))
  chex.assert_trees_all_equal(ckpt.restore(state_at(0)), state_at(2))
  ckpt.close()


def train_tiny(workdir, batch_fn, num_steps: int = 6):
  """cgdiff.train.train on a 2-parameter model whose loss is sum((w - batch)^2) / batch[0]."""

  def loss_fn(params, batch, keys):
    del keys
    return jnp.sum((params["w"] - batch) ** 2) / batch[0], {}

  return train(loss_fn, {"w": jnp.zeros((2,))}, batch_fn, optimizer=OPTIMIZER,
               loop=TrainLoopConfig(num_steps=num_steps, log_every=1, checkpoint_every=2, tensorboard=False),
               workdir=str(workdir), key=jax.random.PRNGKey(0))


def test_a_run_killed_during_its_first_save_starts_again_from_scratch(tmp_path):
  """Step 2 saved by Orbax, killed before its checksums: the rerun trains from step 0, logs every step
  once and sets the unfinished step 2 aside when it saves step 2 again."""
  ckpt = checkpoint.Checkpointer(str(tmp_path / "checkpoints"), keep=None, save_every=1)
  ckpt.save(create_state({"w": jnp.ones((2,))}, make_optimizer(OPTIMIZER, 4)).replace(step=jnp.int32(2)))
  ckpt.close()
  os.remove(os.path.join(tmp_path, "checkpoints", "2", checksums.MANIFEST))
  state = train_tiny(tmp_path, lambda step: np.ones((2,), np.float32), num_steps=4)
  assert int(state.step) == 4
  assert [r["step"] for r in jsonl(tmp_path)] == [1, 2, 3, 4]
  assert os.path.isdir(os.path.join(tmp_path, "checkpoints", checkpoint.SET_ASIDE, "2"))


def test_after_a_nan_the_message_names_the_newest_verified_checkpoint(tmp_path):
  """Step 4's checkpoint is damaged right after it is written; the NaN of step 4 (the fifth step) must
  send the user to step 2, the newest verified checkpoint, not to step 4."""

  def batch_fn(step):
    if step == 4:  # called after step 4's checkpoint is saved
      flip_byte(os.path.join(tmp_path, "checkpoints", "4", "default", "_METADATA"), 0)
    return np.full((2,), 0.0 if step == 4 else 1.0, np.float32)  # step 4: 0 / 0

  with pytest.raises(FloatingPointError, match=r"at step 4 .* The newest verified checkpoint is step 2 in "):
    train_tiny(tmp_path, batch_fn)


# ----------------------------------------------------------------------------------------------------
# 3. Config drift

def toy_config(**training):
  config = toy.get_config()
  config.data.update(num_points=64,
                     field={"depth": 1, "components_per_branch": 2, "seed": 0, "data_std": 0.5})
  config.score_net.update(hidden=8, num_layers=1)
  config.ldm.training.update(dict(dict(num_steps=2, batch_size=16, log_every=1, checkpoint_every=2,
                                       warmup_steps=0, tensorboard=False), **training))
  config.sample.update(num_steps=2, num_samples=16, batch_size=16)
  config.stages = ("ldm",)
  return config


@pytest.fixture(scope="module")
def toy_workdir(tmp_path_factory):
  """The toy's `ldm` stage trained for 2 steps (cosine learning rate)."""
  workdir = str(tmp_path_factory.mktemp("toy"))
  run_lib.run_stages(toy_config(), workdir)
  return workdir


def changed(config=None, **updates):
  """`config` (default toy_config()) with `updates` ({"group.key": value}) applied."""
  config = toy_config() if config is None else config
  for key, value in updates.items():
    *groups, name = key.split(".")
    functools.reduce(getattr, groups, config)[name] = value
  return config


def stored_stage(workdir: str, config, stage: str = "ldm") -> str:
  """A stage that `config` trained, as the drift check sees it: its settings and a checkpoint step."""
  common.record_stage_settings(config, workdir, stage)
  os.makedirs(os.path.join(common.checkpoint_dir(config, workdir, stage), "2"))
  return workdir


@pytest.mark.parametrize("key, value, expected", [
    ("ldm.training.learning_rate", 0.002, r"ldm\.training\.learning_rate 0\.001 -> 0\.002"),
    ("ldm.training.num_steps", 1, r"ldm\.training\.num_steps 2 -> 1 .*may only grow"),
    ("ldm.training.num_steps", 4, r"ldm\.training\.num_steps 2 -> 4 .*only with lr_schedule 'constant'"),
    ("score_net.hidden", 16, r"score_net\.hidden 8 -> 16"),
    ("seed", 1, r"seed 0 -> 1"),
])
def test_resuming_with_changed_settings_is_refused_naming_them(tmp_path, key, value, expected):
  workdir = stored_stage(str(tmp_path), toy_config())
  with pytest.raises(common.ConfigDriftError, match=r"the `ldm` stage in .* was trained with other settings "
                     r"than the current config's: " + expected + r".*use a new --workdir"):
    common.check_stage_settings(changed(**{key: value}), workdir, "ldm", training=True)


def test_num_steps_may_grow_under_a_constant_learning_rate_only(tmp_path):
  """A run continued to a larger num_steps is the run trained for it from the start only when the
  learning rate does not depend on num_steps (test_num_steps_grown_under_a_constant_learning_rate_...
  checks that it is, bit for bit)."""
  workdir = stored_stage(str(tmp_path), toy_config(lr_schedule="constant"))
  grown = toy_config(lr_schedule="constant", num_steps=4)
  common.check_stage_settings(grown, workdir, "ldm", training=True)
  with pytest.raises(common.ConfigDriftError,
                     match=r"num_steps 2 -> 4.*run the `ldm` stage first to continue"):
    common.check_stage_settings(grown, workdir, "ldm", training=False)  # not continued yet


def test_settings_that_do_not_change_the_model_may_change(tmp_path):
  workdir = stored_stage(str(tmp_path), toy_config())
  config = changed(**{"ldm.training.log_every": 5, "ldm.training.checkpoint_every": 7,
                      "ldm.training.keep_checkpoints": 1, "ldm.training.tensorboard": True,
                      "sample.num_steps": 3, "eval.num_samples": 5, "stages": ("sample",)})
  for training in (True, False):
    common.check_stage_settings(config, workdir, "ldm", training=training)


def test_a_rerun_and_a_later_stage_refuse_a_stage_trained_with_other_settings(toy_workdir):
  """Through the stages: the ldm stage does not resume, and sampling does not write a record naming a
  learning rate the model was not trained with; the checkpoints are untouched."""
  before = sorted(os.listdir(common.checkpoint_dir(toy_config(), toy_workdir, "ldm")))
  config = changed(**{"ldm.training.learning_rate": 0.002})
  with pytest.raises(common.ConfigDriftError, match=r"learning_rate 0\.001 -> 0\.002"):
    run_lib.run_stages(config, toy_workdir, ("ldm",))
  with pytest.raises(common.ConfigDriftError, match=r"learning_rate 0\.001 -> 0\.002.*records would name"):
    run_lib.run_stages(config, toy_workdir, ("sample",))
  assert sorted(os.listdir(common.checkpoint_dir(toy_config(), toy_workdir, "ldm"))) == before
  assert not os.path.exists(os.path.join(toy_workdir, "samples"))


def test_stage_settings_hold_the_stages_it_trains_on():
  """An image `ldm` depends on the VAE it reads (from `vae` or `cotrain`); the toy's has none."""
  from configs import quickstart  # pylint: disable=g-import-not-at-top
  config = quickstart.get_config()
  assert "vae.kl_weight" in common.stage_settings(config, "ldm")
  assert "cotrain.kl_weight" not in common.stage_settings(config, "ldm")
  config.ldm.vae_source = "cotrain"
  assert "cotrain.kl_weight" in common.stage_settings(config, "ldm")
  assert not any(k.startswith(("vae.", "cotrain.")) for k in common.stage_settings(toy_config(), "ldm"))
  vae_keys = common.stage_settings(config, "vae")
  assert "vae.training.learning_rate" in vae_keys and "vae.training.log_every" not in vae_keys
  assert not any(k.startswith(("ldm.", "sample.", "eval.", "stages")) for k in vae_keys)


@pytest.mark.slow
def test_num_steps_grown_under_a_constant_learning_rate_continues_the_run_exactly(tmp_path):
  """With lr_schedule 'constant' the step's update does not depend on num_steps: 2 steps continued to
  4 equal 4 steps from the start, bit for bit (what allows the continuation)."""
  continued, straight = str(tmp_path / "continued"), str(tmp_path / "straight")
  run_lib.run_stages(toy_config(lr_schedule="constant"), continued)
  run_lib.run_stages(toy_config(lr_schedule="constant", num_steps=4), continued)
  run_lib.run_stages(toy_config(lr_schedule="constant", num_steps=4), straight)
  config = toy_config(lr_schedule="constant", num_steps=4)
  like = create_state(common.init_ldm(config, (2,))[2], make_optimizer(config.ldm.training, 4))
  states = []
  for workdir in (continued, straight):
    ckpt = checkpoint.Checkpointer(common.checkpoint_dir(config, workdir, "ldm"), keep=None)
    states.append(ckpt.restore(like))
    ckpt.close()
  assert int(states[0].step) == 4
  chex.assert_trees_all_equal(states[0], states[1])


CLI = [sys.executable, "-m", "experiments.run", "--config=configs/toy.py", "--cpu_devices=1",
       "--stages=ldm", "--config.data.num_points=64", "--config.data.field.depth=1",
       "--config.data.field.components_per_branch=2", "--config.score_net.hidden=8",
       "--config.score_net.num_layers=1", "--config.ldm.training.batch_size=16",
       "--config.ldm.training.num_steps=2", "--config.ldm.training.warmup_steps=0",
       "--config.ldm.training.tensorboard=False"]


def test_the_command_line_prints_a_refusal_as_one_paragraph_without_a_traceback(toy_workdir):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  result = subprocess.run(CLI + [f"--workdir={toy_workdir}", "--config.ldm.training.learning_rate=0.002"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2
  assert "Traceback" not in result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("experiments.run: the `ldm` stage in ") and "learning_rate 0.001 -> 0.002" in last


def test_damaged_checkpoints_stop_the_command_line_with_the_paragraph(toy_workdir, tmp_path):
  workdir = str(tmp_path / "workdir")
  shutil.copytree(toy_workdir, workdir)
  for step_dir in [newest_step_dir(os.path.join(workdir, "ldm"))]:
    flip_byte(largest_data_file(step_dir), 0)
  with pytest.raises(checkpoint.CheckpointError, match=r"^no intact checkpoint in .*ldm/checkpoints: step 2: "
                     r"checksum mismatch"):
    run_lib.run_stages(toy_config(), workdir, ("ldm",))
  assert checkpoint.CheckpointError in run_lib.USER_ERRORS  # the command line prints it as a paragraph


def test_sigterm_stops_the_command_line_after_saving_the_step_with_one_line_and_status_143(tmp_path):
  """What a scheduler's stop request does to `experiments.run`: SIGTERM once the LDM is logging (every
  5 steps, checkpoints every 1000 of 100,000): the run saves the step it is in and exits 143 with one
  line naming it; the checkpoint is that step, so the rerun loses none of them."""
  workdir = tmp_path / "run"
  args = [arg for arg in CLI if "num_steps" not in arg] + [
      f"--workdir={workdir}", "--config.ldm.training.num_steps=100000", "--config.ldm.training.log_every=5",
      "--config.ldm.training.checkpoint_every=1000"]
  process = subprocess.Popen(args, cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                             stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
  lines = []
  for line in process.stderr:  # absl logs to stderr
    lines.append(line)
    if re.search(r"ldm: step \d+/100000", line):
      process.send_signal(signal.SIGTERM)
      break
  err = "".join(lines) + process.communicate(timeout=300)[1]
  assert process.returncode == 143, err[-3000:]
  assert "Traceback" not in err
  last = err.strip().splitlines()[-1]
  step = int(re.fullmatch(r"experiments\.run: stopped by SIGTERM after step (\d+); its checkpoint is saved in "
                          r".*/ldm/checkpoints, and the same command resumes from it\.", last).group(1))
  assert 5 <= step < 1000
  assert checksums.latest_intact_step(str(workdir / "ldm" / "checkpoints")) == step


# ----------------------------------------------------------------------------------------------------
# 4. Collectives on a loaded machine

PSUM_SCRIPT = textwrap.dedent("""
    import sys, time
    import jax, jax.numpy as jnp, numpy as np
    from cgdiff.train import devices
    devices.set_cpu_devices(2)

    def late_on_device_0(x):  # device 0 arrives at the psum's rendezvous `delay` seconds late
      if float(np.asarray(x).reshape(-1)[0]) == 0.0:
        time.sleep(float(sys.argv[1]))
      return np.asarray(x)

    def step(x):
      x = jax.pure_callback(late_on_device_0, jax.ShapeDtypeStruct(x.shape, x.dtype), x)
      return jax.lax.psum(x, "i")

    print("psum", np.asarray(jax.pmap(step, axis_name="i")(jnp.arange(2.0))).tolist(), flush=True)
""")


def run_late_psum(delay: float, xla_flags: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags)
  return subprocess.run([sys.executable, "-c", PSUM_SCRIPT, str(delay)], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)


def test_a_device_later_than_the_users_timeouts_aborts_the_process():
  """XLA honours the flags (a device waits warn-stuck + terminate seconds, then aborts), and a user's
  values are kept: 1 + 1 s against a device 5 s late."""
  result = run_late_psum(5, "--xla_cpu_collective_call_warn_stuck_timeout_seconds=1 "
                            "--xla_cpu_collective_call_terminate_timeout_seconds=1")
  assert result.returncode == -signal.SIGABRT, result.stderr[-2000:]
  assert "Termination timeout for `all reduce" in result.stderr and "of 1 seconds exceeded" in result.stderr


def test_a_late_device_within_cgdiffs_timeouts_does_not_abort():
  """With only the warning set by the user (1 s), cgdiff's terminate timeout applies: no abort."""
  result = run_late_psum(5, "--xla_cpu_collective_call_warn_stuck_timeout_seconds=1")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "psum [1.0, 1.0]" in result.stdout
  assert "may be stuck" in result.stderr  # the user's 1 s warning was in force


def test_training_on_2_cpu_devices_does_not_run_too_far_ahead_of_them(tmp_path):
  """XLA:CPU deadlocks (the all-reduce waits for a device that never starts its step, 0% CPU) when a
  loop dispatches more pmapped steps ahead of the devices than the client's in-flight limit per device
  (32) while their inputs are host copies. run_ahead_deadlock.TRAIN_SCRIPT trains 400 such steps
  between two log steps; without MAX_STEPS_IN_FLIGHT it deadlocks (benchmarks/run_ahead_deadlock.py's
  log, README Reliability). A hang aborts here after 30 + 60 s (the user's collective timeouts win
  over cgdiff's), long beyond a device made late by a loaded machine."""
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_cpu_collective_call_warn_stuck_timeout_seconds=30 "
                       "--xla_cpu_collective_call_terminate_timeout_seconds=60")
  result = subprocess.run([sys.executable, "-c", run_ahead_deadlock.TRAIN_SCRIPT, str(tmp_path)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0 and "trained" in result.stdout, result.stderr[-3000:]


SOAK_CONFIG = ["--config=configs/quickstart.py", "--stages=vae", "--cpu_devices=2",
               "--config.vae.training.num_steps=150", "--config.vae.training.batch_size=32",
               "--config.vae.training.checkpoint_every=50", "--config.vae.training.log_every=25",
               "--config.data.kwargs.num_images=512"]


def busy_loops(count: int) -> list[subprocess.Popen]:
  return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


@pytest.mark.slow
def test_training_on_2_cpu_devices_survives_4_busy_loops(tmp_path):
  """The quickstart's VAE stage on 2 CPU devices while 4 busy loops load the machine (as other jobs
  did when the rendezvous timeout aborted it); it must finish."""
  # A 10 s warning (the user's value wins; cgdiff's terminate timeout stays) logs how late devices are.
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_cpu_collective_call_warn_stuck_timeout_seconds=10")
  hogs = busy_loops(4)
  try:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "experiments.run", *SOAK_CONFIG, f"--workdir={tmp_path}"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    seconds = time.perf_counter() - start
  finally:
    for hog in hogs:
      hog.kill()
      hog.wait()
  assert result.returncode == 0, result.stderr[-3000:]
  assert "2 CPU device(s)" in result.stderr
  assert checksums.latest_intact_step(str(tmp_path / "vae" / "checkpoints")) == 150
  waits = [float(w) for w in re.findall(r"is unstuck waiting for .*? after ([0-9.]+)s", result.stderr)]
  print(f"150 VAE steps on 2 CPU devices under 4 busy loops: {seconds:.0f} s; {len(waits)} collectives "
        f"waited > 10 s for a device, the longest {max(waits, default=0):.0f} s")


# ----------------------------------------------------------------------------------------------------
# 5. # --- anticipated bad input ---------------------------------------------------------------------------
# A mistake a user can be expected to make ends the run before any stage, with exit status 2 and one
# paragraph on stderr that names the problem and the fix (experiments/validation.py); a bug keeps its
# traceback.

def run_cli(*args: str) -> subprocess.CompletedProcess:
  """`python -m experiments.run ARGS` from the repository root, output captured; prints its wall time."""
  start = time.perf_counter()
  result = subprocess.run([sys.executable, "-m", "experiments.run", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  print(f"experiments.run {' '.join(args)}: exit {result.returncode} in {time.perf_counter() - start:.1f} s")
  return result


def assert_user_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
  """Exit status 2 and a short stderr without a traceback that contains every fragment; returns it."""
  err = result.stderr
  assert result.returncode == 2, (result.returncode, err)
  assert "Traceback" not in err, err
  assert len(err.strip().splitlines()) < 6, err
  for fragment in fragments:
    assert fragment in err, (fragment, err)
  return err


def test_a_missing_config_file_is_one_paragraph(tmp_path):
  err = assert_user_error(run_cli("--config=configs/nope.py", f"--workdir={tmp_path / 'run'}"),
                          "'configs/nope.py' does not exist", "configs/quickstart.py", "--config=PATH")
  assert len(err.strip().splitlines()) == 1


def test_unknown_override_keys_are_named_with_a_suggestion(tmp_path):
  """The space-separated --config PATH form too; every unknown key at once."""
  assert_user_error(run_cli("--config", "configs/quickstart.py", "--config.ldm.tagret=lsi",
                            "--config.sampel.method=rk4", f"--workdir={tmp_path / 'run'}"),
                    "no key 'ldm.tagret'; did you mean 'ldm.target'?", "no key 'sampel.method'; did you mean "
                    "'sample.method'?", "Fix the spelling")
  assert not (tmp_path / "run").exists()


def test_bad_config_values_are_all_reported_before_any_stage(tmp_path):
  """Today ldm.target=foo fails when the ldm stage starts, after the VAE has trained."""
  workdir = tmp_path / "run"
  result = run_cli("--config=configs/quickstart.py", "--config.ldm.target=foo", "--config.sample.method=bogus",
                   "--config.schedule.kwargs.t_max=1.0", f"--workdir={workdir}")
  assert_user_error(result, "3 problems", "ldm.target='foo' is not one of 'critic_gate', 'critic_gate_prior', "
                    "'lsi', 'tweedie'", "sample.method='bogus'", "needs t_max < 1")
  assert not workdir.exists()


def test_a_cpu_device_count_that_does_not_divide_the_batch_is_one_paragraph(tmp_path):
  assert_user_error(run_cli("--config=configs/quickstart.py", "--stages=vae", "--cpu_devices=3",
                            f"--workdir={tmp_path / 'run'}"), "--cpu_devices=3", "do not divide")


def _read_only_dir(tmp_path) -> str:
  if os.geteuid() == 0:  # root writes through file modes; sysfs refuses new directories to everyone
    if not os.path.isdir("/sys/kernel"):
      pytest.skip("running as root without a sysfs: no read-only directory to try")
    return "/sys/kernel/cgdiff-test-workdir"
  read_only = tmp_path / "read_only"
  read_only.mkdir(mode=0o555)
  return str(read_only / "run")


@pytest.mark.parametrize("case", ["read-only", "file in the way", "file as parent"])
def test_a_workdir_that_cannot_be_written_is_one_paragraph(tmp_path, case):
  """Raw OSError, FileExistsError and NotADirectoryError tracebacks before."""
  (tmp_path / "file").write_text("not a directory")
  workdir, reason = {"read-only": (_read_only_dir(tmp_path), "cannot be used"),
                     "file in the way": (str(tmp_path / "file"), "it is a file, not a directory"),
                     "file as parent": (str(tmp_path / "file" / "run"), "a part of its path is a file")}[case]
  assert_user_error(run_cli("--config=configs/quickstart.py", "--stages=vae", f"--workdir={workdir}"),
                    f"the workdir '{workdir}'", reason, "--workdir=DIR")


def test_a_bug_in_a_config_file_keeps_its_traceback(tmp_path):
  """Only anticipated mistakes are shortened: an error inside get_config is the author's to debug."""
  path = tmp_path / "broken.py"
  path.write_text("def get_config():\n  raise RuntimeError('a bug in the config file')\n")
  result = run_cli(f"--config={path}", f"--workdir={tmp_path / 'run'}")
  assert result.returncode not in (0, 2)
  assert "Traceback" in result.stderr and "RuntimeError: a bug in the config file" in result.stderr


def test_config_arguments_are_read_as_the_config_flag_reads_them():
  argv = ["run", "--config", "configs/toy.py", "--config.ldm.target=lsi", "--noconfig.vae.training.tensorboard",
          "-config.seed", "3", "--configx=1", "--workdir=w"]
  assert run_lib.config_arguments(argv) == ("configs/toy.py", ["ldm.target", "vae.training.tensorboard", "seed"])
  assert run_lib.config_arguments(["run", "--config=a.py:arg"]) == ("a.py:arg", [])
  assert run_lib.config_arguments(["run", "--workdir=w"]) == (None, [])


# Each enumerated choice, a bad value for it, and the registry of the module that owns the choice.
CHOICES = [
    ("data.name", "imagenet", lambda: latent_space.DATA_NAMES),
    ("schedule.name", "sigmoid", lambda: schedules.SCHEDULES),
    ("vae.kl", "none", lambda: objectives.KL_KINDS),
    ("cotrain.kl", "none", lambda: objectives.KL_KINDS),
    ("ldm.target", "foo", lambda: score_targets.names()),
    ("ldm.vae_source", "ldm", lambda: common.VAE_SOURCES),
    ("stats.vae_source", "ldm", lambda: common.VAE_SOURCES),
    ("cotrain.score_target", "critic_gate", lambda: objectives.COTRAIN_SCORE_TARGETS),
    ("sample.score_source", "vae", lambda: sampling.SCORE_SOURCES),
    ("sample.method", "bogus", lambda: samplers.METHODS),
    ("gate.granularity", "pixel", lambda: gate.GRANULARITIES),
    ("score_net.kind", "transformer", lambda: build.SCORE_NETS),
    ("vae.training.lr_schedule", "linear", lambda: state.LR_SCHEDULES),
    ("ldm.training.lr_schedule", "linear", lambda: state.LR_SCHEDULES),
    ("cotrain.training.lr_schedule", "linear", lambda: state.LR_SCHEDULES),
    ("eval.reference_split", "val", lambda: pipeline.SPLITS),
]
# Counts that must be integers >= 1 (>= 0 where the second entry says so).
COUNTS = [("sample.num_steps", 1), ("sample.num_samples", 1), ("sample.batch_size", 1), ("eval.num_samples", 2),
          ("eval.batch_size", 1), ("eval.num_reconstructions", 1), ("eval.num_reference", 0),
          ("eval.sw2_floor_draws", 1), ("eval.chunk_size", 1), ("eval.bank_seed", 0), ("seed", 0)]
COUNTS += [(f"{group}.training.{key}", 1) for group in ("vae", "ldm", "cotrain")
           for key in ("num_steps", "batch_size", "log_every", "checkpoint_every")]


def _set(config, key: str, value) -> None:
  *groups, last = key.split(".")
  node = config
  for group in groups:
    node = node[group]
  with node.ignore_type():
    node[last] = value


def test_every_config_problem_is_reported_at_once_with_the_owners_valid_values():
  config = quickstart.get_config()
  for key, bad, _ in CHOICES:
    _set(config, key, bad)
  for key, minimum in COUNTS:
    _set(config, key, minimum - 1)
  problems = validation.config_problems(config, config.stages, stages_lib.STAGES)
  # schedule.name is unknown, so its kwargs are not tried; one problem per bad key, no more.
  assert len(problems) == len(CHOICES) + len(COUNTS), "\n".join(problems)
  for key, bad, valid in CHOICES:
    expected = f"{key}={bad!r} is not one of {', '.join(map(repr, sorted(valid())))}"
    assert expected in problems, (expected, problems)
  for key, minimum in COUNTS:
    assert f"{key} must be an integer >= {minimum}, got {minimum - 1}" in problems, (key, problems)
  with pytest.raises(validation.UserError, match=f"the config has {len(problems)} problems"):
    run_lib.run_stages(config, "/nonexistent/never-created")


@pytest.mark.parametrize("key, registry", [("sample.method", (samplers, "METHODS")),
                                           ("ldm.target", (score_targets, "TARGETS")),
                                           ("score_net.kind", (build, "SCORE_NETS"))])
def test_choices_are_read_from_the_owning_module_not_a_copy(monkeypatch, key, registry):
  """A name the owner registers is valid at once; one it drops is invalid at once."""
  module, name = registry
  config = quickstart.get_config()
  _set(config, key, "newly_registered")
  assert any(key in p for p in validation.config_problems(config, config.stages, stages_lib.STAGES))
  owned = getattr(module, name)
  extended = ({**owned, "newly_registered": None} if isinstance(owned, dict) else owned + ("newly_registered",))
  monkeypatch.setattr(module, name, extended)
  assert validation.config_problems(config, config.stages, stages_lib.STAGES) == []


@pytest.mark.parametrize("kwargs, match", [({"t_min": 1e-3, "t_max": 1.0}, "needs t_max < 1"),
                                           ({"c": -1.0}, "offset c must be >= 0"),
                                           ({"t_maxx": 0.9}, "unexpected keyword argument 't_maxx'")])
def test_the_schedule_is_built_from_the_config(kwargs, match):
  config = quickstart.get_config()
  config.schedule.kwargs = kwargs
  (problem,) = validation.config_problems(config, config.stages, stages_lib.STAGES)
  assert problem.startswith("schedule 'cosine' with schedule.kwargs:") and match in problem, problem


def test_stages_and_their_config_groups():
  config = quickstart.get_config()
  problems = validation.config_problems(config, ("vae", "trian", "exact_field"), stages_lib.STAGES)
  assert problems == [f"stage='trian' is not one of {', '.join(map(repr, sorted(stages_lib.STAGES)))}",
                      "stage 'exact_field' needs the config group 'exact_field', which the config lacks"]


def test_unknown_data_kwargs_are_named():
  config = quickstart.get_config()
  config.data.kwargs = {"num_images": 8, "chanels": 1}
  assert validation.config_problems(config, config.stages, stages_lib.STAGES) == [
      "data.kwargs has chanels, which data 'synthetic' does not take (it takes num_images, channels, seed)"]
