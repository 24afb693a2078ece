"""Run records (cgdiff.records): the hashes that name arrays and parameters in a record."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from cgdiff import records


def test_array_sha256_names_the_values_dtype_and_shape():
  x = np.arange(6, dtype=np.float32)
  assert records.array_sha256(x) == records.array_sha256(x.copy())
  assert records.array_sha256(x) == records.array_sha256(jnp.asarray(x))  # a device array: the same bytes
  assert records.array_sha256(x) != records.array_sha256(x.reshape(2, 3))
  assert records.array_sha256(x) != records.array_sha256(x.astype(np.float64))
  assert records.array_sha256(x[::2]) == records.array_sha256(np.ascontiguousarray(x[::2]))


def test_tree_sha256_names_the_leaves_and_their_paths():
  params = {"dense": {"kernel": np.ones((2, 3), np.float32), "bias": np.zeros(3, np.float32)}}
  same = {"dense": {"bias": np.zeros(3, np.float32), "kernel": np.ones((2, 3), np.float32)}}
  assert records.tree_sha256(params) == records.tree_sha256(same)  # dict order does not matter
  changed = {"dense": {"kernel": np.ones((2, 3), np.float32), "bias": np.full(3, 1e-7, np.float32)}}
  renamed = {"dense": {"kernel": np.ones((2, 3), np.float32), "b": np.zeros(3, np.float32)}}
  assert len({records.tree_sha256(t) for t in (params, changed, renamed)}) == 3
