"""The pre-training job that submitit runs on every rank, and how it survives preemption.

SLURM warns a job before preempting it or at ``--signal-delay`` seconds before its time limit by
sending submitit's signal (USR2; USR1 is left to NCCL) to every task. submitit's own handler
only acts on global rank 0, inside the signal handler, where no collective may run. So the job
replaces it, on every rank, with a handler that only raises a flag. The training loop reads the
flag at each step boundary and all ranks agree with one all-reduce to stop; every rank's state
goes into one checkpoint; then rank 0 calls the submitit handler it set aside, which calls
:meth:`PretrainJob.checkpoint`, requeues the job with ``scontrol requeue`` and counts time-outs
against ``max_num_timeout``. The other ranks simply return. SIGTERM (``scancel``, preemption
without requeue) also stops at a step boundary with a checkpoint, but does not requeue.

Every attempt of a job rendezvouses on its own port, derived from the job id and
``SLURM_RESTART_COUNT``, so a requeued job never meets a store left over from the attempt
before. Without submitit (``slurm/pretrain.sbatch`` running ``python -m ssit.cluster``) the job
requeues itself with ``scontrol`` and bounds the requeues by ``SLURM_RESTART_COUNT``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import zlib
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from submitit.core.job_environment import JobEnvironment, SignalHandler
from submitit.helpers import DelayedSubmission

from ssit.cli import non_negative_int, positive_float
from ssit.cluster.executor import DEFAULT_MAX_REQUEUES
from ssit.error_text import first_line
from ssit.train.config import DEFAULT_CONFIG, PretrainConfig
from ssit.train.distributed import DEFAULT_TIMEOUT_S
from ssit.train.engine import PretrainOutcome, pretrain_main
from ssit.train.run_owner import RunFolderBusyError, hold_run_folder

log = logging.getLogger(__name__)

# Ports for the rendezvous store: below Linux's ephemeral range (32768+) so that no outgoing
# connection on the master node can be holding the port.
RENDEZVOUS_PORTS = (20000, 32000)
LOG_FORMAT = "%(asctime)s {host} rank {rank} %(levelname)s %(name)s: %(message)s"


class RequeueLimitError(RuntimeError):
    """The job was requeued as often as it may be; the message is one line."""


def preemption_signal() -> signal.Signals:
    """The signal SLURM sends before preemption and the time limit (submitit's, USR2 by default)."""
    name = f"SIG{JobEnvironment.USR_SIG}"
    if not hasattr(signal, name):
        raise ValueError(f"unknown preemption signal {name} (check SUBMITIT_PREEMPT_SIGNAL)")
    return signal.Signals[name]


class StopRequest:
    """Flags raised by signal handlers and read by the training loop at step boundaries.

    ``requeue`` is raised by the preemption signal (save, then requeue the job); ``terminate``
    by SIGTERM or SIGINT (save, then end). Calling the object tells whether either is raised.
    """

    def __init__(self) -> None:
        self.requeue = False
        self.terminate = False
        self.preempt_signal = preemption_signal()
        self._previous: dict[int, Any] = {}

    def __call__(self) -> bool:
        return self.requeue or self.terminate

    def install(self) -> StopRequest:
        """Replace the handlers of the preemption signal, SIGTERM and SIGINT; keep the old ones."""
        for signum in (self.preempt_signal, signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def uninstall(self) -> None:
        """Put the handlers that :meth:`install` replaced back."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def previous_handler(self, signum: int) -> Any:
        """The handler that was in place for ``signum`` before :meth:`install`."""
        return self._previous.get(signum)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # Only flags here: a handler may interrupt a collective, logging or a file write.
        if signum == self.preempt_signal:
            self.requeue = True
        else:
            self.terminate = True


def rendezvous_port(job_id: str, attempt: int) -> int:
    """A port for the rendezvous store of one attempt of one job, the same on every rank."""
    low, high = RENDEZVOUS_PORTS
    return low + zlib.crc32(f"{job_id}/{attempt}".encode()) % (high - low)


def rendezvous_environment(
    job_env: JobEnvironment, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """torchrun-style variables for this task: ranks, and a fresh store address per attempt.

    The store lives on the first node of the allocation; the local executor uses loopback.
    """
    environ = os.environ if environ is None else environ
    attempt = int(environ.get("SLURM_RESTART_COUNT") or 0)
    local_world = max(1, job_env.num_tasks // max(1, job_env.num_nodes))
    master = "127.0.0.1" if job_env.cluster == "local" else job_env.hostnames[0]
    return {
        "MASTER_ADDR": master,
        "MASTER_PORT": str(rendezvous_port(job_env.job_id, attempt)),
        "RANK": str(job_env.global_rank),
        "WORLD_SIZE": str(job_env.num_tasks),
        "LOCAL_RANK": str(job_env.local_rank),
        "LOCAL_WORLD_SIZE": str(local_world),
    }


def cpu_threads(environ: Mapping[str, str], local_world_size: int) -> int:
    """Intra-op threads for one CPU rank: its SLURM CPUs, else an even share of this machine."""
    allotted = environ.get("SLURM_CPUS_PER_TASK")
    if allotted:
        return max(1, int(allotted))
    return max(1, len(os.sched_getaffinity(0)) // max(1, local_world_size))


@dataclass
class PretrainJob:
    """One pre-training run as a submitit callable: the same object runs on every rank.

    The run's state lives in ``run_dir`` (checkpoints), so the job object itself never changes:
    a requeued or resubmitted job resumes from the newest readable checkpoint there.
    ``max_requeues`` bounds requeues only when no submitit handler does (plain sbatch).
    ``restart`` lets the job train from step 0 in a folder that trained before; a requeued
    attempt may always do so, since its first attempt started in that folder. Rank 0 holds the
    folder (:func:`~ssit.train.run_owner.hold_run_folder`) while it trains, so a second job
    into the same folder is refused. A rank that fails writes the reason into the run's
    ``log.txt``, with where its traceback is (not when the folder belongs to another job).
    """

    config: PretrainConfig
    run_dir: Path
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_requeues: int | None = None
    restart: bool = False

    def __call__(self) -> PretrainOutcome:
        job_env = JobEnvironment()
        environment = rendezvous_environment(job_env)
        os.environ.update(environment)
        rank, world = int(environment["RANK"]), int(environment["WORLD_SIZE"])
        _configure_logging(rank)
        if self.config.device == "cpu":
            import torch

            torch.set_num_threads(
                cpu_threads(os.environ, int(environment["LOCAL_WORLD_SIZE"]))
            )
        log.info(
            "rank %d of %d on %s (pid %d), job %s attempt %s, store %s:%s", rank, world,
            _node_name(), os.getpid(), job_env.job_id,
            os.environ.get("SLURM_RESTART_COUNT", "0"), environment["MASTER_ADDR"],
            environment["MASTER_PORT"],
        )
        stop = StopRequest().install()
        requeued = int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0
        # Rank 0 owns the run folder for the job's life: no other job may write it meanwhile.
        owning = hold_run_folder(self.run_dir) if rank == 0 else nullcontext()
        try:
            with owning:
                outcome = pretrain_main(self.config, self.run_dir, should_stop=stop,
                                        timeout_s=self.timeout_s,
                                        restart=self.restart or requeued)
        except RunFolderBusyError as error:
            log.error("rank %d: %s", rank, error)
            raise
        except Exception as error:
            record_failure(self.run_dir, rank, error, _traceback_location(job_env))
            raise
        if outcome.status == "completed":
            log.info("rank %d: pre-training completed at step %d", rank, outcome.step)
            return outcome
        if not stop.requeue:
            log.warning(
                "rank %d: stopped at step %d (terminated); resubmit with --output %s to resume",
                rank, outcome.step, self.run_dir,
            )
            return outcome
        if rank != 0:
            log.info("rank %d: state saved at step %d; rank 0 requeues the job", rank,
                     outcome.step)
            return outcome
        log.warning("preempted at step %d; checkpoint %s; requeueing", outcome.step,
                    outcome.checkpoint)
        self._requeue(stop, job_env)
        return outcome

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        """Called by submitit on rank 0 before requeueing: resubmit this same job unchanged."""
        return DelayedSubmission(dataclasses.replace(self))

    def _requeue(self, stop: StopRequest, job_env: JobEnvironment) -> None:
        handler = stop.previous_handler(stop.preempt_signal)
        stop.uninstall()
        if isinstance(getattr(handler, "__self__", None), SignalHandler):
            # submitit's handler: calls checkpoint(), dumps the job, counts time-outs against
            # max_num_timeout, runs `scontrol requeue` and exits (or raises once too many).
            handler(stop.preempt_signal, None)
            return
        restarts = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
        if self.max_requeues is not None and restarts >= self.max_requeues:
            raise RequeueLimitError(
                f"job {job_env.job_id} was requeued {restarts} times (the limit); resubmit "
                f"with the same output folder ({self.run_dir}) to continue"
            )
        limit = "unbounded" if self.max_requeues is None else f"at most {self.max_requeues}"
        log.info("requeueing job %s (restart %d, %s)", job_env.job_id, restarts + 1, limit)
        subprocess.run(["scontrol", "requeue", job_env.job_id], check=True, timeout=60)


def record_failure(run_dir: Path, rank: int, error: BaseException, traceback_at: str) -> None:
    """Append why ``rank`` failed to the run's ``log.txt``: the exception in one line, and
    where the full traceback is."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    line = (f"{stamp} {_node_name()} rank {rank} ERROR the job failed: "
            f"{type(error).__name__}: {first_line(error)} (traceback in {traceback_at})\n")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(run_dir / "log.txt", "a", encoding="utf-8") as stream:
            stream.write(line)
    except OSError as failure:  # a full or read-only disk: the console still has the traceback
        log.error("cannot record the failure in %s: %s", run_dir / "log.txt", failure)


def _traceback_location(job_env: JobEnvironment) -> str:
    """Where this task's stderr goes: submitit's per-task file, else the SLURM job output."""
    try:
        return str(job_env.paths.stderr)
    except Exception:  # no submitit folder: a plain sbatch job (srun python -m ssit.cluster)
        job_id = os.environ.get("SLURM_JOB_ID")
        return f"the SLURM output of job {job_id}" if job_id else "the console of this rank"


def _node_name() -> str:
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def _configure_logging(rank: int) -> None:
    if logging.getLogger().handlers:
        return
    text = LOG_FORMAT.format(host=_node_name(), rank=rank)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(text))
    # submitit prints its own records already.
    handler.addFilter(lambda record: not record.name.startswith("submitit"))
    logging.getLogger().addHandler(handler)
    logging.getLogger("ssit").setLevel(logging.INFO)


