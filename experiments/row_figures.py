"""Figures across the Fashion-MNIST rows, from their committed `diagnose` records.

    python -m experiments.row_figures                 # experiments/results/fmnist/figures/gates_by_row.png
    python -m experiments.row_figures RESULTS_DIR     # the same figure of another program's results

gates_by_row.png: the learned gates of the critic-gate rows against the oracle gate g* and 001's prior
gate g_p, and every row's critic against the diffused Gaussian fit's score (cgdiff.plots.plot_gates_by_model):
the measurement of whether 001's prior-CSEM row falls into its zero-loss state (MATH.md errata 4), with the
rows that cannot as its scale. Each row's reference Gaussian is the one its `diagnose` record names.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from cgdiff import plots
from experiments import fmnist_rows, fmnist_tables


def gates_by_row(results: str = fmnist_tables.FMNIST_RESULTS) -> str:
  """Writes <results>/figures/gates_by_row.png from the rows' diagnose records; returns its path.

  Raises:
    FileNotFoundError: no row under `results` has a diagnose record.
    ValueError: the records were made at different times, splits or numbers of posteriors.
  """
  records = fmnist_tables.fmnist_records(results, stage="diagnose")
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


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    sys.exit("usage: python -m experiments.row_figures [RESULTS_DIR]")
  try:
    print(gates_by_row(*argv))
  except (FileNotFoundError, ValueError) as error:
    sys.exit(str(error))


if __name__ == "__main__":
  main(sys.argv[1:])
