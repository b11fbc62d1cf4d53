"""SLURM options shared by every launcher, and the submitit executor built from them.

Launchers add the site options with :func:`add_slurm_arguments` and decide the resources of their
job themselves (:class:`JobResources`); :func:`make_executor` turns both into a submitit
executor (SLURM, or the local executor with ``--local``) and :func:`sbatch_preview` renders the
sbatch script such an executor would submit, for ``--dry-run``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import submitit
from submitit.slurm.slurm import _make_sbatch_string

from ssit.cli import non_negative_int, positive_float, positive_int

# Seconds between SLURM's warning signal and the end of the time limit: time to stop at a step
# boundary, write a checkpoint and requeue.
DEFAULT_SIGNAL_DELAY_S = 120
DEFAULT_TIME_MIN = 24 * 60
DEFAULT_MAX_REQUEUES = 20


class LaunchError(ValueError):
    """A job that cannot be launched as asked; the message is one line meant for the user."""


def add_slurm_arguments(
    parser: argparse.ArgumentParser, *, default_time_min: int = DEFAULT_TIME_MIN
) -> None:
    """Add the site options every launcher shares (partition, account, time limit, ...)."""
    group = parser.add_argument_group("cluster")
    group.add_argument("--partition", help="SLURM partition")
    group.add_argument("--account", help="SLURM account to charge")
    group.add_argument("--qos", help="SLURM quality of service")
    group.add_argument("--constraint", help="SLURM node feature constraint, e.g. a100")
    group.add_argument(
        "--time", type=positive_int, default=default_time_min, metavar="MIN",
        help=f"time limit of one allocation in minutes (default: {default_time_min})",
    )
    group.add_argument(
        "--mem-gb", type=positive_float, metavar="GB", help="memory per node (default: the site's)"
    )
    group.add_argument(
        "--signal-delay", type=positive_int, default=DEFAULT_SIGNAL_DELAY_S, metavar="S",
        help="seconds before the time limit at which the job is told to checkpoint and requeue "
        f"(default: {DEFAULT_SIGNAL_DELAY_S})",
    )
    group.add_argument(
        "--max-requeues", type=non_negative_int, default=DEFAULT_MAX_REQUEUES, metavar="N",
        help="requeues after hitting the time limit before the job gives up "
        f"(preemptions do not count; default: {DEFAULT_MAX_REQUEUES})",
    )
    group.add_argument(
        "--local", action="store_true",
        help="run on this machine through submitit's local executor instead of SLURM",
    )
    group.add_argument(
        "--dry-run", action="store_true", help="print the sbatch script that would be submitted"
    )


@dataclass(frozen=True)
class JobResources:
    """What one job asks of the cluster: its name, nodes, tasks (ranks) per node, GPUs per node
    and CPU cores per task (None: the site's default). Impossible values raise LaunchError."""

    name: str
    nodes: int = 1
    tasks_per_node: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int | None = None

    def __post_init__(self) -> None:
        if self.nodes < 1:
            raise LaunchError(f"--nodes must be at least 1, got {self.nodes}")
        if self.tasks_per_node < 1:
            raise LaunchError(f"tasks per node must be at least 1, got {self.tasks_per_node}")
        if self.gpus_per_node < 0:
            raise LaunchError(f"--gpus-per-node must not be negative, got {self.gpus_per_node}")
        if self.cpus_per_task is not None and self.cpus_per_task < 1:
            raise LaunchError(f"--cpus-per-task must be at least 1, got {self.cpus_per_task}")


def check_time_limit(args: argparse.Namespace) -> None:
    """Refuse a ``--signal-delay`` that leaves less than half of ``--time`` for the job's work.

    The warning signal makes the job checkpoint and requeue, so a delay close to the time limit
    would train for seconds per allocation.
    """
    limit_s = 60 * args.time
    if 2 * args.signal_delay > limit_s:
        raise LaunchError(
            f"--signal-delay {args.signal_delay} s is more than half of --time {args.time} min: "
            f"the job would be told to stop {args.signal_delay} s into a {limit_s} s allocation; "
            "raise --time or lower --signal-delay"
        )


def slurm_parameters(args: argparse.Namespace, resources: JobResources) -> dict[str, Any]:
    """Return submitit's SLURM parameters for a job with ``resources`` and ``args``'s options.

    Raises LaunchError when ``--signal-delay`` does not fit in ``--time``.
    """
    check_time_limit(args)
    parameters: dict[str, Any] = {
        "job_name": resources.name,
        "nodes": resources.nodes,
        "ntasks_per_node": resources.tasks_per_node,
        "time": args.time,
        "signal_delay_s": args.signal_delay,
        # A task that exits with an error ends the whole step at once, so no rank waits for a
        # dead peer; srun names the failed task (= global rank) in the job's error log.
        "srun_args": ["--kill-on-bad-exit=1"],
        "additional_parameters": {"requeue": True},
    }
    if resources.gpus_per_node:
        parameters["gpus_per_node"] = resources.gpus_per_node
    if resources.cpus_per_task:
        parameters["cpus_per_task"] = resources.cpus_per_task
    if args.mem_gb:
        parameters["mem"] = _memory(args.mem_gb)
    for option in ("partition", "account", "qos", "constraint"):
        value = getattr(args, option)
        if value:
            parameters[option] = value
    return parameters


def make_executor(
    args: argparse.Namespace, folder: str | Path, resources: JobResources
) -> submitit.Executor:
    """Build the executor for one job: SLURM, or submitit's local executor with ``args.local``.

    ``folder`` receives submitit's pickles and the per-task logs (``%j_%t_log.out/err``).
    """
    check_time_limit(args)
    if args.local:
        if resources.nodes != 1:
            raise LaunchError(
                f"--local runs on this machine only; use --nodes 1 (got {resources.nodes})"
            )
        local = submitit.LocalExecutor(folder=folder, max_num_timeout=args.max_requeues)
        local.update_parameters(
            timeout_min=args.time,
            tasks_per_node=resources.tasks_per_node,
            gpus_per_node=resources.gpus_per_node,
            signal_delay_s=args.signal_delay,
        )
        return local
    parameters = slurm_parameters(args, resources)
    if shutil.which("sbatch") is None or shutil.which("srun") is None:
        raise LaunchError("SLURM's sbatch/srun are not on PATH; use --local to run on this machine")
    slurm = submitit.SlurmExecutor(folder=folder, max_num_timeout=args.max_requeues)
    slurm.update_parameters(**parameters)
    return slurm


def sbatch_preview(args: argparse.Namespace, folder: str | Path, resources: JobResources) -> str:
    """Return the sbatch script :func:`make_executor` would submit (works without SLURM)."""
    parameters = slurm_parameters(args, resources)
    folder = Path(folder).expanduser().absolute()
    command = " ".join(
        [shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))]
    )
    return _make_sbatch_string(command=command, folder=folder, **parameters)


def kill_local_job(job: Any, timeout_s: float = 30.0) -> None:
    """End a job of submitit's local executor now: its tasks and their children, then its
    controller (SIGKILL, so none of them keeps running); wait until the controller is gone."""
    if job.done():  # the controller is reaped only here, so its pid was not reused before
        return
    controller = int(job.job_id)
    for pid in [*descendants(controller), controller]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout_s
    while not job.done() and time.monotonic() < deadline:
        time.sleep(0.05)


def descendants(pid: int) -> list[int]:
    """The children of process ``pid``, their children and so on (read from /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
            parent = int(text[text.rindex(")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parents.setdefault(parent, []).append(int(entry.name))
    found, pending = [], [pid]
    while pending:
        children = parents.get(pending.pop(), [])
        found += children
        pending += children
    return found


def default_run_dir(kind: str) -> Path:
    """A fresh run folder name under ``runs/``: ``<kind>-<date>-<time>``."""
    return Path("runs") / f"{kind}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def _memory(gigabytes: float) -> str:
    if gigabytes == int(gigabytes):
        return f"{int(gigabytes)}GB"
    return f"{int(gigabytes * 1024)}MB"
