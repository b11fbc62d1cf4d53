"""Grading runs: one launcher or job per output folder at a time, and Ctrl-C in ``--local``."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ssit.cluster.executor import LaunchError
from ssit.cluster.grading import add_grade_arguments, plan_grading
from ssit.evaluate.job import GradingJob
from ssit.train.run_owner import (
    RunFolderBusyError,
    RunOwner,
    live_owner,
    local_owner,
    read_owner,
    write_owner,
)
from tests.evaluate.test_job import TINY, tiny_config
from tests.launcher_processes import REPO_ROOT, Launch, import_path, session_processes, wait_until

GRADER = REPO_ROOT / "launch" / "grade.py"
HOST = socket.gethostname()


def grade_args(shards: Path, run_dir: Path, *extra: str) -> list[str]:
    """A local fine-tuning of a random encoder on the demo shards (``extra``: more options)."""
    return ["--checkpoint", "random", "--dataset", "shards", "--data", str(shards),
            "--protocol", "finetune", "--cpu", "--local", "--config", "grade_tiny_cpu",
            "--output", str(run_dir), *TINY, *extra]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_grade_arguments(parser)
    return parser.parse_intermixed_args(argv)


@contextlib.contextmanager
def held(run_dir: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holds ``run_dir`` (as a grading job or local launcher does)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom ssit.train.run_owner import "
         "hold_run_folder\nwith hold_run_folder(sys.argv[1], wait_s=0):\n"
         "    print('holding', flush=True)\n    time.sleep(600)\n", str(run_dir)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, **import_path()})
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "holding\n"
        yield holder
    finally:
        holder.kill()
        holder.wait()


def test_grading_into_a_held_folder_is_refused_before_submission(demo_shards, tmp_path) -> None:
    run_dir = tmp_path / "grade"
    with held(run_dir) as holder:
        with pytest.raises(LaunchError) as refused:
            plan_grading(parse(grade_args(demo_shards, run_dir, "--dry-run")))
        assert str(refused.value) == (
            f"{run_dir} is in use by process {holder.pid} on host {HOST}; wait for that run to "
            "end or stop it, or use another --output")
    # Killed: its record is stale and the folder is taken over.
    assert plan_grading(parse(grade_args(demo_shards, run_dir))).run_dir == run_dir


def test_stale_grading_records_are_taken_over(demo_shards, tmp_path) -> None:
    run_dir = tmp_path / "grade"
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    for owner in (local_owner(ended.pid), RunOwner("login1", 4, ("999999998_0", "999999998_1"))):
        write_owner(run_dir, owner)
        assert plan_grading(parse(grade_args(demo_shards, run_dir))).run_dir == run_dir


def test_grading_job_refuses_a_folder_another_job_writes(layouts, tmp_path) -> None:
    out_dir = tmp_path / "aptos-knn"
    cfg = tiny_config("aptos2019", layouts["aptos2019"], "knn")
    with held(out_dir) as holder, pytest.raises(RunFolderBusyError) as refused:
        GradingJob(cfg, out_dir)()
    assert f"in use by process {holder.pid} on host {HOST}" in str(refused.value)
    assert not (out_dir / "results.json").exists() and not (out_dir / "grade.log").exists()


@pytest.fixture
def launches() -> Iterator[Callable[[list[str], Path], Launch]]:
    started: list[Launch] = []

    def start(args: list[str], folder: Path) -> Launch:
        started.append(Launch(GRADER, args, folder))
        return started[-1]

    yield start
    for launch in started:
        launch.end()


@pytest.mark.slow
def test_local_grading_owns_its_folder_and_ctrl_c_stops_its_job(demo_shards, tmp_path,
                                                               launches) -> None:
    run_dir = tmp_path / "grade"
    args = grade_args(demo_shards, run_dir, "train.epochs=200")
    first = launches(args, tmp_path / "first")
    job_log = run_dir / "shards-finetune" / "grade.log"
    wait_until(job_log.is_file, first, "grading job")
    assert live_owner(run_dir) == f"process {first.process.pid} on host {HOST}"
    assert read_owner(run_dir / "shards-finetune").pid != first.process.pid

    second = subprocess.run([sys.executable, str(GRADER), *args], cwd=REPO_ROOT,
                            env={**os.environ, **import_path()}, capture_output=True,
                            text=True, timeout=120)
    assert second.returncode == 2 and second.stdout == ""
    assert second.stderr == (
        f"error: {run_dir} is in use by process {first.process.pid} on host {HOST}; wait for "
        "that run to end or stop it, or use another --output\n")

    first.process.send_signal(signal.SIGINT)  # the launcher only, as `kill -INT` does
    assert first.wait(timeout=60) == 130
    assert first.stderr.splitlines()[-1] == (
        f"error: interrupted; the running grading job was stopped, the finished ones are kept "
        f"in {run_dir} (the same command grades the rest)")
    assert "Traceback" not in first.stderr
    assert session_processes(first.process.pid) == []  # no job left training
    assert live_owner(run_dir) is None and live_owner(run_dir / "shards-finetune") is None
