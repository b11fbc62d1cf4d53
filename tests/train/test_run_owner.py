"""One writer per run folder: the owner record, the lock held by a live process, and what makes
an owner stale (a dead process, a finished or unknown SLURM job) or the same job (a requeue)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ssit.train.run_owner import (
    OWNER_DIR,
    RunFolderBusyError,
    RunOwner,
    check_run_folder_free,
    current_owner,
    hold_run_folder,
    live_owner,
    local_owner,
    read_owner,
    slurm_job_state,
    submitting_into,
    write_owner,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST = socket.gethostname()
# A process that owns a folder until it is killed: it prints once it holds the lock.
HOLDER = (
    "import sys, time\n"
    "from ssit.train.run_owner import hold_run_folder\n"
    "with hold_run_folder(sys.argv[1], wait_s=0):\n"
    "    print('holding', flush=True)\n"
    "    time.sleep(600)\n"
)


def squeue_says(states: dict[str, str]):
    """What ``squeue -h -j ID -o %T`` would print for each job (None: not found)."""
    return states.get


@pytest.fixture
def holder(tmp_path: Path):
    """Start a process that holds ``tmp_path / 'run'``; yields it (killed at the end)."""
    started: list[subprocess.Popen[str]] = []

    def start(run_dir: Path) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, cwd=REPO_ROOT)
        started.append(process)
        assert process.stdout is not None and process.stdout.readline() == "holding\n"
        return process

    yield start
    for process in started:
        process.kill()
        process.wait()


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_new_folder_is_free_and_holding_it_records_this_process(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    assert live_owner(run_dir) is None
    with hold_run_folder(run_dir, wait_s=0) as owner:
        assert owner == read_owner(run_dir)
        assert (owner.host, owner.pid, owner.jobs) == (HOST, os.getpid(), ())
    # Once the holder is gone its record is stale: the folder is free again.
    assert live_owner(run_dir) is None
    check_run_folder_free(run_dir)


def test_live_holder_is_refused_and_named_then_taken_over_after_kill_9(tmp_path, holder) -> None:
    run_dir = tmp_path / "run"
    process = holder(run_dir)
    assert live_owner(run_dir) == f"process {process.pid} on host {HOST}"
    with pytest.raises(RunFolderBusyError) as refused:
        check_run_folder_free(run_dir)
    assert str(refused.value) == (
        f"{run_dir} is in use by process {process.pid} on host {HOST}; wait for that run to end "
        "or stop it, or use another --output")
    with (pytest.raises(RunFolderBusyError, match=f"in use by process {process.pid} on host"),
          hold_run_folder(run_dir, wait_s=0.5)):
        pass
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert live_owner(run_dir) is None
    with hold_run_folder(run_dir, wait_s=0) as owner:
        assert read_owner(run_dir) == owner


def test_stale_record_of_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    write_owner(run_dir, RunOwner(HOST, dead_pid(), (), 12345))
    assert live_owner(run_dir) is None
    with hold_run_folder(run_dir, wait_s=0):
        assert read_owner(run_dir).pid == os.getpid()


def test_an_ended_process_not_yet_reaped_is_stale(tmp_path: Path) -> None:
    """A killed job whose parent has not reaped it (a zombie) holds nothing any more."""
    run_dir = tmp_path / "run"
    ended = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        write_owner(run_dir, local_owner(ended.pid))
        assert live_owner(run_dir) == f"process {ended.pid} on host {HOST}"
        ended.kill()
        deadline = time.monotonic() + 30
        while Path(f"/proc/{ended.pid}/stat").read_text().split(") ")[1][0] != "Z":
            assert time.monotonic() < deadline, "the killed process never ended"
            time.sleep(0.05)
        assert live_owner(run_dir) is None
    finally:
        ended.kill()
        ended.wait()


def test_live_local_process_without_the_lock_yet_is_refused(tmp_path: Path) -> None:
    """A local job whose rank 0 has not taken the lock yet is still its controller's."""
    run_dir = tmp_path / "run"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        write_owner(run_dir, local_owner(sleeper.pid))
        assert live_owner(run_dir) == f"process {sleeper.pid} on host {HOST}"
        # The same pid, but a process started at another time: the pid was reused.
        reused = local_owner(sleeper.pid)
        write_owner(run_dir, RunOwner(HOST, sleeper.pid, (), reused.started + 1))
        assert live_owner(run_dir) is None
        # A process of another host cannot be checked from here: only its lock counts.
        write_owner(run_dir, RunOwner("elsewhere", sleeper.pid, ()))
        assert live_owner(run_dir) is None
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.parametrize("state", ["PENDING", "RUNNING", "REQUEUE_HOLD", "SUSPENDED",
                                   "COMPLETING"])
