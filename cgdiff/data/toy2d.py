"""The 2-D fractal-tree Gaussian mixture of 004 section C, as a Gaussian field with an exact score.

004 builds a thin tree: a trunk split recursively into two perturbed child branches, each branch
segment carrying 8 Gaussian components, 6 splits (127 segments, 1016 components), weights scaled
down at each split, coordinates normalised to mean 0 and standard deviation 0.5 per axis. cgdiff's
fields have diagonal covariances (VAE posteriors), so each component here is a small isotropic
Gaussian whose width follows its branch (and becomes axis-aligned anisotropic after the per-axis
normalisation), not 004's rotated anisotropic ones. The score is `targets.gaussian_field_score`.
"""

from __future__ import annotations

import numpy as np


def fractal_tree_field(depth: int = 6, components_per_branch: int = 8, seed: int = 0,
                       data_std: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Returns (means [K, 2], logvars [K, 2], log_weights [K]) with K = (2^(depth+1) - 1) * components_per_branch.

  Each child branch turns by +-(0.45 +- 0.1) rad from its parent, is 0.7 (+- 10%) as long, and gets
  half its parent's weight per component; component standard deviation is 8% of the branch length.
  """
  if depth < 0 or components_per_branch < 1:
    raise ValueError(f"need depth >= 0 and components_per_branch >= 1, got {depth}, {components_per_branch}.")
  rng = np.random.default_rng(seed)
  means, stds, weights = [], [], []
  # (start point, direction angle, length, weight per component, level)
  branches = [(np.zeros(2), np.pi / 2, 1.0, 1.0, 0)]
  frac = (np.arange(components_per_branch) + 0.5) / components_per_branch
  while branches:
    start, angle, length, weight, level = branches.pop()
    direction = np.array([np.cos(angle), np.sin(angle)])
    means.append(start + np.outer(frac, direction) * length)
    stds.append(np.full(components_per_branch, 0.08 * length))
    weights.append(np.full(components_per_branch, weight))
    if level < depth:
      end = start + direction * length
      for side in (-1.0, 1.0):
        turn = side * (0.45 + 0.1 * rng.uniform(-1, 1))
        scale = 0.7 * (1 + 0.1 * rng.uniform(-1, 1))
        branches.append((end, angle + turn, length * scale, 0.5 * weight, level + 1))
  means = np.concatenate(means)
  var = np.repeat(np.concatenate(stds)[:, None] ** 2, 2, axis=1)
  w = np.concatenate(weights)
  w = w / w.sum()
  # Normalise the mixture to mean 0 and per-axis standard deviation data_std.
  centre = w @ means
  spread = np.sqrt(w @ (var + means**2) - centre**2)
  scale = data_std / spread
  return (means - centre) * scale, np.log(var * scale**2), np.log(w)
