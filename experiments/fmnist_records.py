"""The committed records of the Fashion-MNIST program (experiments/results/fmnist/<row>/s<seed>/): where
they lie, one run's record of a stage, and every row's records by seed.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any

from experiments import fmnist_rows

FMNIST_RESULTS = "experiments/results/fmnist"


def find_record(directory: str, stage: str) -> tuple[str, dict[str, Any]] | None:
  """(path, record) of the one record of `stage` among `directory`'s JSON files, None if there is none. A
  run and seed has one eval record (the protocol's sampler and N; the sampler study writes elsewhere) and
  one diagnose record: several are an error, not extra seeds."""
  found = []
  for path in sorted(glob.glob(os.path.join(directory, "*.json"))):
    with open(path) as f:
      record = json.load(f)
    if record.get("stage") == stage:
      found.append((path, record))
  if len(found) > 1:
    raise ValueError(f"{directory}: {len(found)} {stage} records ({[os.path.basename(p) for p, _ in found]}); "
                     "a run and seed has one.")
  return found[0] if found else None


def seed_dirs(results: str, row: str) -> list[tuple[int, str]]:
  """(seed, <results>/<row>/s<seed>) of every committed seed directory of `row`, by seed."""
  found = [(int(path.rsplit("s", 1)[1]), path) for path in glob.glob(os.path.join(results, row, "s*"))]
  return sorted(found)


def fmnist_records(results: str = FMNIST_RESULTS, stage: str = "eval") -> dict[str, list[dict[str, Any]]]:
  """{row: [record of each seed, by seed]} of the committed Fashion-MNIST records of `stage`: "eval"
  (<row>/s<seed>/*.json) or "diagnose" (<row>/s<seed>/diagnose/*.json)."""
  out = {}
  for row in fmnist_rows.ROWS:
    seeds = []
    for _, seed_dir in seed_dirs(results, row.name):
      found = find_record(os.path.join(seed_dir, "diagnose") if stage == "diagnose" else seed_dir, stage)
      if found is not None:
        seeds.append(found[1])
    if seeds:
      out[row.name] = seeds
  return out
