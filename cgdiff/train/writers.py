"""Metric writers with clu's MetricWriter interface (write_scalars, flush, close).

clu's own writers import TensorFlow, which this project does not depend on; these write the same
scalars to the log (stdout), to metrics.jsonl (read back by the plots) and to TensorBoard event files
(cgdiff.train.tfevents, which keeps tensorboardX and with it torch out of training processes).

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

from cgdiff.train import tfevents

# A training stage's scalars, one JSON record per logged step, in its log directory.
METRICS_FILE = "metrics.jsonl"


class LoggingWriter:
  """Scalars to the absl log, one line per write."""

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    logging.info("[%d] %s", step, ", ".join(f"{k}={v:.5g}" for k, v in sorted(scalars.items())))

  def flush(self) -> None:
    pass

  def close(self) -> None:
    pass


def _complete_record(line: str) -> dict | None:
  """The record a metrics.jsonl line holds; None for a line cut short (by a kill, or still being
  written while another process reads the file)."""
  try:
    record = json.loads(line) if line.endswith("\n") else None
  except ValueError:
    return None
  return record if isinstance(record, dict) and isinstance(record.get("step"), int) else None


def lines_through(lines: list[str], last_step: int) -> list[str]:
  """The complete records among `lines` whose step is <= last_step: what a run resuming from last_step
  keeps (a line cut short by a kill is dropped too)."""
  return [line for line in lines if (record := _complete_record(line)) and record["step"] <= last_step]


def read_metrics(path: str) -> list[dict]:
  """The records of a metrics.jsonl that JsonlWriter wrote, in file order ([{"step": ..., name: value}]);
  the one reader of these files (plots, reports, costs). A line cut short is left out, so a file that a
  training run is writing can be read."""
  with open(path) as f:
    return [record for line in f if (record := _complete_record(line))]


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
  """Scalars to a TensorBoard event file in `logdir` (cgdiff.train.tfevents: no torch in the process),
  written through at every flush, so a kill loses nothing that was flushed.

  purge_step: TensorBoard drops the events of earlier files from this step on (a resumed run's
  repeated steps): the session-start event that SummaryWriter(purge_step=...) writes.
  """

  def __init__(self, logdir: str, purge_step: int | None = None):
    self._events = tfevents.EventFileWriter(logdir)
    if purge_step is not None:
      self._events.write(tfevents.event(wall_time=time.time(), step=purge_step, session_start=True))

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    # One event per scalar, as tensorboardX writes them.
    for name, value in scalars.items():
      self._events.write(tfevents.event(wall_time=time.time(), step=int(step), scalars={name: value}))

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
  writers.append(JsonlWriter(os.path.join(logdir, METRICS_FILE), resume_step))
  if tensorboard:
    writers.append(TensorBoardWriter(logdir, None if resume_step is None else resume_step + 1))
  return MultiWriter(writers)
