"""End to end on the one-machine SLURM cluster: two ranks on two nodes, preemption, failures."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from ssit.train.checkpoint import checkpoint_path, load_checkpoint
from tests.cluster.conftest import (
    EPOCHS,
    FINISHED_STATES,
    LAUNCHER,
    REPO_ROOT,
    STEPS_PER_EPOCH,
    SlurmCluster,
    checkout_import_path,
    submitted_job_id,
    tiny_overrides,
)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

TOTAL_STEPS = EPOCHS * STEPS_PER_EPOCH
STEP_LINE = re.compile(r" step (\d+) epoch ")
STOPPED_LINE = re.compile(r"stopped at step (\d+) on request")
# The scenarios run side by side on the machine's cores; on a busy 2-core machine they took up to
# 7 minutes, so the deadline leaves room for that. The wait ends once every job has finished.
RUNS_TIMEOUT_S = 900
# DINO shrunk to the size of the tiny SSiT run: one block at 32 px, two local crops of 16 px.
DINO_TINY = ("backbone.img_size=32", "backbone.kwargs={depth: 1}", "method.out_dim=64",
             "method.head_hidden_dim=32", "method.head_bottleneck_dim=16",
             "method.local_crops_size=16")
# A dead rank must end the job within a couple of minutes.
FAILURE_BOUND_S = 120


def launcher_args(shards: Path, output: Path, *extra: str, time_min: int = 15,
                  config: str = "demo_tiny_cpu") -> list[str]:
    """Options of the tiny two-node CPU run (SSiT unless another packaged ``config``)."""
    return ["--cpu", "--nodes", "2", "--config", config, "--time", str(time_min),
            "--output", str(output), *extra, *tiny_overrides(shards)]


def final_model(run_dir: Path) -> dict[str, torch.Tensor]:
    """The model weights of a run's last checkpoint."""
    return load_checkpoint(checkpoint_path(run_dir / "checkpoints", TOTAL_STEPS))["model"]


def assert_identical(left: dict[str, torch.Tensor], right: dict[str, torch.Tensor]) -> None:
    assert left.keys() == right.keys()
    differing = [name for name in left if not torch.equal(left[name], right[name])]
    assert not differing, f"weights differ in {differing[:5]}"


def log_text(run_dir: Path) -> str:
    path = run_dir / "log.txt"
    return path.read_text() if path.is_file() else ""


