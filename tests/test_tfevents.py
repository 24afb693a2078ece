"""TensorBoard event files written by cgdiff.train.tfevents, read back by an independent reader
(tensorboardX's protobuf classes and CRC), and a training process that does not import torch."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import textwrap

import pytest

from cgdiff.train import tfevents, writers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_records(path: str) -> list[bytes]:
  """The data of every TFRecord in `path`, with both CRCs checked by tensorboardX's implementation."""
  from tensorboardX import crc32c as reference_crc  # pylint: disable=g-import-not-at-top

  def masked(data):
    crc = reference_crc.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF

  with open(path, "rb") as f:
    data = f.read()
  out, pos = [], 0
  while pos < len(data):
    header = data[pos:pos + 8]
    (length,) = struct.unpack("<Q", header)
    assert struct.unpack("<I", data[pos + 8:pos + 12])[0] == masked(header)
    body = data[pos + 12:pos + 12 + length]
    assert struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])[0] == masked(body)
    out.append(body)
    pos += 16 + length
  return out


def test_crc32c_of_the_standard_check_string():
  # The check value of CRC-32C (RFC 3720, appendix B.4).
  assert tfevents.crc32c(b"123456789") == 0xE3069283
  assert tfevents.crc32c(b"") == 0


def test_event_file_decodes_with_tensorflows_event_proto(tmp_path):
  pytest.importorskip("tensorboardX")
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  writer = writers.TensorBoardWriter(str(tmp_path), purge_step=7)
  writer.write_scalars(7, {"loss": 0.25, "grad_norm": 3.5})
  writer.write_scalars(300, {"loss": -1.0e-3})
  writer.close()
  (name,) = os.listdir(tmp_path)
  assert name.startswith("events.out.tfevents.")
  events = [event_pb2.Event.FromString(r) for r in read_records(str(tmp_path / name))]
  assert events[0].file_version == "brain.Event:2"
  assert events[1].step == 7 and events[1].session_log.status == event_pb2.SessionLog.START
  scalars = [(e.step, v.tag, v.simple_value) for e in events[2:] for v in e.summary.value]
  assert scalars == [(7, "loss", 0.25), (7, "grad_norm", 3.5), (300, "loss", pytest.approx(-1e-3))]
  assert all(e.wall_time > 1.7e9 for e in events)


def test_a_training_process_does_not_import_torch(tmp_path):
  """tensorboardX imports torch whenever it is installed; a training run of experiments.run (the 2-D
  toy's tiny variant, with TensorBoard on) must not."""
  script = textwrap.dedent("""
      import os, sys
      from configs import toy
      from experiments import run
      config = toy.get_config("tiny")
      config.ldm.training.tensorboard = True
      run.run_stages(config, sys.argv[1])
      assert any(n.startswith("events.out.tfevents") for n in os.listdir(os.path.join(sys.argv[1], "ldm")))
      print(sorted(m for m in sys.modules if m == "torch" or m.startswith(("torch.", "tensorboardX"))))
  """)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.strip().splitlines()[-1] == "[]"
