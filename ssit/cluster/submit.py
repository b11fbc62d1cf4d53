"""Submitting the pre-training job: options, checks before submission, and what to tell the user.

:func:`plan_pretrain` turns the command-line options into a :class:`PretrainPlan` (the config
loaded and fully validated for the job's world size, the run folder, the resources), raising
:class:`~ssit.config.ConfigError` or :class:`~ssit.cluster.executor.LaunchError` with one line
before anything is submitted. :func:`launch_pretrain` then prints the sbatch script
(``--dry-run``), submits to SLURM, or runs through submitit's local executor and waits.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from ssit.cli import positive_float
from ssit.cluster.executor import (
    JobResources,
    LaunchError,
    add_slurm_arguments,
    default_run_dir,
    kill_local_job,
    make_executor,
    sbatch_preview,
)
from ssit.config import ConfigError, config_to_dict, load_config, read_yaml
from ssit.data.fingerprint import shard_fingerprint
from ssit.error_text import failure_excerpt, job_error_line, last_line
from ssit.prepare.shard_format import PrepareError
from ssit.train.checkpoint import (
    CheckpointError,
    list_checkpoints,
    recorded_data_fingerprint,
    recorded_world_size,
)
from ssit.train.config import (
    DEFAULT_CONFIG,
    DEFAULT_TIMEOUT_S,
    PretrainConfig,
    check_method_builds,
    config_fields_differing,
    resume_locked_fields,
    validate_pretrain_config,
)
from ssit.train.resume_data import check_resume_data
from ssit.train.run_folder import RestartRefusedError, check_run_folder
from ssit.train.run_owner import (
    RunFolderBusyError,
    check_run_folder_free,
    local_owner,
    submitting_into,
    write_owner,
)

if TYPE_CHECKING:
    from ssit.cluster.job import PretrainJob

DEFAULT_GPUS_PER_NODE = 8
JOB_NAME = "ssit-pretrain"
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class PretrainPlan:
    """A checked pre-training job: what runs, where its files go, and on what resources."""

    config: PretrainConfig
    run_dir: Path
    nodes: int
    tasks_per_node: int
    gpus_per_node: int
    cpus_per_task: int
    resume: bool
    restart: bool = False

    @property
    def world_size(self) -> int:
        """Number of ranks (tasks) of the job."""
        return self.nodes * self.tasks_per_node

    @property
    def log_dir(self) -> Path:
        """Where submitit keeps the job's pickles and per-task console logs."""
        return self.run_dir / "submitit"

    @property
    def resources(self) -> JobResources:
        """What the job asks of the cluster."""
        return JobResources(JOB_NAME, self.nodes, self.tasks_per_node, self.gpus_per_node,
                            self.cpus_per_task)


