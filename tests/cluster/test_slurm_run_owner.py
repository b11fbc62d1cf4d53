"""On the one-machine SLURM cluster: a run folder whose job is queued or running is refused to a
second submission, naming the job; once the job ended the folder is free again."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ssit.train.checkpoint import list_checkpoints
from ssit.train.run_owner import read_owner
from tests.cluster.conftest import (
    SlurmCluster,
    run_launcher,
    submitted_job_id,
    tiny_overrides,
)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def launch(cluster: SlurmCluster, shards: Path, run_dir: Path, *extra: str):
    """Submit the tiny two-node run, made long (200 epochs) so that it is still queued or
    running when the next launcher comes."""
    return run_launcher(["--cpu", "--nodes", "2", "--config", "demo_tiny_cpu", "--time", "15",
                         "--output", str(run_dir), *extra, *tiny_overrides(shards),
                         "optim.epochs=200"], env=cluster.env)


def test_second_submission_into_a_live_job_is_refused_naming_it(
    slurm_cluster: SlurmCluster, demo_shards: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    first = launch(slurm_cluster, demo_shards, run_dir)
    assert first.returncode == 0, first.stderr
    job_id = submitted_job_id(first.stdout)
    assert read_owner(run_dir).jobs == (job_id,)

    jobs_before = set(slurm_cluster.job_fields())
    second = launch(slurm_cluster, demo_shards, run_dir)
    state = slurm_cluster.job_fields().get(job_id, {}).get("JobState")
    assert second.returncode == 2 and second.stdout == "", (state, second.stdout, second.stderr)
    refusal = re.fullmatch(
        rf"error: {re.escape(str(run_dir))} is in use by SLURM job {job_id} \((\w+)\); wait "
        r"for that run to end or stop it, or use another --output\n", second.stderr)
    assert refusal is not None, second.stderr
    assert refusal.group(1) in ("PENDING", "CONFIGURING", "RUNNING")
    assert set(slurm_cluster.job_fields()) == jobs_before  # nothing was submitted

    slurm_cluster.command("scancel", job_id)
    assert slurm_cluster.wait_for_end(job_id) == "CANCELLED"
    # The cancelled job's record is stale: the folder is taken over (from step 0 if the job
    # was cancelled after it started training but before its first checkpoint).
    restart = ((run_dir / "config.yaml").is_file()
               and not list_checkpoints(run_dir / "checkpoints"))
    third = launch(slurm_cluster, demo_shards, run_dir, *(["--restart"] if restart else []))
    assert third.returncode == 0, third.stderr
    resubmitted = submitted_job_id(third.stdout)
    assert resubmitted != job_id and read_owner(run_dir).jobs == (resubmitted,)
    slurm_cluster.command("scancel", resubmitted)
    slurm_cluster.wait_for_end(resubmitted)
