"""One writer per run folder: an owner record, and a kernel lock held for the writer's life.

A run folder holds ``.owner/``:

- ``record.json``: who owns the folder, written atomically: SLURM job ids, or the host and pid
  of a local process (with the process's start time, so that a reused pid is told apart);
- ``lock``: an ``flock`` held by the process that writes the folder (rank 0 of a pre-training
  job, a grading job, a local grading launcher) for as long as it runs. The kernel drops it when
  that process ends in any way, ``kill -9`` included; on a shared file system the lock is seen
  from every node;
- ``submit.lock``: an ``flock`` a launcher holds while it checks, submits and records a job, so
  that two launchers never both find the folder free.

A launcher refuses a folder whose owner is alive (:func:`live_owner`): its lock is held, its
SLURM job is still queued or running (``squeue``), or its local process still runs. Any other
owner is stale and taken over. A job takes the lock when it starts (:func:`hold_run_folder`);
an earlier attempt of the same SLURM job (a requeue) is its own owner.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from ssit.atomic_write import replace_json

log = logging.getLogger(__name__)

OWNER_DIR = ".owner"
RECORD_NAME = "record.json"
LOCK_NAME = "lock"
SUBMIT_LOCK_NAME = "submit.lock"
# SLURM states of a job that will not write anymore; any other state (PENDING, RUNNING,
# REQUEUE_HOLD, SUSPENDED, ...) is alive. A job squeue no longer knows has finished too.
FINISHED_STATES = frozenset({
    "BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
    "PREEMPTED", "REVOKED", "TIMEOUT",
})
SQUEUE_TIMEOUT_S = 30
# How long a starting job waits for the lock before it gives up: a launcher probing the lock
# holds it for an instant, and the processes of a requeued job's earlier attempt may still be
# ending.
LOCK_WAIT_S = 30.0
_LOCK_POLL_S = 0.2

JobState = Callable[[str], "str | None"]


class RunFolderBusyError(RuntimeError):
    """The run folder is owned by a live job; the message is one line meant for the user."""


@dataclass(frozen=True)
class RunOwner:
    """Who writes a run folder: SLURM job ids (``jobs``), or a local process (no job ids)."""

    host: str
    pid: int
    jobs: tuple[str, ...] = ()
    started: int | None = None

    def describe(self) -> str:
        """The owner in words: ``SLURM job 12`` or ``process 4242 on host node1``."""
        if self.jobs:
            noun = "job" if len(self.jobs) == 1 else "jobs"
            return f"SLURM {noun} {', '.join(self.jobs)}"
        return f"process {self.pid} on host {self.host}"


def current_owner(environ: Mapping[str, str] | None = None) -> RunOwner:
    """This process as an owner: its SLURM job (array task) if it runs in one, else itself."""
    environ = os.environ if environ is None else environ
    jobs: tuple[str, ...] = ()
    if environ.get("SUBMITIT_EXECUTOR") != "local" and environ.get("SLURM_JOB_ID"):
        array, task = environ.get("SLURM_ARRAY_JOB_ID"), environ.get("SLURM_ARRAY_TASK_ID")
        jobs = (f"{array}_{task}" if array and task else environ["SLURM_JOB_ID"],)
    return local_owner(os.getpid(), jobs)


def local_owner(pid: int, jobs: tuple[str, ...] = ()) -> RunOwner:
    """Process ``pid`` of this host as an owner (of SLURM ``jobs``, if any)."""
    return RunOwner(socket.gethostname(), pid, tuple(jobs), process_start(pid))


def process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks after boot), or None if unknown or gone."""
    fields = _stat_fields(pid)
    try:
        return int(fields[19]) if fields else None
    except (ValueError, IndexError):
        return None


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state first), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        return text[text.rindex(")") + 2:].split()
    except (OSError, ValueError):
        return None


def read_owner(run_dir: str | Path) -> RunOwner | None:
    """The owner recorded in ``run_dir``, or None when there is no readable record."""
    try:
        value = json.loads((Path(run_dir) / OWNER_DIR / RECORD_NAME).read_text())
        started = value.get("started")
        return RunOwner(str(value["host"]), int(value["pid"]),
                        tuple(str(job) for job in value.get("jobs") or ()),
                        None if started is None else int(started))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def write_owner(run_dir: str | Path, owner: RunOwner) -> None:
    """Record ``owner`` in ``run_dir`` (atomically: a reader sees the old or the new record)."""
    replace_json(Path(run_dir) / OWNER_DIR / RECORD_NAME,
                 {**asdict(owner), "jobs": list(owner.jobs), "written": time.time()})


def slurm_job_state(job_id: str) -> str | None:
    """The SLURM state of ``job_id`` (``squeue -h -j ID -o %T``), or None when SLURM does not
    know it (it finished long enough ago) or cannot be asked (not installed or configured here,
    or not answering: logged). A running owner still holds the lock, which is checked first."""
    try:
        done = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True,
                              text=True, timeout=SQUEUE_TIMEOUT_S)
    except FileNotFoundError:
        return None
    except subprocess.TimeoutExpired:
        log.warning("squeue did not answer in %d s; taking SLURM job %s as finished",
                    SQUEUE_TIMEOUT_S, job_id)
        return None
    states = done.stdout.split()
    if done.returncode == 0:
        return states[0] if states else None
    if "invalid job id" not in done.stderr.lower():
        said = done.stderr.strip().splitlines()
        log.warning("squeue failed (%s); taking SLURM job %s as finished",
                    said[-1] if said else f"exit status {done.returncode}", job_id)
    return None


