"""Metric writers with clu's MetricWriter interface (write_scalars, flush, close).

clu's own writers import TensorFlow, which this project does not depend on; these write the same
scalars to the log (stdout), to metrics.jsonl (read back by the plots) and to TensorBoard event files
through tensorboardX.
"""

from __future__ import annotations

import json
import os
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


class JsonlWriter:
  """Scalars appended to `path` as one JSON object per line: {"step": ..., name: value, ...}."""

  def __init__(self, path: str):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    self._file = open(path, "a")

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    self._file.write(json.dumps({"step": int(step), **{k: float(v) for k, v in scalars.items()}}) + "\n")

  def flush(self) -> None:
    self._file.flush()

  def close(self) -> None:
    self._file.close()


class TensorBoardWriter:
  """Scalars to TensorBoard event files in `logdir` (tensorboardX)."""

  def __init__(self, logdir: str):
    import tensorboardX  # pylint: disable=g-import-not-at-top
    self._writer = tensorboardX.SummaryWriter(logdir)

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    for name, value in scalars.items():
      self._writer.add_scalar(name, float(value), int(step))

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


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


def create_writer(logdir: str, *, tensorboard: bool = True, quiet: bool = False) -> MultiWriter:
  """Log + metrics.jsonl + TensorBoard in `logdir` (quiet: files only, e.g. on non-lead hosts)."""
  writers = [] if quiet else [LoggingWriter()]
  writers.append(JsonlWriter(os.path.join(logdir, "metrics.jsonl")))
  if tensorboard:
    writers.append(TensorBoardWriter(logdir))
  return MultiWriter(writers)
