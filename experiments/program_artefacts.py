"""What the results driver keeps of a finished run: its small artefacts copied to the results directory,
the figures across rows and the README's tables written again, and the commit of exactly those files.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import time
from typing import Sequence

from cgdiff.train import writers
from experiments import common, program_runs, row_figures, tables

# Inception's per-batch progress lines: 9 in 10 lines of an evaluation's log, and the chunk lines that
# follow them say the same with their times; left out of the committed copy of run.log.
PROGRESS_LINE = re.compile(r"\] Inception: [^:]*: \d+/\d+ images$")


def copy_artefacts(run: program_runs.Run) -> list[str]:
  """Copies the run's small artefacts (eval records and figures, the diagnose stage's record and figures
  in diagnose/, training logs and stage configs, run.log without Inception's progress lines) to its
  results_dir (the shared VAE's to its committed_vae_dir, where they are not there yet); returns the paths
  written."""
  if run.results_dir is None:
    raise ValueError(f"{run.name}: a run without a results directory has nowhere to copy its artefacts.")
  written = []

  def copy(source: str, target_dir: str) -> None:
    os.makedirs(target_dir, exist_ok=True)
    target = os.path.join(target_dir, os.path.basename(source))
    shutil.copyfile(source, target)
    written.append(target)

  target = run.results_dir
  # The row's log (every attempt, the shared VAE's training where this row trained it): where the
  # records' wall times can be checked against the times of each logged step and chunk.
  with open(os.path.join(run.workdir, "run.log"), errors="replace") as source:
    kept = [line for line in source if not PROGRESS_LINE.search(line.rstrip("\n"))]
  os.makedirs(target, exist_ok=True)
  with open(os.path.join(target, "run.log"), "w") as log:
    log.writelines(kept)
  written.append(os.path.join(target, "run.log"))
  for path in sorted(glob.glob(os.path.join(run.workdir, "eval", "*.json"))
                     + glob.glob(os.path.join(run.workdir, "eval", "*.png"))):
    copy(path, target)
  for path in sorted(glob.glob(os.path.join(run.workdir, "diagnose", "*"))):
    copy(path, os.path.join(target, "diagnose"))
  for home in run.homes():
    for name in (writers.METRICS_FILE, common.STAGE_SETTINGS):
      for stage, path in program_runs.stage_files(home.workdir, name).items():
        # A shared VAE's committed files stay those of its first training: the runs committed on it cite
        # them, and one trained again on a new machine is the same VAE (program_runs.vae_differs checks),
        # whose training the row's own run.log keeps.
        if not (home.shared and os.path.exists(os.path.join(home.committed, stage, name))):
          copy(path, os.path.join(home.committed, stage))
  return written


def commit(paths: Sequence[str], message: str, attempts: int = 5) -> None:
  """Commits exactly `paths` (other staged or modified files stay as they are); retries while another
  git process holds the index lock."""
  repo = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=os.path.dirname(os.path.abspath(paths[0])),
                        capture_output=True, text=True, check=True).stdout.strip()
  for attempt in range(attempts):
    add = subprocess.run(["git", "-C", repo, "add", "--", *map(os.path.abspath, paths)],
                         capture_output=True, text=True)
    result = subprocess.run(["git", "-C", repo, "commit", "-q", "-m", message, "--",
                             *map(os.path.abspath, paths)], capture_output=True, text=True)
    if add.returncode == 0 and result.returncode == 0:
      return
    if "index.lock" not in (add.stderr + result.stderr) or attempt == attempts - 1:
      program_runs.log(f"commit failed: {add.stderr.strip()} {result.stderr.strip()}")
      return
    time.sleep(5)


def update_readme(readme: str, results: str) -> list[str]:
  """Writes the results' tables into `readme` (experiments.tables --readme) unless it has uncommitted
  changes, which a commit of it would take along; returns [readme] where it changed."""
  directory = os.path.dirname(os.path.abspath(readme))
  if subprocess.run(["git", "-C", directory, "diff", "--quiet", "--", os.path.abspath(readme)]).returncode != 0:
    program_runs.log(f"{readme} has uncommitted changes: its tables are not updated "
        f"(python -m experiments.tables --readme {readme} {results})")
    return []
  try:
    return [readme] if tables.write_readme(readme, results) else []
  except ValueError as error:  # the run's own artefacts are committed all the same
    program_runs.log(f"README tables not updated: {error}")
    return []


def update_figures(results: str) -> list[str]:
  """Draws the figures across rows again from the committed records (experiments.row_figures); returns
  their paths, or [] (logged) where the records cannot make one yet."""
  paths = []
  for figure in row_figures.FIGURES:
    try:
      paths.append(figure(results))
    except (FileNotFoundError, ValueError) as error:
      program_runs.log(f"figures across rows: {figure.__name__} not drawn: {error}")
  return paths
