"""Matplotlib figures written as PNG files (headless: the Agg backend)."""

from __future__ import annotations

import os
from typing import Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import numpy as np  # noqa: E402


_LOG_SNR_LABEL = "log-SNR  log(alpha^2 / sigma^2)   (noise <-  -> data)"


def _save(fig, path: str) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=120, bbox_inches="tight")
  plt.close(fig)
  return path


def plot_target_variances(log_snr, variances: Mapping[str, np.ndarray], path: str,
                          gate=None, title: str = "",
                          ylabel: str = "mean element-wise Var(target | z_t)", floor: float | None = None) -> str:
  """Conditional variance of each score target given z_t against log-SNR (log scale); optionally the mean
  oracle gate E[g*] on a second axis. floor: the lowest value shown (below it, float round-off of a
  variance that is 0). Returns the path."""
  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  for name, values in variances.items():
    ax.plot(log_snr, values, label=name, marker=".", color=_TARGET_COLOURS.get(name))
  ax.set_yscale("log")
  if floor is not None:
    ax.set_ylim(bottom=floor)
  ax.set_xlabel(_LOG_SNR_LABEL)
  ax.set_ylabel(ylabel)
  if gate is not None:
    ax2 = ax.twinx()
    ax2.plot(log_snr, gate, color="gray", linestyle="--", label="E[g*] (oracle gate)")
    ax2.set_ylim(-0.02, 1.02)
    ax2.set_ylabel("E[g*]")
    ax2.legend(loc="lower left")
  ax.legend(loc="upper right")
  ax.set_title(title)
  return _save(fig, path)


def plot_samples_2d(reference: np.ndarray, samples: Mapping[str, np.ndarray], path: str,
                    lim: float = 2.0) -> str:
  """Scatter plots of 2-D samples, the reference first, one panel each. Returns the path."""
  panels = {"exact": reference, **samples}
  cols = min(4, len(panels))
  rows = -(-len(panels) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
  for ax, (name, points) in zip(axes.ravel(), panels.items()):
    points = np.asarray(points)
    ax.scatter(points[:, 0], points[:, 1], s=0.5, alpha=0.5)
    ax.set_title(name, fontsize=9)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
  for ax in axes.ravel()[len(panels):]:
    ax.axis("off")
  return _save(fig, path)


def image_grid(images: np.ndarray, nrow: int = 8) -> np.ndarray:
  """Tiles images [N, H, W, C] in [-1, 1] into one uint8 [nrow*H + gaps, ncol*W + gaps, C] picture."""
  images = np.asarray(images)
  n, h, w, c = images.shape
  ncol = -(-n // nrow)
  grid = np.full((nrow * (h + 1) + 1, ncol * (w + 1) + 1, c), 255, np.uint8)
  pixels = np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)
  for i in range(n):
    r, col = divmod(i, ncol)
    grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + col * (w + 1):1 + col * (w + 1) + w] = pixels[i]
  return grid


def plot_image_grid(images: np.ndarray, path: str, nrow: int = 8, title: str = "", ncol: int | None = None) -> str:
  """An nrow x ncol grid (default square, 001 section 6.4) of the first images [N, H, W, C] in [-1, 1] as a
  PNG, row by row."""
  grid = image_grid(images[: nrow * (ncol or nrow)], nrow)
  fig, ax = plt.subplots(figsize=(grid.shape[1] / 40, grid.shape[0] / 40 + (0.3 if title else 0)))
  ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray" if grid.shape[-1] == 1 else None,
            interpolation="nearest")
  ax.axis("off")
  if title:
    ax.set_title(title, fontsize=8)
  return _save(fig, path)


def _histogram_range(points: np.ndarray, quantile: float = 0.005) -> list[list[float]]:
  """Axis limits holding all but the outer `quantile` of `points` [N, 2] on each side, 10% margin."""
  lo, hi = np.quantile(points, [quantile, 1 - quantile], axis=0)
  pad = 0.1 * (hi - lo)
  return [[lo[0] - pad[0], hi[0] + pad[0]], [lo[1] - pad[1], hi[1] + pad[1]]]