def run_without_submitit(argv: Sequence[str] | None = None) -> int:
    """Entry point for ``srun python -m ssit.cluster``: one rank of a plain sbatch job."""
    from ssit.config import ConfigError, load_config
    from ssit.train.config import validate_pretrain_config

    parser = argparse.ArgumentParser(
        prog="python -m ssit.cluster",
        description="Run one rank of the pre-training job under srun (no submitit).",
    )
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="YAML file or name")
    parser.add_argument("--output", required=True, type=Path, help="run directory")
    parser.add_argument("--max-requeues", type=non_negative_int, default=DEFAULT_MAX_REQUEUES,
                        help=f"requeues before the job gives up (default: {DEFAULT_MAX_REQUEUES})")
    parser.add_argument("--dist-timeout", type=positive_float, default=DEFAULT_TIMEOUT_S,
                        help="seconds a collective may wait for a peer")
    parser.add_argument("--restart", action="store_true",
                        help="train from step 0 in a run folder that trained before")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_intermixed_args(argv)
    os.environ.setdefault("SUBMITIT_EXECUTOR", "slurm")
    try:
        cfg = load_config(PretrainConfig, args.config, args.overrides)
        validate_pretrain_config(cfg, int(os.environ.get("SLURM_NTASKS", "1")))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    # Every rank exits 0 after a clean stop: with srun --kill-on-bad-exit a non-zero exit would
    # end the step before rank 0 has requeued the job.
    PretrainJob(cfg, args.output.absolute(), args.dist_timeout, args.max_requeues,
                restart=args.restart)()
    return 0
