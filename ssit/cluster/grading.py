"""Submitting grading jobs: one job per (dataset, protocol), gathered into one summary table.

:func:`plan_grading` turns the command-line options into checked :class:`GradingTask` s (config
loaded and validated, dataset layout read, encoder buildable) before anything is submitted;
:func:`launch_grading` prints the sbatch script (``--dry-run``), submits a SLURM job array
(one GPU per job) or runs the jobs one after the other on this machine (``--local``), waits,
and writes ``summary.json`` / ``summary.md`` into the run folder.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from ssit.cluster.executor import (
    JobResources,
    LaunchError,
    add_slurm_arguments,
    default_run_dir,
    kill_local_job,
    make_executor,
    sbatch_preview,
)
from ssit.config import ConfigError, load_config
from ssit.error_text import failure_excerpt, job_error_line, last_line
from ssit.evaluate.architecture import EncoderSource, resolve_encoder
from ssit.evaluate.config import DATASETS, PROTOCOLS, RANDOM_ENCODER, EncoderConfig, GradeConfig
from ssit.evaluate.report import write_json
from ssit.evaluate.summary import RESULTS_FILE, summary_table
from ssit.evaluate.test_sets import is_timm_source, read_encoder_source
from ssit.evaluate.validate import check_encoder_builds, validate_grading_config
from ssit.train.run_owner import (
    RunFolderBusyError,
    check_run_folder_free,
    hold_run_folder,
    local_owner,
    submitting_into,
    write_owner,
)

DEFAULT_CONFIG = "grade_paper"
JOB_NAME = "ssit-grade"
DEFAULT_TIME_MIN = 12 * 60
EXIT_INTERRUPTED = 130
_OVERRIDE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+=")


@dataclass(frozen=True)
class GradingTask:
    """One checked grading job: its config and its output folder."""

    name: str
    config: GradeConfig
    out_dir: Path


@dataclass(frozen=True)
class GradingPlan:
    """All jobs of one launch, the run folder and the resources of each job."""

    tasks: list[GradingTask]
    run_dir: Path
    gpus_per_node: int
    cpus_per_task: int

    @property
    def log_dir(self) -> Path:
        """Where submitit keeps the jobs' pickles and console logs."""
        return self.run_dir / "submitit"

    @property
    def resources(self) -> JobResources:
        """What each job of the array asks of the cluster."""
        return JobResources(JOB_NAME, gpus_per_node=self.gpus_per_node,
                            cpus_per_task=self.cpus_per_task)


