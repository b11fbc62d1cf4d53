"""``launch/pretrain.py --local`` as a user runs it: one run per folder at a time, Ctrl-C, and
what the launcher says when its job is killed. Real launcher, controller and rank processes."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ssit.cluster.executor import descendants
from ssit.train.checkpoint import list_checkpoints
from ssit.train.run_owner import live_owner, read_owner
from tests.cluster.conftest import LAUNCHER, REPO_ROOT, checkout_import_path, tiny_overrides
from tests.launcher_processes import Launch, session_processes, wait_until

pytestmark = pytest.mark.slow

HOST = socket.gethostname()


def local_args(shards: Path, run_dir: Path, *extra: str) -> list[str]:
    """A local one-rank run long enough to be interrupted (200 epochs of 12 steps), with no
    checkpoint before the 100th epoch."""
    return ["--local", "--cpu", "--config", "demo_tiny_cpu", "--output", str(run_dir),
            *tiny_overrides(shards), "optim.epochs=200", "checkpoint.every_epochs=100", *extra]


def trained(run_dir: Path) -> Callable[[], bool]:
    """Whether the run logged a training step (after a resume: since it resumed)."""
    def check() -> bool:
        log = run_dir / "log.txt"
        text = log.read_text() if log.is_file() else ""
        since = text[max(0, text.rfind("resuming from")):]
        return re.search(r" step \d+ epoch ", since) is not None
    return check


@pytest.fixture
def launches() -> Iterator[Callable[[list[str], Path], Launch]]:
    started: list[Launch] = []

    def start(args: list[str], folder: Path) -> Launch:
        started.append(Launch(LAUNCHER, args, folder))
        return started[-1]

    yield start
    for launch in started:
        launch.end()


def run_launcher_now(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(LAUNCHER), *args], cwd=REPO_ROOT,
                          env={**os.environ, **checkout_import_path()}, capture_output=True,
                          text=True, timeout=timeout)


def test_second_local_run_into_a_live_folder_is_refused_until_the_first_is_killed(
    demo_shards: Path, tmp_path: Path, launches
) -> None:
    run_dir = tmp_path / "run"
    # The progress bar writes to the console: a killed job must not be reported by a fragment.
    args = local_args(demo_shards, run_dir, "log.progress_bar=true")
    first = launches(args, tmp_path / "first")
    wait_until(trained(run_dir), first, "training step")
    owner = read_owner(run_dir)
    assert owner is not None and owner.pid in descendants(first.process.pid)
    assert live_owner(run_dir) == f"process {owner.pid} on host {HOST}"

    second = run_launcher_now(args)
    assert second.returncode == 2 and second.stdout == ""
    assert second.stderr == (
        f"error: {run_dir} is in use by process {owner.pid} on host {HOST}; wait for that run "
        "to end or stop it, or use another --output\n")

    os.kill(owner.pid, signal.SIGKILL)  # rank 0, which holds the folder
    assert first.wait() == 1
    failed = [line for line in first.stdout.splitlines() if line.startswith("the job failed (")]
    assert len(failed) == 1, first.stdout
    assert "%|" not in failed[0] and "it/s" not in failed[0] and "s/it" not in failed[0]
    assert "has not produced any output" in failed[0]

    # Trained before, no checkpoint yet: a restart from step 0 is what the launcher allows.
    accepted = run_launcher_now([*args, "--restart", "--dry-run"])
    assert accepted.returncode == 0, accepted.stderr
    assert accepted.stdout == f"# would run 1 local task(s) into {run_dir}\n"


def test_ctrl_c_stops_the_local_run_with_a_checkpoint_and_twice_kills_it(
    demo_shards: Path, tmp_path: Path, launches
) -> None:
    run_dir = tmp_path / "run"
    args = local_args(demo_shards, run_dir)
    # Once: every rank stops at a step boundary with a checkpoint, nothing keeps running.
    first = launches(args, tmp_path / "first")
    wait_until(trained(run_dir), first, "training step")
    first.process.send_signal(signal.SIGINT)
    assert first.wait() == 130, first.stderr
    assert "stopped at step" in first.stdout and "with a checkpoint" in first.stdout
    assert "Traceback" not in first.stderr
    assert session_processes(first.process.pid) == []
    assert live_owner(run_dir) is None

    # Twice: the job's processes are killed at once, one line, exit status 130.
    assert len(list_checkpoints(run_dir / "checkpoints")) == 1
    second = launches(args, tmp_path / "second")
    wait_until(lambda: "resuming from" in (run_dir / "log.txt").read_text(), second, "resume")
    wait_until(trained(run_dir), second, "training step")
    second.process.send_signal(signal.SIGINT)
    time.sleep(0.5)
    second.process.send_signal(signal.SIGINT)
    assert second.wait(timeout=60) == 130
    assert second.stderr.splitlines()[-1] == (
        f"error: interrupted; the local job was killed; resume from its last checkpoint with "
        f"the same command and --output {run_dir}")
    assert "Traceback" not in second.stderr
    assert session_processes(second.process.pid) == []
    assert live_owner(run_dir) is None
