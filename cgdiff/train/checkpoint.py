"""Orbax checkpoints of a TrainState, verified: each is checked against its checksums (its manifest,
cgdiff.train.checksums) before it is used.

Layout: <directory>/<step>/ is an Orbax step directory; once its save has completed (Orbax writes
asynchronously: `save` waits for it), its manifest is written into it (checksums.write_manifest).

`restore` uses the newest intact checkpoint whose arrays, as read, match their checksums; each newer one
is skipped with a warning that names it and why (a file differs, is missing or unreadable; no manifest,
because the run was killed between the save and its checksums; the arrays read differ). None left:
CheckpointError naming the directory and each step's problem. A checkpoint whose arrays do not have the
shapes of the model is a different model, not a damaged one: CheckpointError says which arrays differ.

Retention is done here, not by Orbax (whose max_to_keep would delete the last intact checkpoint when
newer ones are damaged): a checkpoint is deleted only when `keep` newer ones are intact. A step that
must be saved again (after a fallback to an older checkpoint) moves the damaged one to
<directory>/set_aside/, so nothing is deleted unread.

A step without a manifest is one of two things, told apart by MARKER, a file that the first save in a
directory writes there: in a marked directory, a save that did not finish (the run was killed between
Orbax's save and the manifest): not a checkpoint, skipped with a warning, and when nothing else is
there the run starts from scratch, as if that save had never begun. In an unmarked directory, a
checkpoint written by cgdiff before checkpoints were verified: unverified; when no intact checkpoint
is left the error says how to vouch for them: `python -m cgdiff.train.checkpoint --trust DIR` writes
manifests of their files as they are now (marked "trusted"; with no array checksums, so a shape change
shows as Orbax's error of that restore) and marks the directory.
"""

from __future__ import annotations

import os
import shutil
import sys

import jax
import orbax.checkpoint as ocp
from absl import logging

from cgdiff.train import checksums
from cgdiff.train.state import TrainState

MARKER = "cgdiff_checksummed"
SET_ASIDE = "set_aside"


class CheckpointError(RuntimeError):
  """A checkpoint directory that cannot give the state asked for: nothing intact, or another model's.
  The message names the directory, what is wrong with each checkpoint, and what to do."""


def _touch(path: str) -> None:
  with open(path, "a"):
    pass


def steps_to_delete(steps: list[int], intact: set[int], keep: int | None) -> list[int]:
  """The steps that retention deletes, oldest first: every step older than the `keep` newest intact
  ones (none while fewer than `keep` are intact, so the last intact checkpoint is never among them)."""
  if keep is None:
    return []
  kept_intact = sorted(intact.intersection(steps), reverse=True)[:keep]
  if len(kept_intact) < keep:
    return []
  return sorted(s for s in steps if s < kept_intact[-1])


