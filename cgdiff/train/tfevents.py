"""TensorBoard event files, written without TensorFlow, tensorboardX or torch.

tensorboardX imports torch whenever torch is installed (`.[bench]`, `.[torch]`), which put torch and its
own thread pool into every training process next to XLA's. What the training loop writes is small: scalar
summaries and a session-start marker. This module encodes those few protocol-buffer messages by hand and
frames them as TFRecords, the format TensorBoard reads:

  record = u64 length | u32 masked_crc32c(length) | data | u32 masked_crc32c(data)   (little-endian)

Messages (tensorflow/core/util/event.proto, summary.proto; field number: type):
  Event       1: double wall_time, 2: int64 step, 3: string file_version, 5: Summary summary,
              7: SessionLog session_log
  Summary     1: repeated Value value;   Value 1: string tag, 2: float simple_value
  SessionLog  1: enum status (START = 1)
"""

from __future__ import annotations

import os
import socket
import struct
import time
from typing import Mapping


def _crc32c_table() -> tuple[int, ...]:
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)  # Castagnoli polynomial, reflected
    table.append(crc)
  return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli) of `data`; crc32c(b"123456789") == 0xE3069283."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
  """TFRecord's masked CRC: rotate right by 15 and add a constant (so CRCs of CRCs stay informative)."""
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(data: bytes) -> bytes:
  """One TFRecord: the framing of `data` described in the module docstring."""
  length = struct.pack("<Q", len(data))
  return length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))


def _varint(value: int) -> bytes:
  if value < 0:
    raise ValueError(f"only non-negative integers are encoded here, got {value}.")
  out = bytearray()
  while True:
    byte, value = value & 0x7F, value >> 7
    out.append(byte | (0x80 if value else 0))
    if not value:
      return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
  return _varint(field << 3 | wire_type)


def _length_delimited(field: int, payload: bytes) -> bytes:
  return _key(field, 2) + _varint(len(payload)) + payload


def event(*, wall_time: float, step: int = 0, file_version: str | None = None,
          scalars: Mapping[str, float] | None = None, session_start: bool = False) -> bytes:
  """An encoded Event with the given fields (scalars: one simple_value per tag)."""
  out = _key(1, 1) + struct.pack("<d", wall_time) + _key(2, 0) + _varint(int(step))
  if file_version is not None:
    out += _length_delimited(3, file_version.encode())
  if scalars:
    values = b"".join(_length_delimited(1, _length_delimited(1, tag.encode()) + _key(2, 5)
                                        + struct.pack("<f", float(value)))
                      for tag, value in scalars.items())
    out += _length_delimited(5, values)
  if session_start:
    out += _length_delimited(7, _key(1, 0) + _varint(1))  # SessionLog.START
  return out


class EventFileWriter:
  """Appends events to <logdir>/events.out.tfevents.<seconds>.<host>.<pid>, written through to the file
  on every flush (nothing is queued in a thread: a kill loses only what was not yet flushed).

  The process id keeps a run resumed within the same second from overwriting the killed run's file.
  """

  def __init__(self, logdir: str):
    os.makedirs(logdir, exist_ok=True)
    name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}"
    self.path = os.path.join(logdir, name)
    self._file = open(self.path, "ab")
    self._file.write(tfrecord(event(wall_time=time.time(), file_version="brain.Event:2")))

  def write(self, encoded_event: bytes) -> None:
    self._file.write(tfrecord(encoded_event))

  def flush(self) -> None:
    self._file.flush()

  def close(self) -> None:
    self._file.close()
