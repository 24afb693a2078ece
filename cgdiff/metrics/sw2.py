"""Sliced Wasserstein-2 distance between two sample sets (MATH.md section 7)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

Array = jax.Array


def projection_bank(key: Array, dim: int, num_projections: int) -> Array:
  """`num_projections` random unit directions in R^dim, [L, dim]: a fixed bank for a fixed key."""
  directions = jax.random.normal(key, (num_projections, dim))
  return directions / jnp.linalg.norm(directions, axis=-1, keepdims=True)


def sliced_wasserstein2(x: Array, y: Array, directions: Array) -> Array:
  """Squared SW2: the mean over directions w of mean_n (sort(x w)_n - sort(y w)_n)^2.

  x, y: [N, ...] with the same N and the same trailing shape (flattened to D); directions: [L, D].
  Returns a scalar; its square root is the SW2 distance.
  """
  if jnp.shape(x) != jnp.shape(y):
    raise ValueError(f"x and y must have the same shape (N, ...), got {jnp.shape(x)} and {jnp.shape(y)}.")
  n = jnp.shape(x)[0]
  dim = math.prod(jnp.shape(x)[1:])
  if jnp.shape(directions)[-1] != dim:
    raise ValueError(f"directions must have shape (L, {dim}), got {jnp.shape(directions)}.")
  px = jnp.sort(jnp.reshape(x, (n, dim)) @ directions.T, axis=0)  # [N, L]
  py = jnp.sort(jnp.reshape(y, (n, dim)) @ directions.T, axis=0)
  return jnp.mean((px - py) ** 2)
