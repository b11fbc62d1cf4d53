"""The job's signal flags, rendezvous variables and resubmission, without a cluster."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from submitit.core.job_environment import JobEnvironment
from submitit.core.utils import DelayedSubmission

from ssit.cluster.job import (
    RENDEZVOUS_PORTS,
    PretrainJob,
    StopRequest,
    cpu_threads,
    preemption_signal,
    record_failure,
    rendezvous_environment,
    rendezvous_port,
)
from ssit.config import ConfigError
from ssit.train.config import PretrainConfig
from ssit.train.run_owner import RunFolderBusyError
from tests.cluster.conftest import checkout_import_path

SLURM_TASK = {
    "SUBMITIT_EXECUTOR": "slurm",
    "SLURM_JOB_ID": "4321",
    "SLURM_NTASKS": "8",
    "SLURM_JOB_NUM_NODES": "2",
    "SLURM_NODEID": "1",
    "SLURM_PROCID": "5",
    "SLURM_LOCALID": "1",
    "SLURM_JOB_NODELIST": "gpu[07-08]",
}


def set_environment(monkeypatch: pytest.MonkeyPatch, values: dict[str, str]) -> None:
    for key in list(os.environ):
        if key.startswith(("SLURM_", "SUBMITIT_")):
            monkeypatch.delenv(key)
    for key, value in values.items():
        monkeypatch.setenv(key, value)


def test_rendezvous_port_is_in_range() -> None:
    low, high = RENDEZVOUS_PORTS
    for job_id in ("1", "4321", "987654_3"):
        for attempt in range(5):
            port = rendezvous_port(job_id, attempt)
            assert low <= port < high


def test_rendezvous_port_changes_with_every_attempt() -> None:
    for job_id in ("1", "4321", "987654_3"):
        ports = [rendezvous_port(job_id, attempt) for attempt in range(5)]
        assert len(set(ports)) == len(ports)


def test_rendezvous_port_differs_between_jobs() -> None:
    assert rendezvous_port("4321", 0) != rendezvous_port("4322", 0)


def test_rendezvous_environment_of_a_slurm_task(monkeypatch: pytest.MonkeyPatch) -> None:
    set_environment(monkeypatch, SLURM_TASK)
    environment = rendezvous_environment(JobEnvironment())
    assert environment == {
        "MASTER_ADDR": "gpu07",
        "MASTER_PORT": str(rendezvous_port("4321", 0)),
        "RANK": "5",
        "WORLD_SIZE": "8",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "4",
    }


def test_requeued_task_meets_on_a_fresh_port(monkeypatch: pytest.MonkeyPatch) -> None:
    set_environment(monkeypatch, {**SLURM_TASK, "SLURM_RESTART_COUNT": "2"})
    environment = rendezvous_environment(JobEnvironment())
    assert environment["MASTER_PORT"] == str(rendezvous_port("4321", 2))
    assert environment["MASTER_PORT"] != str(rendezvous_port("4321", 0))


def test_rendezvous_environment_of_a_local_task(monkeypatch: pytest.MonkeyPatch) -> None:
    set_environment(monkeypatch, {
        "SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_JOB_ID": "777",
        "SUBMITIT_LOCAL_NTASKS": "2", "SUBMITIT_LOCAL_JOB_NUM_NODES": "1",
        "SUBMITIT_LOCAL_NODEID": "0", "SUBMITIT_LOCAL_GLOBALID": "1",
        "SUBMITIT_LOCAL_LOCALID": "1",
    })
    environment = rendezvous_environment(JobEnvironment())
    assert environment["MASTER_ADDR"] == "127.0.0.1"
    assert environment["RANK"] == "1" and environment["WORLD_SIZE"] == "2"
    assert environment["MASTER_PORT"] == str(rendezvous_port("777", 0))


def test_preemption_signal_is_submitits_and_not_nccls() -> None:
    assert preemption_signal() == signal.SIGUSR2


def test_unknown_preemption_signal_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(JobEnvironment, "USR_SIG", "NOPE")
    with pytest.raises(ValueError, match="unknown preemption signal SIGNOPE"):
        preemption_signal()


@pytest.fixture
def stop_request() -> Iterator[StopRequest]:
    request = StopRequest().install()
    yield request
    request.uninstall()


def test_preemption_signal_asks_for_a_requeue(stop_request: StopRequest) -> None:
    assert not stop_request()
    os.kill(os.getpid(), signal.SIGUSR2)
    assert stop_request.requeue and not stop_request.terminate
    assert stop_request()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_termination_signals_ask_to_stop_without_requeue(
    stop_request: StopRequest, signum: int
) -> None:
    os.kill(os.getpid(), signum)
    assert stop_request.terminate and not stop_request.requeue
    assert stop_request()


def test_uninstall_puts_the_previous_handlers_back() -> None:
    def earlier(signum: int, frame: object) -> None:
        raise AssertionError("not expected to run")

    previous = signal.signal(signal.SIGUSR2, earlier)
    try:
        request = StopRequest().install()
        assert signal.getsignal(signal.SIGUSR2) is not earlier
        os.kill(os.getpid(), signal.SIGUSR2)
        assert request.requeue
        assert request.previous_handler(signal.SIGUSR2) is earlier
        request.uninstall()
        assert signal.getsignal(signal.SIGUSR2) is earlier
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_cpu_threads_follow_slurm_then_the_machine() -> None:
    assert cpu_threads({"SLURM_CPUS_PER_TASK": "3"}, local_world_size=8) == 3
    machine = len(os.sched_getaffinity(0))
    assert cpu_threads({}, local_world_size=1) == machine
    assert cpu_threads({}, local_world_size=machine + 1) == 1


def test_checkpoint_resubmits_the_same_job(tmp_path: Path) -> None:
    job = PretrainJob(PretrainConfig(), tmp_path / "run", timeout_s=60.0, max_requeues=4)
    delayed = job.checkpoint()
    assert isinstance(delayed, DelayedSubmission)
    assert delayed.function == job and delayed.function is not job
    assert delayed.args == () and delayed.kwargs == {}
    pickled = tmp_path / "job.pkl"
    delayed.dump(pickled)
    assert DelayedSubmission.load(pickled).function == job


def test_a_failed_rank_records_why_in_log_txt(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "log.txt").write_text("2026-01-01 00:00:00 INFO ssit.train.engine: step 1\n")
    try:
        raise RuntimeError("Connection closed by peer\n(more detail on the next line)")
    except RuntimeError as error:
        record_failure(run_dir, 3, error, "/runs/x/submitit/77_3_log.err")
    lines = (run_dir / "log.txt").read_text().splitlines()
    assert len(lines) == 2 and lines[0].endswith("step 1")
    assert lines[1].endswith(" rank 3 ERROR the job failed: RuntimeError: Connection closed by "
                             "peer (traceback in /runs/x/submitit/77_3_log.err)")


def test_failure_of_a_job_goes_into_log_txt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                            ) -> None:
    """The real job object on one local rank, failing at start: the reason is in log.txt."""
    set_environment(monkeypatch, {"SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_JOB_ID": "55",
                                  "SUBMITIT_LOCAL_GLOBAL_RANK": "0",
                                  "SUBMITIT_LOCAL_NTASKS": "1", "SUBMITIT_LOCAL_LOCALID": "0",
                                  "SUBMITIT_FOLDER": str(tmp_path / "run" / "submitit")})
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    # The shards went away after submission: the job's own check fails.
    job = PretrainJob(PretrainConfig(device="cpu"), tmp_path / "run")
    with pytest.raises(ConfigError):
        job()
    text = (tmp_path / "run" / "log.txt").read_text()
    assert "rank 0 ERROR the job failed: ConfigError: data.shards 'shards/eyepacs': " in text
    stderr = tmp_path / "run" / "submitit" / "55_0_log.err"
    assert text.rstrip().endswith(f"(traceback in {stderr})")


def test_a_job_refuses_a_folder_another_job_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                   ) -> None:
    """Two jobs into one folder that both got past the launcher: the second one's rank 0 stops
    at its start naming the first, and writes nothing there (not even into log.txt)."""
    set_environment(monkeypatch, {"SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_JOB_ID": "56",
                                  "SUBMITIT_LOCAL_GLOBAL_RANK": "0",
                                  "SUBMITIT_LOCAL_NTASKS": "1", "SUBMITIT_LOCAL_LOCALID": "0",
                                  "SUBMITIT_FOLDER": str(tmp_path / "submitit")})
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    run_dir = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom ssit.train.run_owner import "
         "hold_run_folder\nwith hold_run_folder(sys.argv[1], wait_s=0):\n"
         "    print('holding', flush=True)\n    time.sleep(600)\n", str(run_dir)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, **checkout_import_path()})
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "holding\n"
        job = PretrainJob(PretrainConfig(device="cpu"), run_dir)
        monkeypatch.setattr("ssit.train.run_owner.LOCK_WAIT_S", 0.5)
        with pytest.raises(RunFolderBusyError, match=rf"{run_dir} is in use by process "
                           rf"{holder.pid} on host "):
            job()
    finally:
        holder.kill()
        holder.wait()
    assert sorted(path.name for path in run_dir.iterdir()) == [".owner"]
