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
  """tensorboardX imports torch whenever it is installed; the training loop's writers must not."""
  script = textwrap.dedent("""
      import sys
      import jax
      import jax.numpy as jnp
      from cgdiff import objectives, schedules
      from cgdiff.models import MLPScoreNet
      from cgdiff.train import TrainLoopConfig, train
      import ml_collections, numpy as np
      net = MLPScoreNet(hidden=8, num_layers=1)
      data = (np.zeros((16, 2), np.float32), np.full((16, 2), -1.0, np.float32))
      loss_fn = lambda p, b, k: objectives.diffusion_loss(p, b, k, eps_fn=net.apply,
                                                           schedule=schedules.cosine(), target="tweedie")
      optimizer = ml_collections.ConfigDict(dict(learning_rate=1e-2, warmup_steps=0, lr_schedule="constant",
                                                 b1=0.9, b2=0.999, weight_decay=0.0, grad_clip=1.0))
      train(loss_fn, {"score": net.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)), jnp.zeros((1,)))},
            lambda step: data, optimizer=optimizer,
            loop=TrainLoopConfig(num_steps=2, log_every=1, checkpoint_every=2, ema_decay=0.9, tensorboard=True),
            workdir=sys.argv[1], key=jax.random.PRNGKey(1))
      assert any(n.startswith("events.out.tfevents") for n in __import__("os").listdir(sys.argv[1]))
      print(sorted(m for m in sys.modules if m == "torch" or m.startswith(("torch.", "tensorboardX"))))
  """)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.strip().splitlines()[-1] == "[]"
