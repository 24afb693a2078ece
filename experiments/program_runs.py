"""The results program's runs: every row of the Fashion-MNIST table (experiments/fmnist_rows.py) at each
seed, where each lives, which are done, and which rows the finished seeds call a third seed for.

Read by the driver (experiments/program.py), its ETA (experiments/program_costs.py), the sampler study
and far_latents; nothing here starts a process.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import sys
from typing import Iterable, Sequence

from cgdiff.train import writers
from experiments import claims, common, fmnist_records, fmnist_rows

DEFAULT_ROOT = "runs/fmnist"  # where the program's workdirs go
FIRST_SEEDS = (0, 1)
THIRD_SEED = 2
ALL_SEEDS = FIRST_SEEDS + (THIRD_SEED,)


def log(message: str) -> None:
  """A time-stamped line on stdout: the driver's, the sampler study's and far_latents' progress."""
  stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
  print(f"[{stamp}] {message}", flush=True)


def stage_files(directory: str | None, name: str = writers.METRICS_FILE) -> dict[str, str]:
  """{training stage: <directory>/<stage>/<name>} for each training stage that has that file."""
  paths = {stage: os.path.join(directory, stage, name) for stage in common.TRAINING_STAGES} if directory else {}
  return {stage: path for stage, path in paths.items() if os.path.exists(path)}


@dataclasses.dataclass(frozen=True)
class Home:
  """A directory a run's training stages live in, on this machine (workdir) and committed: the run's
  own, or that of the VAE it shares with other rows (`label` "<vae_home>/", "" for its own)."""
  label: str
  workdir: str
  committed: str | None

  @property
  def shared(self) -> bool:
    return bool(self.label)


@dataclasses.dataclass(frozen=True)
class Run:
  """One row at one seed, and where it lives."""
  row: fmnist_rows.Row
  seed: int
  root: str
  # Where the driver copies (and commits) finished runs' artefacts: <results>/<row>/s<seed>/.
  results: str | None = None

  @property
  def name(self) -> str:
    return f"{self.row.name}/s{self.seed}"

  @property
  def workdir(self) -> str:
    return os.path.join(self.root, self.row.name, f"s{self.seed}")

  @property
  def vae_workdir(self) -> str | None:
    home = self.row.vae_home
    return None if home is None else os.path.join(self.root, home, f"s{self.seed}")

  def command(self, overrides: Sequence[str] = ()) -> list[str]:
    command = [sys.executable, "-m", "experiments.run", f"--config={self.row.config}",
               f"--workdir={self.workdir}", f"--config.seed={self.seed}"]
    if self.vae_workdir:
      command.append(f"--config.vae_workdir={self.vae_workdir}")
    return command + list(overrides)

  @property
  def results_dir(self) -> str | None:
    return None if self.results is None else os.path.join(self.results, self.row.name, f"s{self.seed}")

  @property
  def committed_vae_dir(self) -> str | None:
    """Where the committed artefacts of the VAE this run shares lie (None: its own, or no results)."""
    if self.results is None or self.row.vae_home is None:
      return None
    return os.path.join(self.results, self.row.vae_home, f"s{self.seed}")

  def homes(self) -> list[Home]:
    """Its own stages' home, then the shared VAE's (if any)."""
    homes = [Home("", self.workdir, self.results_dir)]
    if self.vae_workdir:
      homes.append(Home(f"{self.row.vae_home}/", self.vae_workdir, self.committed_vae_dir))
    return homes

  def finished_here(self) -> bool:
    """Finished in this machine's workdir (which holds its checkpoints)."""
    return os.path.exists(os.path.join(self.workdir, "done.json"))

  def done(self) -> bool:
    """Finished here, or on an earlier machine whose workdirs are gone: the committed eval record under
    `results` is what a run is for, so a run that has one is not run again. Unless it was evaluated here
    and the driver stopped before it copied and committed the artefacts (done.json comes last): then
    its command runs again (every stage resumes from what is saved) and the driver finishes the job."""
    if self.finished_here():
      return True
    return self.committed_record() is not None and eval_record(self.workdir) is None

  def committed_record(self) -> dict | None:
    if self.results_dir is None:
      return None
    found = fmnist_records.find_record(self.results_dir, "eval")
    return found and found[1]

  def record(self) -> dict | None:
    """The eval record of a done run: its workdir's, else the committed copy."""
    return (eval_record(self.workdir) if self.finished_here() else None) or self.committed_record()