def plot_latent_pca(real: np.ndarray, samples: Mapping[str, np.ndarray], path: str, *,
                    explained: np.ndarray | None = None, bins: int | None = None) -> str:
  """2-D histograms of PCA-projected latents (001 section 6.3): the real aggregated posterior first,
  then each model's samples with the real density's contours on top. real, samples: [N, 2]
  projections (cgdiff.metrics.projections); explained: the components' variance ratios. Returns the path."""
  real = np.asarray(real)
  if bins is None:  # about 4 points per bin on average for a uniform spread, within [10, 60]
    bins = int(np.clip(np.sqrt(len(real) / 4), 10, 60))
  extent = _histogram_range(real)
  real_hist, xedges, yedges = np.histogram2d(real[:, 0], real[:, 1], bins=bins, range=extent, density=True)
  centres = (0.5 * (xedges[1:] + xedges[:-1]), 0.5 * (yedges[1:] + yedges[:-1]))
  panels = {"real latents  z0 ~ q(z0)": real, **samples}
  fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.5), squeeze=False)
  vmax = real_hist.max()
  for ax, (name, points) in zip(axes[0], panels.items()):
    points = np.asarray(points)
    hist, _, _ = np.histogram2d(points[:, 0], points[:, 1], bins=(xedges, yedges), density=True)
    ax.imshow(hist.T, origin="lower", extent=[*extent[0], *extent[1]], aspect="auto", cmap="magma",
              vmin=0, vmax=vmax)
    if points is not real:
      ax.contour(*centres, real_hist.T, levels=4, colors="cyan", linewidths=0.6)
    outside = np.mean((points[:, 0] < extent[0][0]) | (points[:, 0] > extent[0][1])
                      | (points[:, 1] < extent[1][0]) | (points[:, 1] > extent[1][1]))
    ax.set_title(f"{name}\n(N={len(points)}, {100 * outside:.1f}% outside)", fontsize=8)
    ax.set_xlabel("PC 1" + (f" ({100 * explained[0]:.0f}% var)" if explained is not None else ""), fontsize=8)
    ax.set_ylabel("PC 2" + (f" ({100 * explained[1]:.0f}% var)" if explained is not None else ""), fontsize=8)
    ax.tick_params(labelsize=7)
  return _save(fig, path)


def plot_gate(times: np.ndarray, gate: np.ndarray, path: str, bins: int = 40) -> str:
  """The learned gate across time (001 section 6.5): a heatmap of the distribution of g per t with
  E[g] on top, a heatmap of E[g] per latent channel and t, and the histogram of all g.
  times: [T]; gate: [T, B, ..., C] values in [0, 1] (broadcast to the latent shape). Returns the path."""
  times, gate = np.asarray(times), np.asarray(gate)
  per_time = gate.reshape(gate.shape[0], -1)
  edges = np.linspace(0.0, 1.0, bins + 1)
  density = np.stack([np.histogram(row, bins=edges, density=True)[0] for row in per_time])  # [T, bins]
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), gridspec_kw={"width_ratios": [1.3, 1.3, 1]})
  extent = [times[0], times[-1], 0.0, 1.0]
  image = axes[0].imshow(np.log1p(density.T), origin="lower", extent=extent, aspect="auto", cmap="viridis")
  axes[0].plot(times, per_time.mean(axis=1), color="white", label="E[g]")
  axes[0].set_xlabel("t")
  axes[0].set_ylabel("g  (0: CSEM, 1: Tweedie)")
  axes[0].set_title("distribution of g(z_t, t) per t, log(1 + density)", fontsize=9)
  axes[0].legend(loc="lower right", fontsize=8)
  fig.colorbar(image, ax=axes[0])
  per_channel = gate.reshape(gate.shape[0], -1, gate.shape[-1]).mean(axis=1)  # [T, C]
  image = axes[1].imshow(per_channel.T, origin="lower", aspect="auto", cmap="viridis", vmin=0, vmax=1,
                         extent=[times[0], times[-1], -0.5, gate.shape[-1] - 0.5])
  axes[1].set_xlabel("t")
  axes[1].set_ylabel("latent channel")
  axes[1].set_title("E[g] per channel and t", fontsize=9)
  fig.colorbar(image, ax=axes[1])
  axes[2].hist(per_time.ravel(), bins=edges, color="gray")
  axes[2].set_yscale("log")
  axes[2].set_xlabel("g")
  axes[2].set_title(f"all g ({per_time.size} values over {len(times)} times)", fontsize=9)
  fig.tight_layout()
  return _save(fig, path)


