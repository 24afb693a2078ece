"""Orbax checkpoints of a TrainState: keep the last k, save every n steps and at the end, resume."""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp

from cgdiff.train.state import TrainState


class Checkpointer:
  """An Orbax CheckpointManager in `directory` holding unreplicated TrainStates by step."""

  def __init__(self, directory: str, *, keep: int = 3, save_every: int = 1000):
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=save_every,
                                             create=True))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, state: TrainState, *, force: bool = False) -> bool:
    """Saves `state` at its step if the interval says so (or force); True when saved."""
    step = int(jax.device_get(state.step))
    saved = self._manager.save(step, args=ocp.args.StandardSave(state), force=force)
    return bool(saved)

  def restore(self, like: TrainState, step: int | None = None) -> TrainState:
    """The state at `step` (default: latest), with the structure and dtypes of `like`."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}.")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    restored = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
    # Orbax returns optax's named tuples as plain containers: rebuild `like`'s tree structure.
    return jax.tree.unflatten(jax.tree.structure(like), jax.tree.leaves(restored))

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def restore_params(directory: str, like: TrainState, *, ema: bool = True):
  """The (EMA) parameters of the latest checkpoint in `directory`, for a later stage to use frozen."""
  checkpointer = Checkpointer(directory)
  try:
    state = checkpointer.restore(like)
  finally:
    checkpointer.close()
  return state.ema_params if ema else state.params
