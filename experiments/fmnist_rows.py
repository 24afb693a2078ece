"""The rows of the Fashion-MNIST results table: which config each row runs, what it shares, and 002's
numbers for the rows 002 has (002 Table 1: RK4 x 10, FID and recon FID against the test set, latent SW2).

Read by the program driver (experiments/program.py) and the table printer (experiments/tables.py).
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

# Where the two-stage rows' shared VAE is trained: a workdir of its own, holding only the `vae` stage.
TWO_STAGE_VAE = "two_stage_vae"


# The eval record's metrics that 002's Table 1 has, in the order of Row.paper.
PAPER_METRICS = ("recon_fid", "fid", "sw2_squared")


@dataclasses.dataclass(frozen=True)
class Row:
  """One row. name: its id in paths (runs/fmnist/<name>/s<seed>); config: configs/<file>.py; label: the
  table's method column; vae_home: the row name (or TWO_STAGE_VAE) whose workdir of the same seed holds
  this row's autoencoder stage, None for its own; paper: 002's (recon FID, FID, SW2), None if 002 has
  no such row."""
  name: str
  config: str
  label: str
  vae_home: str | None = None
  paper: tuple[float, float, float] | None = None

  def get_config(self) -> Any:
    """The row's ml_collections.ConfigDict, as `experiments.run --config=<config>` loads it before the
    command line's overrides."""
    return importlib.import_module(self.config.removesuffix(".py").replace("/", ".")).get_config()


ROWS = (
    Row("c", "configs/fmnist_c_two_stage_tweedie.py", "(c) two-stage Tweedie LDM (reg. KL)", TWO_STAGE_VAE,
        (6.51, 13.45, 0.002627)),
    Row("lsi", "configs/fmnist_two_stage_lsi.py", "two-stage LSI LDM (reg. KL)", TWO_STAGE_VAE,
        (6.30, 12.18, 0.001598)),
    Row("cg_scalar", "configs/fmnist_cg_scalar.py", "two-stage critic-gate, posterior CSEM, scalar gate",
        TWO_STAGE_VAE),
    Row("cg_element", "configs/fmnist_cg_element.py",
        "two-stage critic-gate, posterior CSEM, per-element gate", TWO_STAGE_VAE),
    Row("cg_prior", "configs/fmnist_cg_prior.py", "two-stage critic-gate, prior CSEM (001), per-element gate",
        TWO_STAGE_VAE),
    Row("a", "configs/fmnist_a_lsi_cotrain.py", "(a) LSI co-train + modified KL", None, (9.33, 9.39, 0.000619)),
    Row("b", "configs/fmnist_b_tweedie_on_lsi_latent.py", "(b) Tweedie on LSI-shaped latent (a's VAE)", "a",
        (9.33, 9.26, 0.000871)),
    Row("d", "configs/fmnist_d_tweedie_cotrain.py", "(d) Tweedie co-train + reg. KL", None,
        (5.92, 113.12, 0.000090)),
)
BY_NAME = {row.name: row for row in ROWS}