_TARGET_COLOURS = {"tweedie": "C0", "csem": "C1", "lsi": "C2", "blend": "C3"}


def plot_gate_references(log_snr: np.ndarray, profile: Mapping[str, np.ndarray], path: str,
                         title: str = "") -> str:
  """cgdiff.diagnostics.gate_profile against log-SNR (its times' log(alpha^2 / sigma^2)). Left: the learned
  gate's mean and 10-90% band against the oracle gate g* (mean and band) and the prior gate g_p; right: the
  critic's mean squared distance to LSI and to the diffused Gaussian fit's score, with LSI's own distance to
  that score (log scale), and the gate's mean distances |g - g*|, |g - g_p| on a second axis. Returns the
  path."""
  x = np.asarray(log_snr)
  fig, axes = plt.subplots(1, 2, figsize=(12, 4))
  ax = axes[0]
  for name, colour, label in (("gate", "C3", "learned g"), ("oracle_gate", "C2", "oracle g*")):
    if name in profile:
      ax.plot(x, profile[name], color=colour, label=f"{label} (mean)")
      if f"{name}_q10" in profile:
        ax.fill_between(x, profile[f"{name}_q10"], profile[f"{name}_q90"], color=colour, alpha=0.2,
                        label=f"{label} 10-90%")
  if "prior_gate" in profile:
    ax.plot(x, profile["prior_gate"], color="k", linestyle="--", label="prior gate g_p")
  ax.set_ylim(-0.02, 1.02)
  ax.set_xlabel(_LOG_SNR_LABEL)
  ax.set_ylabel("g  (0: CSEM, 1: Tweedie)")
  ax.legend(fontsize=8)
  ax.set_title("gates across time", fontsize=9)
  ax = axes[1]
  for name, colour, label in (("critic_vs_lsi", "C2", "critic vs LSI target"),
                              ("critic_vs_gaussian", "C4", "critic vs Gaussian fit's score"),
                              ("lsi_vs_gaussian", "gray", "LSI target vs Gaussian fit's score")):
    if name in profile:
      ax.plot(x, profile[name], color=colour, label=label, marker=".")
  ax.set_yscale("log")
  ax.set_xlabel(_LOG_SNR_LABEL)
  ax.set_ylabel("mean squared distance (eps units)", fontsize=8)
  ax.legend(fontsize=8, loc="upper left")
  if "gate_to_oracle" in profile:
    ax2 = ax.twinx()
    ax2.plot(x, profile["gate_to_oracle"], color="C3", linestyle=":", label="mean |g - g*|")
    if "gate_to_prior" in profile:
      ax2.plot(x, profile["gate_to_prior"], color="k", linestyle=":", label="mean |g - g_p|")
    ax2.set_ylim(0.0, 1.0)
    ax2.set_ylabel("gate distance")
    ax2.legend(fontsize=8, loc="upper right")
  ax.set_title("the critic against LSI and the Gaussian fit (MATH.md errata 4)", fontsize=9)
  if title:
    fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  return _save(fig, path)


