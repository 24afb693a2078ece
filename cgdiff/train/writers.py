"""Metric writers with clu's MetricWriter interface (write_scalars, flush, close).

clu's own writers import TensorFlow, which this project does not depend on; these write the same
scalars to the log (stdout), to metrics.jsonl (read back by the plots) and to TensorBoard event files
through tensorboardX.

A resumed run: the training loop flushes every writer at every log step, so what a killed run logged
is on disk, and opens them with `resume_step` S, the step it resumes from. The killed run may have
logged steps after S (after its last checkpoint), which the resumed run logs again: metrics.jsonl drops
its records of steps > S (so it holds every logged step once) and TensorBoard is told to purge the
old events from step S + 1 on.
"""

from __future__ import annotations

import json
import os
import time
from typing import Mapping

from absl import logging


class LoggingWriter:
  """Scalars to the absl log, one line per write."""

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    logging.info("[%d] %s", step, ", ".join(f"{k}={v:.5g}" for k, v in sorted(scalars.items())))

  def flush(self) -> None:
    pass

  def close(self) -> None:
    pass


def lines_through(lines: list[str], last_step: int) -> list[str]:
  """The complete records (newline-terminated JSON objects) among `lines` whose step is <= last_step:
  what a run resuming from last_step keeps (a line cut short by a kill is dropped too)."""
  kept = []
  for line in lines:
    try:
      record = json.loads(line) if line.endswith("\n") else None
    except ValueError:
      record = None
    if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= last_step:
      kept.append(line)
  return kept


class JsonlWriter:
  """Scalars appended to `path` as one JSON object per line: {"step": ..., name: value, ...}.

  resume_step: a run resuming from this step first drops the records of later steps (lines_through).
  """

  def __init__(self, path: str, resume_step: int | None = None):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if resume_step is not None and os.path.exists(path):
      with open(path) as f:
        lines = f.readlines()
      kept = lines_through(lines, resume_step)
      if kept != lines:
        with open(path + ".tmp", "w") as f:
          f.writelines(kept)
        os.replace(path + ".tmp", path)  # atomic: a kill now leaves the old file or the new one
    self._file = open(path, "a")

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    self._file.write(json.dumps({"step": int(step), **{k: float(v) for k, v in scalars.items()}}) + "\n")

  def flush(self) -> None:
    self._file.flush()

  def close(self) -> None:
    self._file.close()


class TensorBoardWriter:
  """Scalars to a TensorBoard event file in `logdir`, written synchronously: tensorboardX's
  SummaryWriter hands events to a thread through a queue, and its flush() does not wait for the queue,
  so a kill lost what it had not written (a killed run's event file had 0 bytes).

  purge_step: TensorBoard drops the events of earlier files from this step on (a resumed run's
  repeated steps), as SummaryWriter(purge_step=...) asks it to.
  """

  def __init__(self, logdir: str, purge_step: int | None = None):
    # pylint: disable=g-import-not-at-top
    from tensorboardX import event_file_writer, summary
    from tensorboardX.proto import event_pb2
    self._event, self._summary = event_pb2, summary
    os.makedirs(logdir, exist_ok=True)
    # The file is named by the second it was opened in: the process id keeps a run resumed within that
    # second from overwriting the killed run's file.
    self._events = event_file_writer.EventsWriter(os.path.join(logdir, "events"), f".{os.getpid()}")
    if purge_step is not None:
      self._events.write_event(event_pb2.Event(
          wall_time=time.time(), step=purge_step,
          session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    for name, value in scalars.items():
      self._events.write_event(self._event.Event(wall_time=time.time(), step=int(step),
                                                 summary=self._summary.scalar(name, float(value))))

  def flush(self) -> None:
    self._events.flush()

  def close(self) -> None:
    self._events.close()


class MultiWriter:
  def __init__(self, writers):
    self._writers = list(writers)

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    for w in self._writers:
      w.write_scalars(step, scalars)

  def flush(self) -> None:
    for w in self._writers:
      w.flush()

  def close(self) -> None:
    for w in self._writers:
      w.close()


def create_writer(logdir: str, *, tensorboard: bool = True, quiet: bool = False,
                  resume_step: int | None = None) -> MultiWriter:
  """Log + metrics.jsonl + TensorBoard in `logdir` (quiet: files only, e.g. on non-lead hosts), for a
  run that starts at step `resume_step` (0: from scratch; see the module docstring), or None to keep
  whatever was logged before."""
  writers = [] if quiet else [LoggingWriter()]
  writers.append(JsonlWriter(os.path.join(logdir, "metrics.jsonl"), resume_step))
  if tensorboard:
    writers.append(TensorBoardWriter(logdir, None if resume_step is None else resume_step + 1))
  return MultiWriter(writers)
