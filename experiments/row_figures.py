"""Figures across the Fashion-MNIST rows, from their committed `diagnose` records.

    python -m experiments.row_figures                 # experiments/results/fmnist/figures/*.png
    python -m experiments.row_figures RESULTS_DIR     # the same figures of another program's results

gates_by_row.png: the learned gates of the critic-gate rows against the oracle gate g* and 001's prior
gate g_p, and every row's critic against the diffused Gaussian fit's score (cgdiff.plots.plot_gates_by_model):
the measurement of whether 001's prior-CSEM row falls into its zero-loss state (MATH.md errata 4), with the
rows that cannot as its scale. Each row's reference Gaussian is the one its `diagnose` record names.
samples_by_row.png: every row's sample grid of one seed, side by side.
"""

from __future__ import annotations

import glob
import os
import sys
import textwrap

import matplotlib.image
import numpy as np

from cgdiff import plots
from experiments import fmnist_records, fmnist_rows, fmnist_tables


def gates_by_row(results: str = fmnist_records.FMNIST_RESULTS) -> str:
  """Writes <results>/figures/gates_by_row.png from the rows' diagnose records; returns its path.

  Raises:
    FileNotFoundError: no row under `results` has a diagnose record.
    ValueError: the records were made at different times, splits or numbers of posteriors.
  """
  records = fmnist_records.fmnist_records(results, stage="diagnose")
  if not records:
    raise FileNotFoundError(f"no diagnose record under {results}/<row>/s<seed>/diagnose/.")
  fmnist_tables.diagnose_settings(records)
  first = next(iter(records.values()))[0]
  profiles = {fmnist_rows.BY_NAME[row].label: [{k: np.asarray(v) for k, v in r["gates"].items()} for r in seeds]
              for row, seeds in records.items()}
  seeds = sorted({len(s) for s in records.values()})
  title = (f"{first['num_posteriors']} {first['split']} posteriors of each row's VAE; "
           f"{'/'.join(map(str, seeds))} seed(s) per row, one line each")
  return plots.plot_gates_by_model(np.asarray(first["log_snr"]), profiles,
                                   os.path.join(results, "figures", "gates_by_row.png"), title=title)


def samples_by_row(results: str = fmnist_records.FMNIST_RESULTS, seed: int = 0) -> str:
  """Writes <results>/figures/samples_by_row.png: each row's committed sample grid at `seed` (the eval
  stage's 64 samples at its sampler, *_grid.png), one panel per row in table order; returns its path.

  Raises:
    FileNotFoundError: no row has a grid at `seed`.
    ValueError: a grid is not a readable PNG.
  """
  panels = {}
  for row in fmnist_rows.ROWS:
    grids = sorted(glob.glob(os.path.join(results, row.name, f"s{seed}", "*_grid.png")))
    if grids:
      try:
        panels[textwrap.fill(row.label, 40)] = matplotlib.image.imread(grids[0])
      except (OSError, SyntaxError, ValueError) as error:  # PIL reports a malformed PNG as SyntaxError
        raise ValueError(f"{grids[0]}: not a readable PNG ({error}).") from error
  if not panels:
    raise FileNotFoundError(f"no sample grid under {results}/<row>/s{seed}/.")
  return plots.plot_image_panels(panels, os.path.join(results, "figures", "samples_by_row.png"),
                                 title=f"seed {seed}: 64 samples of each row, from the same prior noise")


FIGURES = (gates_by_row, samples_by_row)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    sys.exit("usage: python -m experiments.row_figures [RESULTS_DIR]")
  errors = []
  for figure in FIGURES:
    try:
      print(figure(*argv))
    except (FileNotFoundError, ValueError) as error:
      errors.append(str(error))
  if errors:
    sys.exit("\n".join(errors))


if __name__ == "__main__":
  main(sys.argv[1:])