def plot_gates_by_model(log_snr: np.ndarray, profiles: Mapping[str, list[Mapping[str, np.ndarray]]], path: str,
                        title: str = "") -> str:
  """Several models' cgdiff.diagnostics.gate_profile on one figure, one colour per model and one line per
  seed (profiles: {label: [profile of each seed]}, all at the same times, log_snr [T]). Left: the learned
  gate's mean of every gated model against the oracle gate g* (mean and 10-90% band) and the prior gate
  g_p, both of the first gated profile holding them (the models that share a VAE share its g*); right:
  every model's critic against the diffused Gaussian fit's score (mean squared eps distance, log scale),
  the first profile's LSI target against that score for scale: ~0 is 001's zero-loss state (MATH.md
  errata 4). Returns the path."""
  x = np.asarray(log_snr)
  fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2), sharex=True)
  gated = [seeds for seeds in profiles.values() if "gate" in seeds[0]]
  if gated:
    reference = gated[0][0]
    left.plot(x, reference["oracle_gate"], color="k", label="oracle g* (mean)")
    left.fill_between(x, reference["oracle_gate_q10"], reference["oracle_gate_q90"], color="k", alpha=0.12,
                    label="oracle g* 10-90%")
    prior = next((seeds[0]["prior_gate"] for seeds in gated if "prior_gate" in seeds[0]), None)
    if prior is not None:
      left.plot(x, prior, color="k", linestyle="--", label="prior gate g_p")
  for colour, (label, seeds) in enumerate(profiles.items()):
    for i, profile in enumerate(seeds):
      common = {"color": f"C{colour}", "label": label if i == 0 else None}
      if "gate" in profile:
        left.plot(x, profile["gate"], **common)
      if "critic_vs_gaussian" in profile:
        right.plot(x, profile["critic_vs_gaussian"], marker=".", **common)
  first = next(iter(profiles.values()))[0]
  if "lsi_vs_gaussian" in first:
    right.plot(x, first["lsi_vs_gaussian"], color="gray", linestyle="--", label="LSI target (for scale)")
  left.set_ylim(-0.02, 1.02)
  left.set_ylabel("g  (0: CSEM, 1: Tweedie)")
  left.set_title("learned gates (mean over posteriors and elements)" if gated else "no gated model", fontsize=9)
  right.set_yscale("log")
  right.set_ylabel("mean squared distance to the Gaussian fit's score (eps units)", fontsize=8)
  right.set_title("the critics against the diffused Gaussian fit", fontsize=9)
  for ax in (left, right):
    ax.set_xlabel(_LOG_SNR_LABEL)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=7)
  if title:
    fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  return _save(fig, path)


def plot_image_panels(images: Mapping[str, np.ndarray], path: str, ncols: int = 4, title: str = "") -> str:
  """Pictures side by side, each under its label (images: {label: [H, W] or [H, W, C] array, as read from
  a PNG}), ncols to a row. Returns the path."""
  if not images:
    raise ValueError("no images to draw.")
  nrows = -(-len(images) // ncols)
  fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 3.5 * nrows), squeeze=False)
  for ax in axes.flat:
    ax.axis("off")
  for ax, (label, image) in zip(axes.flat, images.items()):
    ax.imshow(image, cmap="gray" if np.ndim(image) == 2 else None, interpolation="nearest")
    ax.set_title(label, fontsize=8)
  if title:
    fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  return _save(fig, path)