class Checkpointer:
  """Verified TrainState checkpoints by step in `directory` (an Orbax CheckpointManager underneath)."""

  def __init__(self, directory: str, *, keep: int | None = 3, save_every: int = 1000):
    """keep: how many intact checkpoints retention keeps (None: all); save_every: the save interval."""
    if (keep is not None and keep < 1) or save_every < 1:
      raise ValueError(f"keep must be >= 1 (or None: keep all) and save_every >= 1, got {keep} and "
                       f"{save_every}.")
    self.directory = os.path.abspath(directory)
    self.keep, self.save_every = keep, save_every
    # max_to_keep=None: retention is ours (steps_to_delete), so that it counts only intact checkpoints.
    self._manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=None, create=True))

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def all_steps(self) -> list[int]:
    """Every checkpoint step, intact or not, oldest first (checksums.checkpoint_steps)."""
    return checksums.checkpoint_steps(self.directory)

  def latest_step(self) -> int | None:
    """The newest checkpoint step, intact or not (see checksums.latest_intact_step)."""
    steps = self.all_steps()
    return steps[-1] if steps else None

  def latest_intact_step(self) -> int | None:
    return checksums.latest_intact_step(self.directory)

  def _has_manifest(self, step: int) -> bool:
    return checksums.has_manifest(self.step_dir(step))

  def unfinished_steps(self) -> list[int]:
    """The steps of saves that did not finish: without a manifest, in a directory whose every save
    writes one (MARKER). They are not checkpoints."""
    if not os.path.exists(os.path.join(self.directory, MARKER)):
      return []
    return [s for s in self.all_steps() if not self._has_manifest(s)]

  def restorable_steps(self) -> list[int]:
    """The checkpoint steps restore tries, intact or not (all but the unfinished saves), oldest first."""
    unfinished = set(self.unfinished_steps())
    return [s for s in self.all_steps() if s not in unfinished]

  def save(self, state: TrainState, *, force: bool = False) -> bool:
    """Saves `state` at its step when the step is a multiple of save_every (or force), waits for the
    save, writes its manifest, then applies retention; True when saved."""
    step = int(jax.device_get(state.step))
    if not force and step % self.save_every:
      return False
    if step in self.all_steps():
      self._set_aside(step)
    marker = os.path.join(self.directory, MARKER)
    if not os.path.exists(marker) and all(map(self._has_manifest, self.all_steps())):
      _touch(marker)  # from now on, a step without a manifest is an unfinished save
    self._manager.save(step, args=ocp.args.StandardSave(state), force=True)
    self._manager.wait_until_finished()
    if jax.process_index() == 0:
      checksums.write_manifest(self.step_dir(step), checksums.array_records(state))
      steps = self.all_steps()
      intact = set()  # the newest intact steps, as many as retention keeps (checked newest first)
      for candidate in reversed(steps if self.keep is not None else []):
        if len(intact) == self.keep:
          break
        if checksums.file_problem(self.step_dir(candidate)) is None:
          intact.add(candidate)
      doomed = steps_to_delete(steps, intact, self.keep)
      for old in doomed:
        shutil.rmtree(self.step_dir(old))
      if doomed:
        self._manager.reload()
    return True

  def _set_aside(self, step: int) -> None:
    """Moves the checkpoint of `step` (damaged: a resumed run falls back past it and saves the step
    again) to <directory>/set_aside/, where Orbax does not see it."""
    target = os.path.join(self.directory, SET_ASIDE, str(step))
    suffix = 0
    while os.path.exists(target + (f".{suffix}" if suffix else "")):
      suffix += 1
    target += f".{suffix}" if suffix else ""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    logging.warning("checkpoint step %d in %s is saved again; the old one (%s) is moved to %s", step,
                    self.directory, checksums.file_problem(self.step_dir(step)) or "intact", target)
    os.replace(self.step_dir(step), target)
    self._manager.reload()

  def resume(self, like: TrainState) -> TrainState:
    """The state a run goes on from: restore(like), or `like` itself when there is no checkpoint (none
    at all, or only unfinished saves)."""
    if self.restorable_steps():
      return self.restore(like)
    self._warn_unfinished("there is no checkpoint: training starts from scratch")
    return like

  def _warn_unfinished(self, consequence: str) -> None:
    for unfinished in self.unfinished_steps():
      logging.warning("step %d in %s is skipped: its save did not finish (no %s: the run was killed while "
                      "saving); %s.", unfinished, self.directory, checksums.MANIFEST, consequence)

  def restore(self, like: TrainState, step: int | None = None) -> TrainState:
    """The state of the newest intact checkpoint (or of `step` only), with the structure and dtypes of
    `like`; each newer checkpoint that is not intact, and each unfinished save, is skipped with a warning.

    Raises:
      CheckpointError: no checkpoint intact (or `step` not), or one whose arrays are not `like`'s.
    """
    self._warn_unfinished("older checkpoints are tried")
    candidates = list(reversed(self.restorable_steps())) if step is None else [step]
    problems = {}
    for candidate in candidates:
      problem = checksums.file_problem(self.step_dir(candidate))
      if problem is None:
        manifest = checksums.read_manifest(self.step_dir(candidate))
        state, problem = self._read_verified(candidate, like, checksums.saved_arrays(manifest))
        if problem is None:
          return state
      logging.warning("checkpoint step %d in %s is skipped: %s.", candidate, self.directory, problem)
      problems[candidate] = problem
    unverified = not any(map(self._has_manifest, problems))
    raise CheckpointError(no_intact_message(self.directory, problems, unverified=unverified))

  def _read_verified(self, step: int, like: TrainState,
                     saved: list[checksums.ArrayRecord] | None) -> tuple[TrainState | None, str | None]:
    """(state, None) when step's arrays read back as saved, else (None, why)."""
    if saved is not None:
      differences = checksums.shape_differences(saved, like)
      if differences:
        raise CheckpointError(
            f"checkpoint step {step} in {self.directory} holds another model than the one being "
            f"restored: {'; '.join(differences[:3])}"
            f"{f' (and {len(differences) - 3} more)' if len(differences) > 3 else ''}. The workdir was "
            f"made with another configuration: use a new workdir for this one, or the configuration "
            f"that made it.")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    try:
      restored = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as error:  # pylint: disable=broad-except
      # Any failure to read an intact-looking step is a reason to fall back, named in the warning.
      first_line = (str(error).strip().splitlines() or [""])[0][:300]
      return None, f"unreadable ({type(error).__name__}: {first_line})"
    # Orbax returns optax's named tuples as plain containers: rebuild `like`'s tree structure.
    state = jax.tree.unflatten(jax.tree.structure(like), jax.tree.leaves(restored))
    if saved is not None:
      read = {r.path: r for r in checksums.array_records(state)}
      bad = [s.path for s in saved if read.get(s.path) != s]
      if bad:
        return None, f"array checksum mismatch in {', '.join(bad[:3])}"
    return state, None

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def no_intact_message(directory: str, problems: dict[int, str], *, unverified: bool) -> str:
  """The CheckpointError text for a directory none of whose checkpoints in `problems` is usable
  (unverified: none of them has a manifest)."""
  if not problems:
    return f"no checkpoint in {directory}."
  listed = "; ".join(f"step {step}: {problem}" for step, problem in problems.items())
  fresh = "remove the directory (or use a new workdir) to train from scratch, or put back a copy of it"
  if unverified:
    return (f"no verified checkpoint in {directory}: {listed}. If these checkpoints were written before "
            f"cgdiff verified checkpoints and you trust them, run `python -m cgdiff.train.checkpoint "
            f"--trust {directory}` to record their checksums as they are now; otherwise {fresh}.")
  return f"no intact checkpoint in {directory}: {listed}. To go on, {fresh}."