def test_queued_or_running_slurm_job_is_refused_naming_it(tmp_path: Path, state: str) -> None:
    run_dir = tmp_path / "run"
    write_owner(run_dir, RunOwner("login1", 99, ("4711",)))
    squeue = squeue_says({"4711": state})
    assert live_owner(run_dir, squeue) == f"SLURM job 4711 ({state})"
    with pytest.raises(RunFolderBusyError) as refused:
        check_run_folder_free(run_dir, job_state=squeue)
    assert str(refused.value) == (f"{run_dir} is in use by SLURM job 4711 ({state}); wait for "
                                  "that run to end or stop it, or use another --output")
    # A job that got past the launcher (plain sbatch) refuses at its start too.
    other = RunOwner("node2", 7, ("4712",))
    with (pytest.raises(RunFolderBusyError, match="in use by SLURM job 4711"),
          hold_run_folder(run_dir, other, wait_s=0, job_state=squeue)):
        pass
    assert read_owner(run_dir).jobs == ("4711",)


@pytest.mark.parametrize("state", [None, "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT",
                                   "NODE_FAIL", "OUT_OF_MEMORY"])
def test_finished_or_unknown_slurm_job_is_stale(tmp_path: Path, state: str | None) -> None:
    run_dir = tmp_path / "run"
    write_owner(run_dir, RunOwner("login1", 99, ("4711",)))
    squeue = squeue_says({} if state is None else {"4711": state})
    assert live_owner(run_dir, squeue) is None
    new = RunOwner("node1", 8, ("4800",))
    with hold_run_folder(run_dir, new, wait_s=0, job_state=squeue):
        assert read_owner(run_dir) == new


def test_requeued_job_is_its_own_owner(tmp_path: Path) -> None:
    """A requeue keeps the job id: the record of its earlier attempt (the job is RUNNING again)
    names itself, so the new attempt takes the folder."""
    run_dir = tmp_path / "run"
    environ = {"SLURM_JOB_ID": "4711", "SLURMD_NODENAME": "node1", "SLURM_RESTART_COUNT": "1"}
    attempt = current_owner(environ)
    assert attempt.jobs == ("4711",) and attempt.pid == os.getpid()
    write_owner(run_dir, RunOwner("node2", 5, ("4711",)))
    with hold_run_folder(run_dir, attempt, wait_s=0,
                         job_state=squeue_says({"4711": "RUNNING"})):
        assert read_owner(run_dir) == attempt


def test_owner_of_an_array_task_and_of_a_local_submitit_job() -> None:
    array = current_owner({"SLURM_JOB_ID": "90", "SLURM_ARRAY_JOB_ID": "88",
                           "SLURM_ARRAY_TASK_ID": "2"})
    assert array.jobs == ("88_2",) and array.describe() == "SLURM job 88_2"
    # submitit's local executor inside a SLURM allocation: a local process, not that job.
    local = current_owner({"SLURM_JOB_ID": "90", "SUBMITIT_EXECUTOR": "local"})
    assert local.jobs == () and local.describe() == f"process {os.getpid()} on host {HOST}"
    assert RunOwner("h", 1, ("5", "6")).describe() == "SLURM jobs 5, 6"


def test_a_job_waits_for_the_lock_briefly(tmp_path: Path, holder) -> None:
    """The lock is waited for (a launcher probing it, an earlier attempt still ending)."""
    run_dir = tmp_path / "run"
    process = holder(run_dir)
    killer = subprocess.Popen([sys.executable, "-c",
                               f"import os, time; time.sleep(1); os.kill({process.pid}, 9)"])
    started = time.monotonic()
    with hold_run_folder(run_dir, wait_s=30) as owner:
        assert read_owner(run_dir) == owner
    assert 0.5 < time.monotonic() - started < 25
    killer.wait()


def test_one_launcher_at_a_time(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with submitting_into(run_dir), pytest.raises(RunFolderBusyError) as refused, \
            submitting_into(run_dir):
        pass
    assert str(refused.value) == (f"another launcher is submitting into {run_dir} right now; "
                                  "wait for it, or use another --output")
    with submitting_into(run_dir):
        pass


def test_unreadable_record_counts_as_none(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    (run_dir / OWNER_DIR).mkdir(parents=True)
    for text in ("", "{", "[]", json.dumps({"host": "h"}), json.dumps({"host": "h", "pid": "x"})):
        (run_dir / OWNER_DIR / "record.json").write_text(text)
        assert read_owner(run_dir) is None
        assert live_owner(run_dir) is None


def test_unknown_slurm_job_is_finished_for_the_real_squeue() -> None:
    """Whatever SLURM this machine has (none, unconfigured or a test cluster), a job id it never
    issued is not alive."""
    assert slurm_job_state("999999999") is None