def runs_for(seeds: Iterable[int], root: str, rows: Sequence[fmnist_rows.Row] = fmnist_rows.ROWS,
             results: str | None = None) -> list[Run]:
  """Seed by seed, every row in table order (row (b) after (a), whose VAE it uses)."""
  return [Run(row, seed, root, results) for seed in seeds for row in rows]


def eval_record(workdir: str) -> dict | None:
  """The eval record of a finished run (its workdir's eval/*.json written by the `eval` stage)."""
  found = fmnist_records.find_record(os.path.join(workdir, "eval"), "eval")
  return found and found[1]


def vae_trained_again(run: Run, runs: Sequence[Run]) -> bool:
  """Whether `run` shares its VAE with a run that finished on an earlier machine while that VAE's
  workdir is gone here, so that the row's command trains it again (same seed and code: the same VAE on
  one machine, not on every machine, which vae_differs checks; README Reliability)."""
  if run.vae_workdir is None or any(os.path.isdir(os.path.join(run.vae_workdir, stage, "checkpoints"))
                                    for stage in common.TRAINING_STAGES):
    return False
  return any(shares_vae(run, other) and other.done() and not other.finished_here() for other in runs)


def shares_vae(run: Run, other: Run) -> bool:
  """Whether `other` is another run at `run`'s seed whose networks include the VAE `run` trains on."""
  return (other.name != run.name and other.seed == run.seed and run.vae_workdir is not None
          and run.vae_workdir in (other.vae_workdir, other.workdir))


def vae_differs(run: Run, runs: Sequence[Run]) -> list[str]:
  """'<run> (<sha256>)' for each committed run among `runs` that shares `run`'s VAE but whose record names
  another VAE (networks.vae_sha256) than `run`'s eval record here: the shared VAE trained again
  (vae_trained_again) is not the one they were evaluated on, so the rows' results would not compare."""
  mine = ((eval_record(run.workdir) or {}).get("networks") or {}).get("vae_sha256")
  if mine is None:
    return []
  differs = []
  for other in runs:
    if not shares_vae(run, other):
      continue
    theirs = ((other.committed_record() or {}).get("networks") or {}).get("vae_sha256")
    if theirs is not None and theirs != mine:
      differs.append(f"{other.name} ({theirs[:12]})")
  return differs


def fids_by_row(root: str, seeds: Iterable[int], results: str | None = None) -> dict[str, list[float]]:
  """{row: [FID of each finished seed]} over `seeds`."""
  out: dict[str, list[float]] = {}
  for run in runs_for(seeds, root, results=results):
    record = run.record()
    if record is not None:
      out.setdefault(run.row.name, []).append(float(record["metrics"]["fid"]))
  return out


def third_seed_rows(fids: dict[str, list[float]]) -> list[str]:
  """Rows that need a third seed: those whose FIDs are not `claims.separated` from another row's (mean
  within twice the larger of the two sample sds). Rows with fewer than two seeds are not judged."""
  names = [name for name, values in fids.items() if len(values) >= claims.MIN_SEEDS]
  close = set()
  for i, first in enumerate(names):
    for second in names[i + 1:]:
      if not claims.separated(fids[first], fids[second]):
        close.update((first, second))
  return [row.name for row in fmnist_rows.ROWS if row.name in close]


def planned_runs(root: str, results: str | None = None) -> list[Run]:
  """The whole program as far as it is known now: seeds 0 and 1 of every row, then the third seeds that
  the finished first two call for (none until both seeds of at least two rows are done)."""
  runs = runs_for(FIRST_SEEDS, root, results=results)
  extra = third_seed_rows(fids_by_row(root, FIRST_SEEDS, results))
  return runs + runs_for((THIRD_SEED,), root, [fmnist_rows.BY_NAME[name] for name in extra], results)


def summary(record: dict) -> str:
  metrics = record["metrics"]
  parts = [f"FID {metrics['fid']:.2f}" if metrics.get("fid") is not None else None,
           f"recon FID {metrics['recon_fid']:.2f}" if metrics.get("recon_fid") is not None else None,
           f"SW2^2 {metrics['sw2_squared']:.3g}" if metrics.get("sw2_squared") is not None else None]
  return ", ".join(p for p in parts if p)