def restore_params(directory: str, like: TrainState, *, ema: bool = True):
  """The (EMA) parameters of the newest intact checkpoint in `directory`, for a later stage to use
  frozen (verified as `Checkpointer.restore` verifies)."""
  checkpointer = Checkpointer(directory, keep=None)
  try:
    state = checkpointer.restore(like)
  finally:
    checkpointer.close()
  return state.ema_params if ema else state.params


def trust(directory: str) -> list[int]:
  """Writes a "trusted" manifest (files only) into every step of `directory` that has none; returns
  those steps. For checkpoints written before cgdiff verified them, by a user who vouches for them."""
  checkpointer = Checkpointer(directory, keep=None)
  try:
    steps = [s for s in checkpointer.all_steps() if not checksums.has_manifest(checkpointer.step_dir(s))]
    for step in steps:
      checksums.write_manifest(checkpointer.step_dir(step), None, trusted=True)
    _touch(os.path.join(checkpointer.directory, MARKER))
  finally:
    checkpointer.close()
  return steps


def main(argv: list[str]) -> int:
  """`python -m cgdiff.train.checkpoint --trust DIR`: see `trust`."""
  if len(argv) != 2 or argv[0] != "--trust" or not os.path.isdir(argv[1]):
    print("usage: python -m cgdiff.train.checkpoint --trust CHECKPOINT_DIR (an existing directory, e.g. "
          "WORKDIR/vae/checkpoints)", file=sys.stderr)
    return 2
  steps = trust(argv[1])
  print(f"recorded checksums of step(s) {steps} in {os.path.abspath(argv[1])}" if steps else
        f"every checkpoint in {os.path.abspath(argv[1])} has checksums already")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
