"""The worker pool of the offline stage, with real worker processes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ssit.prepare.workers import WorkerDiedError, parallel_map
from tests.prepare import worker_tasks
from tests.prepare.worker_tasks import DIE_ON, dies_on_one_item, loaded_marker

REPO = Path(__file__).resolve().parents[2]


def test_results_come_in_input_order():
    names = [f"{i}.jpg" for i in range(7)]
    assert list(parallel_map(dies_on_one_item, names, 2, describe=str)) == names


@pytest.mark.parametrize("jobs", [1, 2])
def test_workers_start_with_what_the_warm_up_loaded(jobs, monkeypatch):
    """The warm-up runs once, in this process; forked workers inherit what it loaded."""
    monkeypatch.setattr(worker_tasks, "LOADED", None)
    calls = []

    def warm_up() -> None:
        calls.append(os.getpid())
        worker_tasks.LOADED = "warm"

    results = list(parallel_map(loaded_marker, range(4), jobs, warm_up=warm_up))
    assert calls == [os.getpid()]
    assert [marker for marker, _ in results] == ["warm"] * 4
    workers = {pid for _, pid in results}
    assert (workers == {os.getpid()}) if jobs == 1 else (os.getpid() not in workers)


@pytest.mark.timeout(120)
def test_a_dead_worker_is_named_with_its_file():
    names = ["a.jpg", "b.jpg", "c.jpg", DIE_ON, "d.jpg", "e.jpg", "f.jpg"]
    with pytest.raises(WorkerDiedError) as info:
        list(parallel_map(dies_on_one_item, names, 2, describe=lambda name: f"raw/{name}"))
    message = str(info.value)
    assert f"while processing raw/{DIE_ON}" in message
    assert "raw/a.jpg" not in message and "raw/d.jpg" not in message
    assert "\n" not in message


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.update(int(p) for p in text)
    return found


def _alive(pid: int) -> bool:
    """Running and not a zombie (an orphan's zombie may wait long for its reaper)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


@pytest.mark.timeout(120)
def test_workers_exit_when_their_parent_is_killed():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    parent = subprocess.Popen([sys.executable, "-m", "tests.prepare.worker_tasks"], cwd=REPO,
                              env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        workers: set[int] = set()
        while len(workers) < 2:
            assert parent.poll() is None, "the parent ended early"
            assert time.monotonic() < deadline, "no workers started"
            time.sleep(0.1)
            # A resource tracker may be a child too; workers are the ones running the pool.
            workers = {p for p in _children(parent.pid)
                       if b"resource_tracker" not in Path(f"/proc/{p}/cmdline").read_bytes()}
        time.sleep(1.0)  # let them settle into their minute-long tasks
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 5
        while any(_alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [p for p in workers if _alive(p)], "workers outlived their parent"
    finally:
        with contextlib.suppress(ProcessLookupError):  # survivors are in its process group
            os.killpg(parent.pid, signal.SIGKILL)
        parent.wait()
