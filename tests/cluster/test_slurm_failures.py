"""On the one-machine SLURM cluster: why a job failed shows in log.txt, and a run folder whose
checkpoints are all unreadable is never trained again from step 0 without --restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from ssit.train.checkpoint import checkpoint_path
from tests.cluster.conftest import (
    EPOCHS,
    STEPS_PER_EPOCH,
    SlurmCluster,
    run_launcher,
    submitted_job_id,
    tiny_overrides,
)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def launch(cluster: SlurmCluster, shards: Path, run_dir: Path, *extra: str):
    return run_launcher(["--cpu", "--nodes", "2", "--config", "demo_tiny_cpu", "--time", "15",
                         "--output", str(run_dir), *extra, *tiny_overrides(shards)],
                        env=cluster.env)


def test_unreadable_checkpoints_fail_in_log_txt_then_need_restart(
    slurm_cluster: SlurmCluster, demo_shards: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    newest = checkpoint_path(run_dir / "checkpoints", STEPS_PER_EPOCH)
    newest.parent.mkdir(parents=True)
    newest.write_bytes(b"PK\x03\x04" + b"\x00" * 5000)  # the start of a save, cut short

    # 1. The job fails; log.txt, the file the launcher says to follow, says why and where the
    # traceback is.
    done = launch(slurm_cluster, demo_shards, run_dir)
    assert done.returncode == 0, done.stderr
    assert f"follow the log: tail -f {run_dir / 'log.txt'}" in done.stdout
    job_id = submitted_job_id(done.stdout)
    assert slurm_cluster.wait_for_end(job_id) == "FAILED"
    log_text = (run_dir / "log.txt").read_text()
    stderr = run_dir / "submitit" / f"{job_id}_0_log.err"
    failures = [line for line in log_text.splitlines() if "rank 0 ERROR the job failed" in line]
    assert len(failures) == 1, log_text
    assert (f"CheckpointError: no readable checkpoint in {run_dir / 'checkpoints'} (set aside as "
            f"*.unreadable): {newest.name} is truncated (5004 bytes)") in failures[0]
    assert failures[0].endswith(f"(traceback in {stderr})")
    assert "Traceback" in stderr.read_text()

    # 2. Submitting again is refused before anything is queued: nothing to resume.
    jobs_before = set(slurm_cluster.job_fields())
    again = launch(slurm_cluster, demo_shards, run_dir)
    assert again.returncode == 2 and again.stdout == ""
    assert again.stderr == (
        f"error: {run_dir} has trained before (it holds checkpoints/{newest.name}.unreadable) "
        "but has no checkpoint to resume from; resubmit with --restart to train again from "
        "step 0, or use another --output\n"
    )
    assert set(slurm_cluster.job_fields()) == jobs_before

    # 3. With --restart it trains from step 0 to the end.
    restarted = launch(slurm_cluster, demo_shards, run_dir, "--restart")
    assert restarted.returncode == 0, restarted.stderr
    assert f"restarting pre-training in {run_dir} from step 0" in restarted.stdout
    assert slurm_cluster.wait_for_end(submitted_job_id(restarted.stdout)) == "COMPLETED"
    assert f"pre-training complete: {EPOCHS * STEPS_PER_EPOCH} steps" in \
        (run_dir / "log.txt").read_text()