def add_pretrain_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every option of the pre-training launcher to ``parser``."""
    parser.add_argument(
        "--config", default=DEFAULT_CONFIG,
        help=f"YAML file or packaged config name (default: {DEFAULT_CONFIG})",
    )
    parser.add_argument(
        "--output", type=Path,
        help="run folder (default: runs/pretrain-<config>-<time>); an existing run resumes",
    )
    parser.add_argument(
        "--restart", action="store_true",
        help="train from step 0 in an --output that trained before but has no checkpoint left",
    )
    parser.add_argument("--nodes", type=int, default=1, help="nodes (default: 1)")
    parser.add_argument(
        "--gpus-per-node", type=int, default=DEFAULT_GPUS_PER_NODE,
        help=f"GPUs per node, one task each (default: {DEFAULT_GPUS_PER_NODE})",
    )
    parser.add_argument(
        "--cpu", action="store_true", help="CPU processes and gloo instead of GPUs and NCCL"
    )
    parser.add_argument(
        "--tasks-per-node", type=int, help="CPU processes per node with --cpu (default: 1)"
    )
    parser.add_argument(
        "--cpus-per-task", type=int,
        help="CPU cores per task (default: data.num_threads, plus 2 per GPU task)",
    )
    parser.add_argument(
        "--dist-timeout", type=positive_float, default=DEFAULT_TIMEOUT_S, metavar="S",
        help="seconds a rank waits for its peers before the job fails "
        f"(default: {DEFAULT_TIMEOUT_S:g})",
    )
    add_slurm_arguments(parser)
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=5e-4"
    )


def plan_pretrain(args: argparse.Namespace) -> PretrainPlan:
    """Load and validate everything the job needs; raise ConfigError/LaunchError (one line)."""
    config = load_config(PretrainConfig, args.config, args.overrides)
    cpu = args.cpu or config.device == "cpu"
    if cpu:
        config = dataclasses.replace(config, device="cpu")
        tasks_per_node = 1 if args.tasks_per_node is None else args.tasks_per_node
        gpus_per_node = 0
    else:
        if args.tasks_per_node is not None:
            raise LaunchError("--tasks-per-node applies to --cpu runs; GPU runs use one task "
                              "per GPU (--gpus-per-node)")
        if args.gpus_per_node < 1:
            raise LaunchError(f"--gpus-per-node must be at least 1 (got {args.gpus_per_node}); "
                              "use --cpu for a run without GPUs")
        tasks_per_node, gpus_per_node = args.gpus_per_node, args.gpus_per_node
    if args.nodes < 1 or tasks_per_node < 1:
        raise LaunchError(f"need at least one node and one task per node, got --nodes "
                          f"{args.nodes} and {tasks_per_node} tasks per node")
    if args.local and args.nodes != 1:
        raise LaunchError(f"--local runs on this machine only; use --nodes 1 (got {args.nodes})")
    if not (math.isfinite(args.dist_timeout) and args.dist_timeout > 0):
        raise LaunchError(f"--dist-timeout must be a finite positive number of seconds, got "
                          f"{args.dist_timeout:g}")
    config = _with_absolute_shards(config)
    validate_pretrain_config(config, args.nodes * tasks_per_node)

    run_name = f"pretrain-{Path(args.config).stem}"
    run_dir = (args.output or default_run_dir(run_name)).expanduser().absolute()
    if run_dir.exists() and not run_dir.is_dir():
        raise LaunchError(f"--output {run_dir} exists and is not a folder")
    _check_free(run_dir)
    _check_restart(run_dir, args.restart)
    # A restart trains from step 0, so it need not match the settings of the earlier run.
    resume = not args.restart and _check_resumable(run_dir, config,
                                                   args.nodes * tasks_per_node)
    cpus_per_task = args.cpus_per_task
    if cpus_per_task is None:
        cpus_per_task = config.data.num_threads if cpu else config.data.num_threads + 2
    if cpus_per_task < 1:
        raise LaunchError(f"--cpus-per-task must be at least 1, got {cpus_per_task}")
    return PretrainPlan(config, run_dir, args.nodes, tasks_per_node, gpus_per_node,
                        cpus_per_task, resume, args.restart)


def launch_pretrain(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Dry-run, submit or run locally the job ``args`` describe; return the exit status."""
    out = out or sys.stdout
    plan = plan_pretrain(args)
    where = f"{plan.nodes} node(s) x {plan.tasks_per_node} task(s)"
    if args.dry_run:
        if args.local:
            out.write(f"# would run {plan.tasks_per_node} local task(s) into {plan.run_dir}\n")
            return 0
        out.write(f"# sbatch script for {where} ({plan.world_size} ranks); nothing submitted\n")
        out.write(f"# run folder: {plan.run_dir}\n")
        out.write(sbatch_preview(args, plan.log_dir, plan.resources))
        return 0

    # The job's code (torch, timm, DALI) loads only now that a job is submitted.
    from ssit.cluster.job import PretrainJob

    check_method_builds(plan.config)
    executor = make_executor(args, plan.log_dir, plan.resources)
    job_callable = PretrainJob(plan.config, plan.run_dir, timeout_s=args.dist_timeout,
                               restart=plan.restart)
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    try:
        with submitting_into(plan.run_dir):
            job = _submit(executor, job_callable, args.local)
            # A local job is its controller process until rank 0 takes the folder's lock.
            write_owner(plan.run_dir, local_owner(int(job.job_id)) if args.local
                        else local_owner(os.getpid(), (str(job.job_id),)))
    except RunFolderBusyError as error:
        raise LaunchError(str(error)) from None

    action = "restarting" if plan.restart else "resuming" if plan.resume else "starting"
    out.write(f"{action} pre-training in {plan.run_dir}"
              f"{' from step 0' if plan.restart else ''}\n")
    out.write(f"job id: {job.job_id} ({where}, {plan.config.device})\n")
    out.write(f"output folder: {plan.run_dir}\n")
    out.write(f"follow the log: tail -f {plan.run_dir / 'log.txt'}\n")
    out.write(f"console of rank 0: {job.paths.stdout} and {job.paths.stderr}\n")
    out.write(f"resume after a failure: the same command with --output {plan.run_dir}\n")
    out.flush()
    if not args.local:
        return 0
    return _wait_local(job, plan, out)


