"""The results driver's processes: the lock that names the running driver and its job, a job's command
run and watched for stalls, its retries, the SIGTERM passed on to it, and the signals that `program pause`
and `resume` send.

Nothing here knows what a job is for: experiments.program makes the jobs (a row at a seed, far latents,
the sampler study) and decides what comes next; experiments.replicate runs one row again with them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import signal
import subprocess
import threading
import time
from typing import Iterator

from experiments import program_runs

LOCK = "program.lock"
PAUSED = "program.paused"  # present while `pause` holds the running row (the stall watchdog waits)
# A row that writes nothing to its log for this long is hung (its stages log at least every few minutes:
# training every log_every steps, evaluation every Inception batch); it is killed and tried again.
STALL_SECONDS = 30 * 60
STALLED = -100
# A crash is tried again once. A hang is not the row's fault (README Reliability: the rare collective
# hang on several CPU devices) and its retry resumes from the newest intact checkpoint, losing at most
# checkpoint_every steps, so a row may stall this many times before it is left as failed.
MAX_STALLS = 4


def _lock_path(root: str) -> str:
  return os.path.join(root, LOCK)


def read_lock(root: str) -> dict | None:
  """The running driver's lock ({pid, run, child_pgid, started}) if its process is alive."""
  try:
    with open(_lock_path(root)) as f:
      lock = json.load(f)
    os.kill(lock["pid"], 0)
  except (OSError, ValueError, KeyError):
    return None
  return lock


def write_lock(root: str, **fields) -> None:
  tmp = _lock_path(root) + ".tmp"
  with open(tmp, "w") as f:
    json.dump({"pid": os.getpid(), **fields}, f)
  os.replace(tmp, _lock_path(root))


def remove_lock(root: str) -> None:
  os.remove(_lock_path(root))


@dataclasses.dataclass(frozen=True)
class Job:
  """A process the driver runs and watches: a row at a seed, or the sampler study."""
  name: str
  command: list[str]
  log_path: str  # its output is appended here
  # Other logs its children write to (the study's evals, a row trained again): output there is progress.
  watch: tuple[str, ...] = ()


def run_one(job: Job, root: str, stall_seconds: float = STALL_SECONDS, poll_seconds: float = 30.0) -> int:
  """Runs `job`'s command (its output appended to its log); returns its exit status, or STALLED after
  killing a job none of whose logs has grown for `stall_seconds` while not paused (a hung process: the
  retry resumes it from its newest intact checkpoint or chunk)."""
  os.makedirs(os.path.dirname(job.log_path), exist_ok=True)
  watched = (job.log_path, *job.watch)
  with open(job.log_path, "a") as out:
    out.write(f"\n=== {datetime.datetime.now().isoformat(timespec='seconds')}: {' '.join(job.command)}\n")
    out.flush()
    child = subprocess.Popen(job.command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    write_lock(root, run=job.name, child_pgid=child.pid, started=time.time())
    last_size, last_change = -1, time.time()
    while True:
      try:
        return child.wait(timeout=poll_seconds)
      except subprocess.TimeoutExpired:
        pass
      size = sum(os.path.getsize(path) for path in watched if os.path.exists(path))
      if size != last_size or os.path.exists(os.path.join(root, PAUSED)):
        last_size, last_change = size, time.time()
      elif time.time() - last_change > stall_seconds:
        program_runs.log(f"{job.name}: no output for {stall_seconds:.0f} s: stalled; "
                         f"killing process group {child.pid}")
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        return STALLED


def attempt(job: Job, root: str, stop: threading.Event) -> tuple[int, float]:
  """Runs `job` until it succeeds, a SIGTERM stops it, it has crashed twice or stalled more than
  MAX_STALLS times; returns its last exit status and its seconds over every attempt, hangs included."""
  crashes = stalls = 0
  start = time.time()
  while True:
    program_runs.log(f"{job.name}: start (attempt {crashes + stalls + 1}): {' '.join(job.command)}")
    status = run_one(job, root)
    seconds = time.time() - start
    if status == 0 or stop.is_set():
      return status, seconds
    program_runs.log(f"{job.name}: exit status {status}, {seconds:.0f} s after its first attempt began; "
                     f"log {job.log_path}")
    if status == STALLED:
      stalls += 1
    else:
      crashes += 1
    if crashes > 1 or stalls > MAX_STALLS:
      return status, seconds


@contextlib.contextmanager
def driving(root: str) -> Iterator[threading.Event]:
  """Holds `root`'s lock while the block runs its jobs (`attempt(job, root, stop)`), and turns a SIGTERM
  into `stop` being set and the signal passed on to the running job, which saves the training step it is
  in and exits (a job runs in a session of its own, so only this can reach it). Restores the previous
  SIGTERM handler and removes the lock after. Refuses a `root` another live driver holds."""
  os.makedirs(root, exist_ok=True)
  other = read_lock(root)
  if other is not None:
    raise SystemExit(f"another program driver is running on {root} (pid {other['pid']}).")
  write_lock(root, run=None, child_pgid=None, started=time.time())
  stop = threading.Event()

  def request_stop(signum, frame):
    del signum, frame
    program_runs.log("SIGTERM: stopping; the running job, if any, is asked to save its step")
    stop.set()
    for sig in (signal.SIGTERM, signal.SIGCONT):  # SIGCONT: a paused job handles the SIGTERM now
      try:
        signal_running(root, sig)
      except ProcessLookupError:  # the job has just ended
        pass

  previous_handler = signal.signal(signal.SIGTERM, request_stop)
  try:
    yield stop
  finally:
    signal.signal(signal.SIGTERM, previous_handler)
    remove_lock(root)


def signal_running(root: str, sig: int) -> str:
  lock = read_lock(root)
  if lock is None or not lock.get("child_pgid"):
    return "no program row is running."
  paused = os.path.join(root, PAUSED)
  if sig == signal.SIGSTOP:
    open(paused, "w").close()
  os.killpg(lock["child_pgid"], sig)
  if sig == signal.SIGCONT and os.path.exists(paused):
    os.remove(paused)
  return f"{signal.Signals(sig).name} sent to {lock['run']} (process group {lock['child_pgid']})."