def live_owner(run_dir: str | Path, job_state: JobState = slurm_job_state) -> str | None:
    """Describe the live owner of ``run_dir`` (``SLURM job 12 (RUNNING)``), or None when the
    folder is free: no record, or a stale one (dead process, finished or unknown SLURM job)."""
    run_dir = Path(run_dir)
    owner = read_owner(run_dir)
    if _lock_is_held(run_dir):
        if owner is None:
            return "a process that left no owner record"
        states = [(job, job_state(job)) for job in owner.jobs[:1]]
        return next((f"SLURM job {job} ({state})" for job, state in states if state),
                    owner.describe())
    if owner is None:
        return None
    for job in owner.jobs:
        state = job_state(job)
        if state is not None and state not in FINISHED_STATES:
            return f"SLURM job {job} ({state})"
    if not owner.jobs and _process_alive(owner):
        return owner.describe()
    return None


def check_run_folder_free(run_dir: str | Path, option: str = "--output",
                          job_state: JobState = slurm_job_state) -> None:
    """Raise :class:`RunFolderBusyError` (one line) when ``run_dir`` has a live owner."""
    owner = live_owner(run_dir, job_state)
    if owner is not None:
        raise RunFolderBusyError(_busy_message(Path(run_dir), owner, option))


@contextmanager
def submitting_into(run_dir: str | Path, option: str = "--output",
                    job_state: JobState = slurm_job_state) -> Iterator[None]:
    """Hold ``run_dir`` for one launcher while it checks it is free, submits and records its
    job(s) (:func:`write_owner`). Raises :class:`RunFolderBusyError` with one line."""
    run_dir = Path(run_dir)
    with _flocked(run_dir / OWNER_DIR / SUBMIT_LOCK_NAME) as taken:
        if not taken:
            raise RunFolderBusyError(f"another launcher is submitting into {run_dir} right now; "
                                     f"wait for it, or use another {option}")
        check_run_folder_free(run_dir, option, job_state)
        yield


@contextmanager
def hold_run_folder(run_dir: str | Path, owner: RunOwner | None = None, *,
                    wait_s: float | None = None,
                    job_state: JobState = slurm_job_state) -> Iterator[RunOwner]:
    """Own ``run_dir`` for the life of the block: take its lock, refuse a live owner other than
    ``owner`` (default: this process, or its SLURM job), record ``owner``.

    The lock is waited for up to ``wait_s`` seconds (default :data:`LOCK_WAIT_S`). A record
    naming ``owner``'s own SLURM job is an earlier attempt of it (a requeue) and is taken over,
    as is any stale record. A local process removes its record when the block ends; a SLURM
    job's record stays, so that the job still owns the folder while it waits in the queue after
    a requeue.
    Raises :class:`RunFolderBusyError` with one line.
    """
    run_dir = Path(run_dir)
    owner = owner or current_owner()
    deadline = time.monotonic() + (LOCK_WAIT_S if wait_s is None else wait_s)
    with _flocked(run_dir / OWNER_DIR / LOCK_NAME, until=deadline) as taken:
        recorded = read_owner(run_dir)
        if not taken:
            holder = recorded.describe() if recorded else "another process"
            raise RunFolderBusyError(_busy_message(run_dir, holder, "output folder"))
        others = [job for job in (recorded.jobs if recorded else ()) if job not in owner.jobs]
        for job in others:
            state = job_state(job)
            if state is not None and state not in FINISHED_STATES:
                raise RunFolderBusyError(
                    _busy_message(run_dir, f"SLURM job {job} ({state})", "output folder"))
        write_owner(run_dir, owner)
        yield owner
        if not owner.jobs and read_owner(run_dir) == owner:
            # A local process that let go: its pid would still look alive for a while.
            (run_dir / OWNER_DIR / RECORD_NAME).unlink(missing_ok=True)


def _busy_message(run_dir: Path, owner: str, option: str) -> str:
    return (f"{run_dir} is in use by {owner}; wait for that run to end or stop it, or use "
            f"another {option}")


def _process_alive(owner: RunOwner) -> bool:
    """Whether the local process of ``owner`` still runs (unknowable on another host: no)."""
    if owner.host != socket.gethostname():
        return False
    try:
        os.kill(owner.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    fields = _stat_fields(owner.pid)
    if fields and fields[0] in ("Z", "X"):
        return False  # ended, not yet reaped by its parent: it holds nothing any more
    started = process_start(owner.pid)
    return owner.started is None or started is None or started == owner.started


def _lock_is_held(run_dir: Path) -> bool:
    """Whether a live process holds the lock of ``run_dir`` (probed without waiting)."""
    path = run_dir / OWNER_DIR / LOCK_NAME
    if not path.is_file():
        return False
    with _flocked(path) as taken:
        return not taken


@contextmanager
def _flocked(path: Path, until: float | None = None) -> Iterator[bool]:
    """Try to ``flock`` ``path`` (created if needed) until the monotonic time ``until`` (once
    without it); yield whether it was taken. The lock is released when the block ends."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as error:
        raise RunFolderBusyError(f"cannot write to {path.parent.parent}: "
                                 f"{error.strerror or error}") from None
    try:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                taken = True
                break
            except BlockingIOError:
                if until is None or time.monotonic() >= until:
                    taken = False
                    break
                time.sleep(_LOCK_POLL_S)
        yield taken
    finally:
        os.close(handle)


__all__ = [
    "FINISHED_STATES",
    "OWNER_DIR",
    "RunFolderBusyError",
    "RunOwner",
    "check_run_folder_free",
    "current_owner",
    "hold_run_folder",
    "live_owner",
    "local_owner",
    "process_start",
    "read_owner",
    "slurm_job_state",
    "submitting_into",
    "write_owner",
]