def _submit(executor: Any, job_callable: PretrainJob, local: bool) -> Any:
    """Submit the job; raise LaunchError with sbatch's reason when it is refused."""
    # submitit's local controller inherits an ignored SIGINT, so Ctrl-C does not make it kill
    # the tasks; they catch SIGINT themselves and stop at a step boundary with a checkpoint.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if local else None
    try:
        return executor.submit(job_callable)
    except Exception as error:  # submitit wraps sbatch's refusal in several exception types
        raise LaunchError(f"submission failed: {last_line(error)}") from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


# Words for the named losses of the hosted methods in the console summary.
LOSS_LABELS = {"loss": "loss", "loss_cl": "contrastive", "loss_ss": "saliency",
               "loss_ap": "smooth-ap"}


def format_summary(run_dir: Path) -> str:
    """A few lines on a completed run: loss at start and end, checkpoint, logs."""
    path = run_dir / "summary.json"
    summary = json.loads(path.read_text())
    lines = [f"pre-training completed: {summary['steps']} steps on {summary['world_size']} "
             f"rank(s), {summary['elapsed_s']:.1f} s of training"]
    first, last = summary.get("first_losses") or {}, summary.get("last_losses") or {}
    for key in (key for key in first if key in last):
        label = LOSS_LABELS.get(key, key)
        trend = "falling" if last[key] < first[key] else "not falling"
        lines.append(f"  {label:<12} {first[key]:.4f} -> {last[key]:.4f} ({trend})")
    lines += [
        f"final checkpoint: {summary['final_checkpoint']}",
        f"log: {summary['log']}",
        f"tensorboard: tensorboard --logdir {summary['tensorboard']}",
    ]
    return "\n".join(lines) + "\n"


def _wait_local(job: Any, plan: PretrainPlan, out: TextIO) -> int:
    """Follow rank 0's console while the local job runs. Ctrl-C stops it at a step boundary
    with a checkpoint; a second Ctrl-C kills its processes at once."""
    follower = _LogFollower([(job.paths.stdout, out), (job.paths.stderr, sys.stderr)])
    stopping = False
    while not job.done():
        try:
            follower.poll()
            time.sleep(0.5)
        except KeyboardInterrupt:
            if stopping:
                kill_local_job(job)
                print(f"error: interrupted; the local job was killed; resume from its last "
                      f"checkpoint with the same command and --output {plan.run_dir}",
                      file=sys.stderr)
                return EXIT_INTERRUPTED
            stopping = True
            out.write("\nstopping: every rank saves a checkpoint first (Ctrl-C again to "
                      "kill the job now)\n")
            # The local job id is the pid of submitit's controller; it forwards SIGTERM.
            os.kill(int(job.job_id), signal.SIGTERM)
    follower.poll()
    try:
        outcome = job.task(0).result()
    except Exception as error:  # submitit raises the job's own error or a missing-result error
        out.write(f"the job failed ({job_error_line(error)}); see {job.paths.stderr} and "
                  f"{plan.run_dir / 'log.txt'}\n")
        out.write(failure_excerpt([job.task(i).paths.stderr for i in range(job.num_tasks)]))
        return 1
    if outcome.status == "completed":
        out.write(format_summary(plan.run_dir))
        return 0
    out.write(f"stopped at step {outcome.step} with a checkpoint; resume with the same command "
              f"and --output {plan.run_dir}\n")
    return EXIT_INTERRUPTED if stopping else 1