@dataclass
class Scenario:
    """One job of the session and what the test does to it while it runs."""

    run_dir: Path
    command: list[str]
    plain_sbatch: bool = False
    preemptions: int = 0
    kill_rank_1: bool = False
    launcher: subprocess.Popen[str] | None = None
    job_id: str = ""
    state: str = ""
    restarts: int = 0
    signalled: int = 0
    stops: list[int] = field(default_factory=list)
    killed_at: float | None = None
    failed_after_s: float | None = None

    def submit(self, cluster: SlurmCluster) -> None:
        self.run_dir.mkdir(parents=True)
        self.launcher = subprocess.Popen(self.command, env=cluster.env, cwd=REPO_ROOT,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         text=True)

    def poll(self, cluster: SlurmCluster) -> None:
        """Advance the scenario: learn the job id, then preempt or kill as planned."""
        if not self.job_id and self.plain_sbatch:
            if self.launcher is None or self.launcher.poll() is None:
                return
            self.job_id = self.launcher_output().strip()
        if not self.job_id:
            # submitit names the sbatch script after the job as soon as sbatch answers; the
            # launcher itself may take a while longer to exit.
            scripts = list((self.run_dir / "submitit").glob("*_submission.sh"))
            if not scripts:
                assert self.launcher is None or self.launcher.poll() in (None, 0), \
                    self.launcher.communicate()[1]
                return
            self.job_id = scripts[0].name.split("_")[0]
        if self.preemptions:
            self._preempt(cluster)
        if self.kill_rank_1 and self.killed_at is None:
            self._kill_rank_1()

    def _preempt(self, cluster: SlurmCluster) -> None:
        """Signal every task while the current allocation trains in the first steps of an
        epoch (so that the stop falls mid-epoch), once per planned preemption."""
        text = log_text(self.run_dir)
        self.stops = [int(step) for step in STOPPED_LINE.findall(text)]
        if self.signalled >= self.preemptions or self.signalled > len(self.stops):
            return
        current = text[text.rfind("stopped at step"):] if self.stops else text
        steps = [int(step) for step in STEP_LINE.findall(current)]
        if steps and 1 <= steps[-1] % STEPS_PER_EPOCH <= 4:
            cluster.command("scancel", "--signal=USR2", self.job_id)
            self.signalled += 1

    def _kill_rank_1(self) -> None:
        console = self.run_dir / "submitit" / f"{self.job_id}_1_log.out"
        found = re.search(r"rank 1 of 2 on \S+ \(pid (\d+)\)",
                          console.read_text() if console.is_file() else "")
        if found and STEP_LINE.search(log_text(self.run_dir)):
            os.kill(int(found.group(1)), signal.SIGKILL)
            self.killed_at = time.monotonic()

    def launcher_output(self) -> str:
        """What the launcher printed; fails unless it exited cleanly naming this job."""
        assert self.launcher is not None
        out, err = self.launcher.communicate(timeout=120)
        assert self.launcher.returncode == 0, err
        if not self.plain_sbatch:
            assert submitted_job_id(out) == self.job_id
        return out

    def check_finished(self, jobs: dict[str, dict[str, str]]) -> bool:
        """Record the job's final state once ``jobs`` (scontrol's view) shows it ended."""
        fields = jobs.get(self.job_id, {})
        if self.job_id and not self.state and fields.get("JobState") in FINISHED_STATES:
            self.state = fields["JobState"]
            self.restarts = int(fields["Restarts"])
            if self.killed_at is not None:
                self.failed_after_s = time.monotonic() - self.killed_at
        return bool(self.state)


