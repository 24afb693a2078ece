"""Every figure of cgdiff.plots writes a PNG of the expected size from small inputs."""

from __future__ import annotations

import matplotlib.image
import numpy as np
import pytest

from cgdiff import plots

rng = np.random.default_rng(0)


def _check_png(path: str, min_pixels: int = 200 * 150) -> None:
  """A readable PNG with a picture of at least `min_pixels` that is not one flat colour."""
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  image = matplotlib.image.imread(path)
  assert image.shape[0] * image.shape[1] >= min_pixels
  assert image.std() > 0.01


def test_target_variances_and_2d_samples(tmp_path):
  log_snr = np.linspace(-5, 5, 6)
  _check_png(plots.plot_target_variances(log_snr, {"tweedie": np.ones(6), "lsi": np.full(6, 0.5)},
                                         str(tmp_path / "v.png"), gate=np.linspace(0, 1, 6)))
  _check_png(plots.plot_samples_2d(rng.normal(size=(64, 2)), {"a": rng.normal(size=(64, 2))},
                                   str(tmp_path / "s.png")))


def test_image_grid_tiles_in_row_major_order(tmp_path):
  images = np.linspace(-1, 1, 4)[:, None, None, None] * np.ones((4, 2, 3, 1))
  grid = plots.image_grid(images, nrow=2)
  assert grid.shape == (2 * 3 + 1, 2 * 4 + 1, 1) and grid.dtype == np.uint8
  assert grid[1, 1, 0] == 0 and grid[1, 5, 0] == 85 and grid[4, 1, 0] == 170 and grid[4, 5, 0] == 255
  _check_png(plots.plot_image_grid(rng.uniform(-1, 1, size=(64, 8, 8, 3)), str(tmp_path / "g.png"),
                                   title="grid"), min_pixels=100 * 100)


def test_latent_pca_histograms(tmp_path):
  real = rng.normal(size=(500, 2))
  _check_png(plots.plot_latent_pca(real, {"model": real * 1.5}, str(tmp_path / "p.png"),
                                   explained=np.array([0.3, 0.2])))


def test_gate_heatmaps(tmp_path):
  times = np.linspace(0.01, 0.99, 8)
  gate = np.clip(times[:, None, None, None, None] + rng.normal(0, 0.1, size=(8, 16, 4, 4, 3)), 0, 1)
  _check_png(plots.plot_gate(times, gate, str(tmp_path / "gate.png")))


def test_target_profile(tmp_path):
  times = np.linspace(0.01, 0.99, 8)
  profile = {"excess_tweedie": 1 - times, "excess_csem": np.exp(5 * times), "residual_lsi": 0.5 + 0 * times,
             "residual_tweedie": 1.5 - times}
  _check_png(plots.plot_target_profile(times, profile, str(tmp_path / "t.png"), title="x"))


def test_training_curves(tmp_path):
  logs = {"vae": [{"step": s, "loss": 1.0 / s, "kl": 0.1} for s in range(1, 6)],
          "ldm": [{"step": s, "loss": 2.0 / s, "gate_mean": 0.5} for s in range(1, 6)]}
  _check_png(plots.plot_training_curves(logs, str(tmp_path / "c.png")))
  with pytest.raises(ValueError, match="none of the metrics"):
    plots.plot_training_curves({"vae": [{"step": 1, "other": 1.0}]}, str(tmp_path / "x.png"))