class _LogFollower:
    """Copies what is appended to some files onto streams (like ``tail -f``)."""

    def __init__(self, pairs: list[tuple[Path, TextIO]]) -> None:
        self.pairs = pairs
        self.offsets = [0] * len(pairs)

    def poll(self) -> None:
        for index, (path, stream) in enumerate(self.pairs):
            try:
                with open(path, encoding="utf-8", errors="replace") as source:
                    source.seek(self.offsets[index])
                    text = source.read()
                    self.offsets[index] = source.tell()
            except FileNotFoundError:
                continue
            if text:
                stream.write(text)
                stream.flush()


def _with_absolute_shards(config: PretrainConfig) -> PretrainConfig:
    """Make a relative shard path absolute: the job may start in another directory."""
    shards = config.data.shards
    if os.path.isabs(shards):
        return config
    data = dataclasses.replace(config.data, shards=os.path.abspath(shards))
    return dataclasses.replace(config, data=data)


def _check_free(run_dir: Path) -> None:
    """Refuse a run folder that a live job owns (queued, running or a live local process)."""
    try:
        check_run_folder_free(run_dir)
    except RunFolderBusyError as error:
        raise LaunchError(str(error)) from None


def _check_restart(run_dir: Path, restart: bool) -> None:
    """Refuse a silent restart from step 0, and a --restart that would resume instead."""
    checkpoints = list_checkpoints(run_dir / "checkpoints")
    if restart and checkpoints:
        raise LaunchError(
            f"--restart: {run_dir} holds {len(checkpoints)} checkpoint(s) (newest "
            f"{checkpoints[-1].name}), which the run would resume from; move them away to train "
            "from step 0, or leave out --restart to resume"
        )
    try:
        check_run_folder(run_dir, restart)
    except RestartRefusedError as error:
        raise LaunchError(str(error)) from None


def _check_resumable(run_dir: Path, config: PretrainConfig, world_size: int) -> bool:
    """True when ``run_dir`` holds a run this config and world size may resume; raise if not."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return False
    try:
        saved = read_yaml(saved_path, "the config of the run") or {}
    except ConfigError as error:
        raise LaunchError(str(error)) from None
    if not isinstance(saved, dict):
        raise LaunchError(f"the config of the run {saved_path} is not a mapping of keys")
    differing = config_fields_differing(saved, config_to_dict(config))
    locked = resume_locked_fields(differing)
    if locked:
        raise LaunchError(
            f"{run_dir} holds a run with different {', '.join(locked)}; use another --output "
            "or the same settings to resume it"
        )
    ranks = recorded_world_size(run_dir / "checkpoints")
    if ranks is not None and ranks != world_size:
        raise LaunchError(
            f"the checkpoints in {run_dir} were written by {ranks} ranks; resume with nodes x "
            f"tasks per node = {ranks}, not {world_size}, or use another --output"
        )
    _check_resume_shards(run_dir / "checkpoints", config)
    return True


def _check_resume_shards(checkpoint_dir: Path, config: PretrainConfig) -> None:
    """The check the job makes before it resumes (same shards as the checkpoints, unless
    ``data.allow_other_shards``), made here so that a refusal comes before submission."""
    saved = recorded_data_fingerprint(checkpoint_dir)
    if saved is None:
        return  # older checkpoints record none: the job checks the checkpoint itself
    try:
        current = shard_fingerprint(config.data.shards)
        check_resume_data(saved, current, str(list_checkpoints(checkpoint_dir)[-1]),
                          config.data.allow_other_shards, log_it=False)
    except (CheckpointError, PrepareError, OSError, ValueError) as error:
        raise LaunchError(str(error)) from None


__all__ = [
    "ConfigError",
    "LaunchError",
    "PretrainPlan",
    "add_pretrain_arguments",
    "format_summary",
    "launch_pretrain",
    "plan_pretrain",
]