def plot_sampler_study(rows: list[Mapping], path: str, title: str = "") -> str:
  """FID and SW2^2 against NFE (log scale), one series per sampler. rows: dicts with sampler, nfe, fid
  (or None), sw2_squared and sw2_squared_floor_mean (drawn as the SW2 panel's floor), and optionally
  sw2_squared_trimmed (dashed, same colour). Returns the path."""
  fig, axes = plt.subplots(1, 2, figsize=(13, 3.8))
  samplers = list(dict.fromkeys(r["sampler"] for r in rows))
  for i, name in enumerate(samplers):
    mine = sorted((r for r in rows if r["sampler"] == name), key=lambda r: r["nfe"])
    nfe = [r["nfe"] for r in mine]
    for ax, key in ((axes[0], "fid"), (axes[1], "sw2_squared")):
      values = [r[key] for r in mine]
      if all(v is not None for v in values):
        ax.plot(nfe, values, marker="o", color=f"C{i}", label=name)
    trimmed = [r.get("sw2_squared_trimmed") for r in mine]
    if all(v is not None for v in trimmed):
      axes[1].plot(nfe, trimmed, marker=".", linestyle="--", color=f"C{i}")
  axes[1].axhline(rows[0]["sw2_squared_floor_mean"], color="k", linestyle="-", label="real vs real (mean)")
  if rows[0].get("sw2_squared_trimmed_floor_mean") is not None:
    axes[1].axhline(rows[0]["sw2_squared_trimmed_floor_mean"], color="k", linestyle="--",
                    label="real vs real, trimmed (dashed: trimmed)")
  # Ticks at the NFEs measured, in plain numbers; one legend, outside the panels (the points fill them).
  nfes = sorted({r["nfe"] for r in rows})
  for ax, label in ((axes[0], "FID"), (axes[1], "SW2^2 of the latents")):
    ax.set_xscale("log")
    ax.set_xticks(nfes, [str(n) for n in nfes])
    ax.minorticks_off()
    ax.set_xlabel("NFE")
    ax.set_ylabel(label)
  axes[1].set_yscale("log")
  axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
  if title:
    fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  return _save(fig, path)


def plot_target_profile(times: np.ndarray, profile: Mapping[str, np.ndarray], path: str,
                        title: str = "") -> str:
  """Score targets on real posteriors across time (cgdiff.diagnostics.posterior_target_profile):
  left, the mean squared residual of each target against the trained network (= Var(target | z_t)
  + the network's error, common to all targets); right, each target's excess variance over LSI.
  Returns the path."""
  times = np.asarray(times)
  fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
  for prefix, ax, label in (("residual_", axes[0], "mean (eps_target - eps_net)^2"),
                            ("excess_", axes[1], "mean (eps_target - eps_LSI)^2 = E Var(target | z_t, x)")):
    for key, values in profile.items():
      if key.startswith(prefix):
        target = key[len(prefix):]
        ax.plot(times, np.asarray(values), marker=".", label=target, color=_TARGET_COLOURS.get(target))
    ax.set_yscale("log")
    ax.set_xlabel("t")
    ax.set_ylabel(label, fontsize=8)
    ax.legend(fontsize=8)
  axes[0].set_title("residual against the trained network", fontsize=9)
  axes[1].set_title("excess over the Rao-Blackwellised LSI target", fontsize=9)
  if title:
    fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  return _save(fig, path)


def plot_training_curves(logs: Mapping[str, list[dict]], path: str,
                         keys: tuple[str, ...] = ("loss", "score_loss", "reconstruction", "kl",
                                                  "target_excess_over_lsi", "gate_mean")) -> str:
  """Training curves from the stages' metrics.jsonl records ({stage: [{"step": ..., key: ...}, ...]}):
  one panel per metric in `keys` that some stage logged, one line per stage. Returns the path."""
  present = [k for k in keys if any(k in row for rows in logs.values() for row in rows)]
  if not present:
    raise ValueError(f"none of the metrics {keys} appears in the logs of {sorted(logs)}.")
  cols = min(3, len(present))
  rows = -(-len(present) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
  for ax, key in zip(axes.ravel(), present):
    positive = True
    for colour, (stage, records_) in enumerate(logs.items()):
      points = [(r["step"], r[key]) for r in records_ if key in r and np.isfinite(r[key])]
      if points:
        ax.plot(*zip(*points), marker=".", label=stage, color=f"C{colour}")  # one colour per stage
        positive = positive and min(v for _, v in points) > 0
    if positive and key != "gate_mean":  # losses span decades; the gate lives in [0, 1]
      ax.set_yscale("log")
    ax.set_title(key, fontsize=9)
    ax.set_xlabel("step")
    ax.legend(fontsize=8)
  for ax in axes.ravel()[len(present):]:
    ax.axis("off")
  fig.tight_layout()
  return _save(fig, path)
