"""Resumable chunked arrays (cgdiff.chunks): computed once, loaded after, safe against a real SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from cgdiff import chunks

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)


def _rows(start: int, stop: int) -> np.ndarray:
  """A deterministic array whose row i is a function of i alone: [stop - start, 3]."""
  i = np.arange(start, stop, dtype=np.float64)[:, None]
  return np.sin(i * np.array([1.0, 0.5, 0.25]))


def test_chunks_are_computed_once_and_loaded_after(tmp_path):
  calls = []

  def fn(start, stop):
    calls.append((start, stop))
    return _rows(start, stop)

  store = chunks.ChunkStore(str(tmp_path))
  first = store.array("x", fn, total=10, chunk=4)
  assert calls == [(0, 4), (4, 8), (8, 10)] and (store.computed, store.loaded) == (3, 0)
  np.testing.assert_array_equal(first, _rows(0, 10))
  again = chunks.ChunkStore(str(tmp_path))
  np.testing.assert_array_equal(again.array("x", fn, total=10, chunk=4), first)
  assert len(calls) == 3 and (again.computed, again.loaded) == (0, 3)
  names = ["x_000000_000004.npy", "x_000004_000008.npy", "x_000008_000010.npy"]
  assert sorted(os.listdir(tmp_path)) == sorted(names + [name + chunks.SECONDS_SUFFIX for name in names])
  assert again.compute_seconds() > 0
  os.remove(os.path.join(tmp_path, names[1] + chunks.SECONDS_SUFFIX))
  assert again.compute_seconds() is None  # a chunk of unknown cost: no total


def test_load_reads_the_stored_chunks_only_and_names_a_missing_one(tmp_path):
  store = chunks.ChunkStore(str(tmp_path))
  store.array("x", _rows, total=10, chunk=4)
  np.testing.assert_array_equal(store.load("x", total=10, chunk=4), _rows(0, 10))
  with pytest.raises(FileNotFoundError, match=r"x_000000_000005.npy: no such chunk \(rows 0..5 of 10"):
    store.load("x", total=10, chunk=5)  # stored under another chunk size
  assert store.computed == 3  # load computed nothing


def test_settings_name_the_store_and_other_settings_are_an_error(tmp_path):
  a = chunks.ChunkStore.keyed(str(tmp_path), "run", {"n": 1, "method": "rk4"})
  b = chunks.ChunkStore.keyed(str(tmp_path), "run", {"method": "rk4", "n": 1})  # order does not matter
  c = chunks.ChunkStore.keyed(str(tmp_path), "run", {"n": 2, "method": "rk4"})
  assert a.directory == b.directory != c.directory
  with pytest.raises(ValueError, match=r"other settings \(differing in \['n'\]\)"):
    chunks.ChunkStore(a.directory, {"n": 2, "method": "rk4"})


def test_bad_chunks_are_errors(tmp_path):
  store = chunks.ChunkStore(str(tmp_path))
  with pytest.raises(ValueError, match=r"fn\(0, 4\) has shape \(3, 3\), expected 4 rows"):
    store.array("x", lambda start, stop: _rows(start, stop - 1), total=8, chunk=4)
  assert not os.listdir(tmp_path)  # nothing saved
  chunks.save_atomic(store.chunk_path("y", 0, 4), _rows(0, 2))
  with pytest.raises(ValueError, match="y_000000_000004.npy has shape"):
    store.array("y", _rows, total=4, chunk=4)
  with pytest.raises(ValueError, match="total and chunk must be >= 1"):
    store.array("z", _rows, total=4, chunk=0)


def test_a_sigkilled_computation_resumes_with_the_same_bits(tmp_path):
  """A child process computes chunks slowly and is killed (SIGKILL) once two are on disk; a second run
  computes only the missing chunks, and the array equals an uninterrupted run's bit for bit."""
  directory = tmp_path / "killed"
  child = textwrap.dedent(f"""
      import sys, time
      sys.path[:0] = [{REPO!r}, {TESTS!r}]
      from cgdiff import chunks
      from test_chunks import _rows
      def slow(start, stop):
        time.sleep(0.5)
        return _rows(start, stop)
      chunks.ChunkStore({str(directory)!r}).array("x", slow, total=40, chunk=4)
  """)
  process = subprocess.Popen([sys.executable, "-c", child])
  deadline = time.monotonic() + 120
  while len([p for p in directory.glob("x_*.npy") if ".tmp" not in p.name]) < 2:
    assert process.poll() is None, "the child finished before it was killed"
    assert time.monotonic() < deadline, "the child wrote no chunks in 120 s"
    time.sleep(0.05)
  process.send_signal(signal.SIGKILL)
  process.wait()
  saved = sorted(p.name for p in directory.glob("x_*.npy") if ".tmp" not in p.name)
  assert 2 <= len(saved) < 10
  for name in saved:  # every chunk on disk is whole (written to a temporary file, then renamed)
    start, stop = (int(v) for v in name[2:-4].split("_"))
    np.testing.assert_array_equal(np.load(directory / name), _rows(start, stop))
  calls = []
  resumed_store = chunks.ChunkStore(str(directory))
  resumed = resumed_store.array("x", lambda a, b: calls.append(a) or _rows(a, b), total=40, chunk=4)
  assert resumed_store.loaded == len(saved) and resumed_store.computed == 10 - len(saved)
  assert all(start >= 4 * len(saved) for start in calls)
  # The killed child slept 0.5 s in each chunk it saved; the resumed process computed the rest in
  # microseconds. The store's cost counts the child's chunks too.
  assert resumed_store.compute_seconds() >= 0.5 * len(saved)
  uninterrupted = chunks.ChunkStore(str(tmp_path / "whole")).array("x", _rows, total=40, chunk=4)
  assert resumed.tobytes() == uninterrupted.tobytes()