def add_grade_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every option of the grading launcher to ``parser``."""
    parser.add_argument(
        "--checkpoint",
        help="training checkpoint (ours, the SSiT authors', RETFound's), .safetensors file "
             "from 'ssit export', timm:<name>[=<weights file>], or 'random'",
    )
    parser.add_argument("--arch", help="timm architecture (default: the one the checkpoint "
                        "records, else encoder.arch of the config)")
    parser.add_argument("--branch", choices=("auto", "query", "momentum"),
                        help="which encoder of the checkpoint to grade (default: auto, the "
                        "one its method declares, e.g. DINO's teacher; else query)")
    parser.add_argument("--dataset", nargs="+", metavar="NAME",
                        help=f"one or more of {', '.join(DATASETS)}")
    parser.add_argument("--data", nargs="+", type=Path, metavar="PATH",
                        help="dataset folder, one per --dataset in the same order")
    add_test_set_arguments(parser)
    parser.add_argument("--protocol", nargs="+", default=["finetune"], metavar="NAME",
                        help=f"one or more of {', '.join(PROTOCOLS)} (default: finetune)")
    parser.add_argument(
        "--config", default=DEFAULT_CONFIG,
        help=f"YAML file or packaged config name (default: {DEFAULT_CONFIG})",
    )
    parser.add_argument("--output", type=Path,
                        help="run folder (default: runs/grade-<time>); finished jobs are kept")
    parser.add_argument("--cpu", action="store_true", help="grade on CPUs, no GPU requested")
    parser.add_argument("--cpus-per-task", type=int,
                        help="CPU cores per job (default: data.num_workers + 2)")
    parser.add_argument("--no-wait", action="store_true",
                        help="return after submission (gather later with --summarize)")
    parser.add_argument("--summarize", type=Path, metavar="RUN_DIR",
                        help="only print and write the summary of the finished jobs of a run")
    add_slurm_arguments(parser, default_time_min=DEFAULT_TIME_MIN)
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. train.epochs=10 knn.ks=[10,20]")


def plan_grading(args: argparse.Namespace) -> GradingPlan:
    """Load and validate every job; raise ConfigError/LaunchError (one line) on any problem."""
    for option in ("checkpoint", "dataset", "data"):
        if not getattr(args, option):
            raise LaunchError(f"--{option} is required")
    args = _collect_overrides(args)
    for option, allowed in (("dataset", DATASETS), ("protocol", PROTOCOLS)):
        for value in getattr(args, option):
            if value not in allowed:
                raise LaunchError(f"--{option} {value!r} is not one of {', '.join(allowed)}")
    if len(args.data) != len(args.dataset):
        raise LaunchError(f"give one --data per --dataset ({len(args.dataset)} dataset(s), "
                          f"{len(args.data)} path(s))")
    pairs = [(d, p) for d in args.dataset for p in args.protocol]
    if len(set(pairs)) != len(pairs):
        raise LaunchError("a dataset or protocol is named twice")
    base = load_config(GradeConfig, args.config, [*args.overrides, *test_set_overrides(args)])
    run_dir = (args.output or default_run_dir("grade")).expanduser().absolute()
    if run_dir.exists() and not run_dir.is_dir():
        raise LaunchError(f"--output {run_dir} exists and is not a folder")
    _check_free(run_dir)
    encoder, source = _resolved_encoder(base.encoder, args)
    tasks = []
    for dataset, path in zip(args.dataset, args.data, strict=True):
        for protocol in args.protocol:
            config = _job_config(base, encoder, args, dataset, path, protocol)
            validate_grading_config(config, source, build=False)
            name = f"{dataset}-{protocol}"
            tasks.append(GradingTask(name, config, run_dir / name))
    cpus = args.cpus_per_task if args.cpus_per_task is not None else base.data.num_workers + 2
    if cpus < 1:
        raise LaunchError(f"--cpus-per-task must be at least 1, got {cpus}")
    return GradingPlan(tasks, run_dir, 0 if args.cpu else 1, cpus)


def launch_grading(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Dry-run, submit or run locally the jobs ``args`` describe; return the exit status."""
    out = out or sys.stdout
    if args.summarize:
        out.write(summarize_run(args.summarize) + "\n")
        return 0
    plan = plan_grading(args)
    names = ", ".join(task.name for task in plan.tasks)
    if args.dry_run:
        out.write(f"# {len(plan.tasks)} grading job(s): {names}; nothing submitted\n")
        out.write(f"# run folder: {plan.run_dir}\n")
        if not args.local:
            out.write(f"# submitted as a job array of {len(plan.tasks)} task(s), each with "
                      "this script:\n")
            out.write(sbatch_preview(args, plan.log_dir, plan.resources))
        return 0
    for task in plan.tasks:
        check_encoder_builds(task.config)
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    executor = make_executor(args, plan.log_dir, plan.resources)
    if args.local:
        return _grade_locally(executor, plan, out)
    try:
        with submitting_into(plan.run_dir):
            jobs = _submit(executor, plan.tasks)
            write_owner(plan.run_dir,
                        local_owner(os.getpid(), tuple(str(job.job_id) for job in jobs)))
    except RunFolderBusyError as error:
        raise LaunchError(str(error)) from None
    out.write(f"output folder: {plan.run_dir}\n")
    for job, task in zip(jobs, plan.tasks, strict=True):
        out.write(f"job {job.job_id}: {task.name} -> {task.out_dir}\n")
    out.flush()
    if args.no_wait:
        out.write(f"gather the results later: python launch/grade.py --summarize "
                  f"{plan.run_dir}\n")
        return 0
    try:
        results = [_result(job, task, out) for job, task in zip(jobs, plan.tasks, strict=True)]
    except KeyboardInterrupt:
        print(f"error: interrupted; the jobs keep running on the cluster: gather their "
              f"results later with python launch/grade.py --summarize {plan.run_dir}",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    return _finish(plan, results, out)


def _grade_locally(executor: Any, plan: GradingPlan, out: TextIO) -> int:
    """Run the jobs one after the other on this machine, holding the run folder meanwhile;
    Ctrl-C kills the running job and ends the launcher with one line."""
    with contextlib.ExitStack() as holding:
        try:
            with submitting_into(plan.run_dir):
                holding.enter_context(hold_run_folder(plan.run_dir, wait_s=0))
        except RunFolderBusyError as error:
            raise LaunchError(str(error)) from None
        out.write(f"output folder: {plan.run_dir}\n")
        results, job = [], None
        try:
            for task in plan.tasks:
                job = _submit(executor, [task])[0]
                out.write(f"job {job.job_id}: {task.name} -> {task.out_dir}\n")
                out.flush()
                results.append(_result(job, task, out))
        except KeyboardInterrupt:
            if job is not None:
                kill_local_job(job)
            print(f"error: interrupted; the running grading job was stopped, the finished ones "
                  f"are kept in {plan.run_dir} (the same command grades the rest)",
                  file=sys.stderr)
            return EXIT_INTERRUPTED
    return _finish(plan, results, out)


def _finish(plan: GradingPlan, results: Sequence[dict[str, Any] | None], out: TextIO) -> int:
    """Write the summary of the finished jobs; 0 when every job finished."""
    finished = [result for result in results if result is not None]
    if finished:
        out.write(write_summary(plan.run_dir, finished) + "\n")
    return 0 if len(finished) == len(plan.tasks) else 1


def summarize_run(run_dir: Path) -> str:
    """Summary table of the finished jobs under ``run_dir`` (also written as summary.json/md)."""
    paths = sorted(Path(run_dir).glob(f"*/{RESULTS_FILE}"))
    if not paths:
        raise LaunchError(f"no finished grading job under {run_dir} (no */{RESULTS_FILE})")
    return write_summary(Path(run_dir), [json.loads(path.read_text()) for path in paths])


def write_summary(run_dir: Path, results: Sequence[dict[str, Any]]) -> str:
    """Write summary.json and summary.md into ``run_dir`` and return the table."""
    table = summary_table(results)
    write_json(list(results), run_dir / "summary.json")
    (run_dir / "summary.md").write_text(table + "\n")
    return table


def _collect_overrides(args: argparse.Namespace) -> argparse.Namespace:
    """Move ``key=value`` words swallowed by the multi-value options into the overrides."""
    def is_override(word: str) -> bool:
        return _OVERRIDE.match(str(word)) is not None

    options = ("dataset", "data", "protocol", "test_dataset", "test_data")
    moved = [str(w) for option in options
             for w in getattr(args, option, None) or [] if is_override(w)]
    if not moved:
        return args
    return argparse.Namespace(**{
        **vars(args),
        **{option: [w for w in getattr(args, option) if not is_override(w)]
           for option in options if getattr(args, option, None) is not None},
        "overrides": [*moved, *args.overrides],
    })


def _resolved_encoder(
    encoder: EncoderConfig, args: argparse.Namespace
) -> tuple[EncoderConfig, EncoderSource | None]:
    """The encoder options with ``--checkpoint``, ``--arch`` and ``--branch`` applied and the
    checkpoint's recorded architecture in place of the config's defaults (the checkpoint read
    once, for every job's checks)."""
    checkpoint = args.checkpoint
    if checkpoint != RANDOM_ENCODER and not is_timm_source(checkpoint):
        checkpoint = str(Path(checkpoint).expanduser().absolute())
    try:
        encoder = dataclasses.replace(encoder, checkpoint=checkpoint,
                                      arch=args.arch or encoder.arch,
                                      branch=args.branch or encoder.branch)
        explicit = _explicit_encoder_keys(args)
        source = read_encoder_source(checkpoint, encoder, explicit)
        return resolve_encoder(encoder, source, explicit), source
    except ValueError as error:  # EncoderError included
        raise ConfigError(str(error)) from None


def _explicit_encoder_keys(args: argparse.Namespace) -> set[str]:
    """Encoder keys set on the command line (``--arch``, ``encoder.<key>=...`` overrides)."""
    keys = {"arch"} if args.arch else set()
    for override in args.overrides:
        key = override.split("=", 1)[0].strip()
        if key.startswith("encoder."):
            keys.add(key.removeprefix("encoder."))
    return keys


def _job_config(
    base: GradeConfig, encoder: EncoderConfig, args: argparse.Namespace, dataset: str,
    path: Path, protocol: str,
) -> GradeConfig:
    try:
        data = dataclasses.replace(base.data, dataset=dataset,
                                   path=str(path.expanduser().absolute()))
        train = dataclasses.replace(base.train, protocol=protocol,
                                    device="cpu" if args.cpu else base.train.device)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if data.cache_dir:
        data = dataclasses.replace(data, cache_dir=str(Path(data.cache_dir).absolute()))
    if data.split_file:
        data = dataclasses.replace(data, split_file=str(Path(data.split_file).absolute()))
    data = dataclasses.replace(data, test_sets={
        name: str(Path(folder).expanduser().absolute()) for name, folder in data.test_sets.items()})
    return dataclasses.replace(base, encoder=encoder, data=data, train=train)


def _submit(executor: Any, tasks: Sequence[GradingTask]) -> list[Any]:
    # The job's code (torch, timm) loads only now that jobs are submitted.
    from ssit.evaluate.job import GradingJob

    try:
        with executor.batch():
            jobs = [executor.submit(GradingJob(task.config, task.out_dir)) for task in tasks]
    except Exception as error:  # submitit wraps sbatch's refusal in several exception types
        raise LaunchError(f"submission failed: {last_line(error)}") from None
    return jobs


def _result(job: Any, task: GradingTask, out: TextIO) -> dict[str, Any] | None:
    try:
        return job.result()
    except Exception as error:  # a failed job is reported and the others still summarised
        out.write(f"job {job.job_id} ({task.name}) failed: {job_error_line(error)}; "
                  f"see {job.paths.stderr}\n")
        out.write(failure_excerpt([job.paths.stderr]))
        return None


def _check_free(run_dir: Path) -> None:
    """Refuse a run folder whose grading jobs are alive (queued, running, or run locally)."""
    try:
        check_run_folder_free(run_dir)
    except RunFolderBusyError as error:
        raise LaunchError(str(error)) from None


def add_test_set_arguments(parser: argparse.ArgumentParser) -> None:
    """``--test-dataset`` / ``--test-data``: external test sets for every job."""
    parser.add_argument("--test-dataset", nargs="+", metavar="NAME",
                        help="external test set(s), e.g. messidor2: the selected model of every "
                             "job is also tested on all of its images")
    parser.add_argument("--test-data", nargs="+", type=Path, metavar="PATH",
                        help="folder of each --test-dataset, in the same order")


def test_set_overrides(args: argparse.Namespace) -> list[str]:
    """The ``data.test_sets.<name>=<folder>`` overrides that the test-set options stand for."""
    names, folders = args.test_dataset or [], args.test_data or []
    if len(names) != len(folders):
        raise LaunchError(f"give one --test-data per --test-dataset ({len(names)} test set(s), "
                          f"{len(folders)} path(s))")
    for name in names:
        if name not in DATASETS:
            raise LaunchError(f"--test-dataset {name!r} is not one of {', '.join(DATASETS)}")
    if len(set(names)) != len(names):
        raise LaunchError("a --test-dataset is named twice")
    return [f"data.test_sets.{name}={Path(folder).expanduser().absolute()}"
            for name, folder in zip(names, folders, strict=True)]