@dataclass
class Resubmission:
    """The reference run folder, copied once the job is done, its newest checkpoint damaged,
    and resubmitted with ``--local`` (same two ranks): the launcher waits for the run."""

    run_dir: Path
    launcher: subprocess.Popen[str] | None = None
    stdout: str = ""
    stderr: str = ""

    def start(self, reference: Path, shards: Path) -> None:
        shutil.copytree(reference, self.run_dir, ignore=shutil.ignore_patterns("submitit"))
        (self.run_dir / "summary.json").unlink()
        newest = checkpoint_path(self.run_dir / "checkpoints", TOTAL_STEPS)
        newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
        self.launcher = subprocess.Popen(
            [sys.executable, str(LAUNCHER), "--local", "--cpu", "--tasks-per-node", "2",
             "--config", "demo_tiny_cpu", "--time", "15", "--output", str(self.run_dir),
             *tiny_overrides(shards)],
            env={**os.environ, "OMP_NUM_THREADS": "1", **checkout_import_path()}, cwd=REPO_ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

    def finished(self) -> bool:
        if self.launcher is None or self.launcher.poll() is None:
            return False
        if not self.stdout:
            self.stdout, self.stderr = self.launcher.communicate()
        return True


Runs = tuple[dict[str, Scenario], Resubmission]


@pytest.fixture(scope="module")
def finished_runs(
    slurm_cluster: SlurmCluster, demo_shards: Path, tmp_path_factory: pytest.TempPathFactory
) -> Runs:
    """Every scenario side by side, each its own two-node job of the same tiny run, and the
    local resubmission of the reference run once that one is done."""
    root = tmp_path_factory.mktemp("runs")

    def scenario(name: str, *extra: str, time_min: int = 15, config: str = "demo_tiny_cpu",
                 **plan: Any) -> Scenario:
        command = [sys.executable, str(LAUNCHER), *launcher_args(
            demo_shards, root / name, *extra, time_min=time_min, config=config)]
        return Scenario(root / name, command, **plan)

    plain_dir = root / "plain"
    plain_command = [
        "sbatch", "--parsable", "--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=0",
        "--cpus-per-task=1", "--time=15", f"--output={plain_dir}/slurm-%j.out",
        f"--export=ALL,SSIT_PYTHON={sys.executable}", str(REPO_ROOT / "slurm" / "pretrain.sbatch"),
        "--config", "demo_tiny_cpu", "--output", str(plain_dir), "device=cpu",
        *tiny_overrides(demo_shards),
    ]

    scenarios = {
        "reference": scenario("reference"),
        "preempted_once": scenario("once", preemptions=1),
        "preempted_twice": scenario("twice", preemptions=2),
        # A method other than SSiT (ResNet-18 SimCLR, gathers with gradients) through the same
        # preemption path.
        "simclr_reference": scenario("simclr", config="simclr_demo_cpu"),
        "simclr_preempted": scenario("simclr-once", config="simclr_demo_cpu", preemptions=1),
        # DINO: crops of two sizes, a centre buffer, a teacher updated after each step.
        "dino_reference": scenario("dino", *DINO_TINY, config="dino_demo_cpu"),
        "dino_preempted": scenario("dino-once", *DINO_TINY, config="dino_demo_cpu",
                                   preemptions=1),
        "killed_rank": scenario("killed", kill_rank_1=True),
        # With a 3-minute limit every warning counts as the time limit (submitit counts a
        # warning after 80% of the limit or 10 minutes before it, whichever comes first).
        "timed_out": scenario("timed-out", "--signal-delay", "5", "--max-requeues", "0",
                              time_min=3, preemptions=1),
        "plain_sbatch": Scenario(plain_dir, plain_command, plain_sbatch=True, preemptions=1),
    }
    resubmission = Resubmission(root / "resubmitted")
    for job in scenarios.values():
        job.submit(slurm_cluster)
    deadline = time.monotonic() + RUNS_TIMEOUT_S
    next_state_check = 0.0
    while True:
        for job in scenarios.values():
            job.poll(slurm_cluster)
        if time.monotonic() >= next_state_check:
            next_state_check = time.monotonic() + 1.0
            known = slurm_cluster.job_fields()
            done = all([job.check_finished(known) for job in scenarios.values()])
            reference = scenarios["reference"]
            if resubmission.launcher is None and reference.state == "COMPLETED":
                resubmission.start(reference.run_dir, demo_shards)
            if done and (reference.state != "COMPLETED" or resubmission.finished()):
                for job in scenarios.values():
                    job.launcher_output()
                return scenarios, resubmission
        if time.monotonic() > deadline:
            states = {name: job.state or "running" for name, job in scenarios.items()}
            pytest.fail(f"jobs unfinished after {RUNS_TIMEOUT_S}s: {states}")
        time.sleep(0.1)


def test_two_ranks_on_two_nodes_complete(finished_runs: Runs) -> None:
    run = finished_runs[0]["reference"]
    assert run.state == "COMPLETED"
    assert run.restarts == 0
    text = log_text(run.run_dir)
    assert "on 2 rank(s) (cpu, fp32)" in text
    assert f"pre-training complete: {TOTAL_STEPS} steps" in text
    consoles = [run.run_dir / "submitit" / f"{run.job_id}_{rank}_log.out" for rank in (0, 1)]
    nodes = {re.search(r" (\S+) rank \d ", path.read_text()).group(1) for path in consoles}
    assert nodes == {"ssit-node1", "ssit-node2"}
    assert (run.run_dir / "summary.json").is_file()


@pytest.mark.parametrize("name,times,reference", [
    ("preempted_once", 1, "reference"), ("preempted_twice", 2, "reference"),
    ("simclr_preempted", 1, "simclr_reference"), ("dino_preempted", 1, "dino_reference"),
])
def test_preempted_run_requeues_and_matches_the_uninterrupted_one(
    finished_runs: Runs, name: str, times: int, reference: str
) -> None:
    run = finished_runs[0][name]
    assert run.state == "COMPLETED"
    assert run.restarts == times
    assert len(run.stops) == times
    assert all(step % STEPS_PER_EPOCH for step in run.stops), f"stops {run.stops} not mid-epoch"
    text = log_text(run.run_dir)
    for step in run.stops:
        assert f"resuming from {checkpoint_path(run.run_dir / 'checkpoints', step)}" in text
    console = (run.run_dir / "submitit" / f"{run.job_id}_0_log.out").read_text()
    # Counted from our own line, written before `scontrol requeue`; submitit's "Requeued job"
    # comes after it and may be cut off when SLURM ends the job first.
    assert len(re.findall(r"preempted at step \d+; checkpoint .*; requeueing", console)) == times
    assert finished_runs[0][reference].state == "COMPLETED"
    assert_identical(final_model(run.run_dir), final_model(finished_runs[0][reference].run_dir))


def test_plain_sbatch_script_preempted_matches_the_submitit_run(finished_runs: Runs) -> None:
    """slurm/pretrain.sbatch (srun, no submitit) requeues itself after preemption."""
    run = finished_runs[0]["plain_sbatch"]
    assert run.state == "COMPLETED"
    assert run.restarts == 1
    assert len(run.stops) == 1 and run.stops[0] % STEPS_PER_EPOCH
    console = (run.run_dir / f"slurm-{run.job_id}.out").read_text()
    assert "attempt 0 on ssit-node[1-2]" in console and "attempt 1 on" in console
    assert "requeueing job" in console
    reference = finished_runs[0]["reference"].run_dir
    assert_identical(final_model(run.run_dir), final_model(reference))


def test_killed_rank_fails_the_job_quickly_naming_the_rank(
    finished_runs: Runs
) -> None:
    run = finished_runs[0]["killed_rank"]
    assert run.killed_at is not None, "rank 1 was never killed"
    assert run.state == "FAILED"
    assert run.failed_after_s is not None and run.failed_after_s < FAILURE_BOUND_S
    assert run.restarts == 0
    errors = (run.run_dir / "submitit" / f"{run.job_id}_0_log.err").read_text()
    assert "ssit-node2: task 1: Killed" in errors


def test_time_limit_requeues_are_bounded(finished_runs: Runs) -> None:
    """With --max-requeues 0 a time-limit warning checkpoints and ends the job."""
    run = finished_runs[0]["timed_out"]
    assert run.state == "FAILED"
    assert run.restarts == 0
    console = (run.run_dir / "submitit" / f"{run.job_id}_0_log.out").read_text()
    assert "timed-out too many times" in console
    assert len(run.stops) == 1
    assert checkpoint_path(run.run_dir / "checkpoints", run.stops[0]).is_file()


def test_corrupt_newest_checkpoint_falls_back_when_resubmitted(
    finished_runs: Runs
) -> None:
    """Resubmitting a run folder resumes it (here locally, with the same two ranks); an
    unreadable newest checkpoint is set aside and the one before is used, ending with the same
    weights."""
    scenarios, resubmission = finished_runs
    assert scenarios["reference"].state == "COMPLETED"
    assert resubmission.launcher is not None
    assert resubmission.launcher.returncode == 0, resubmission.stderr[-3000:]
    assert "resuming pre-training in" in resubmission.stdout
    assert f"pre-training completed: {TOTAL_STEPS} steps" in resubmission.stdout
    run_dir = resubmission.run_dir
    text = log_text(run_dir)
    assert "unreadable" in text and "falling back" in text
    previous = checkpoint_path(run_dir / "checkpoints", TOTAL_STEPS - STEPS_PER_EPOCH)
    assert f"resuming from {previous}" in text
    newest = checkpoint_path(run_dir / "checkpoints", TOTAL_STEPS)
    assert newest.with_name(newest.name + ".unreadable").is_file()
    assert_identical(final_model(run_dir), final_model(scenarios["reference"].run_dir))
