"""Shared SLURM options, the executors built from them and the sbatch preview."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import submitit

from ssit.cluster.executor import (
    DEFAULT_MAX_REQUEUES,
    DEFAULT_SIGNAL_DELAY_S,
    DEFAULT_TIME_MIN,
    JobResources,
    LaunchError,
    add_slurm_arguments,
    make_executor,
    sbatch_preview,
)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_slurm_arguments(parser)
    return parser.parse_args(argv)


SITE = ("--partition", "gpu", "--account", "proj42", "--qos", "high", "--constraint", "a100",
        "--time", "600", "--mem-gb", "64")


def test_defaults() -> None:
    args = parse()
    assert args.time == DEFAULT_TIME_MIN
    assert args.signal_delay == DEFAULT_SIGNAL_DELAY_S
    assert args.max_requeues == DEFAULT_MAX_REQUEUES
    assert not args.local and not args.dry_run
    assert args.partition is None and args.mem_gb is None


@pytest.mark.parametrize("argv", [
    ("--time", "0"), ("--time", "ten"), ("--max-requeues", "-1"), ("--signal-delay", "0"),
    ("--mem-gb", "0"), ("--mem-gb", "lots"),
])
def test_bad_option_values_are_refused(argv: tuple[str, ...], capsys: pytest.CaptureFixture
                                       ) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse(*argv)
    assert exit_info.value.code == 2
    assert f"argument {argv[0]}" in capsys.readouterr().err


def test_sbatch_preview_of_a_gpu_job(tmp_path: Path) -> None:
    script = sbatch_preview(parse(*SITE), tmp_path / "logs",
                            JobResources("ssit-pretrain", nodes=4, tasks_per_node=8,
                                         gpus_per_node=8, cpus_per_task=6))
    for line in ("#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --cpus-per-task=6", "#SBATCH --partition=gpu",
                 "#SBATCH --account=proj42", "#SBATCH --qos=high", "#SBATCH --constraint=a100",
                 "#SBATCH --time=600", "#SBATCH --mem=64GB", "#SBATCH --requeue",
                 f"#SBATCH --signal=USR2@{DEFAULT_SIGNAL_DELAY_S}",
                 "#SBATCH --job-name=ssit-pretrain", "#SBATCH --open-mode=append"):
        assert line in script.splitlines(), line
    command = script.strip().splitlines()[-1]
    assert command.startswith("srun ") and "--kill-on-bad-exit=1" in command
    assert f"{sys.executable} -u -m submitit.core._submit {tmp_path / 'logs'}" in command
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


def test_sbatch_preview_of_a_cpu_job_asks_for_no_gpu(tmp_path: Path) -> None:
    script = sbatch_preview(parse("--signal-delay", "30"), tmp_path,
                            JobResources("cpu", nodes=2, tasks_per_node=3, cpus_per_task=2))
    assert "gpus" not in script and "--partition" not in script and "--mem" not in script
    assert "#SBATCH --ntasks-per-node=3" in script
    assert "#SBATCH --signal=USR2@30" in script


@pytest.mark.parametrize("resources,message", [
    ({"nodes": 0}, "--nodes must be at least 1"),
    ({"tasks_per_node": 0}, "tasks per node must be at least 1"),
    ({"gpus_per_node": -1}, "--gpus-per-node must not be negative"),
    ({"cpus_per_task": 0}, "--cpus-per-task must be at least 1"),
])
def test_impossible_resources_are_refused(resources: dict, message: str) -> None:
    with pytest.raises(LaunchError, match=message):
        JobResources("x", **resources)


def test_local_executor_runs_one_node(tmp_path: Path) -> None:
    executor = make_executor(parse("--local", "--time", "30", "--max-requeues", "2"), tmp_path,
                             JobResources("x", tasks_per_node=2))
    assert isinstance(executor, submitit.LocalExecutor)
    assert executor.max_num_timeout == 2
    assert executor.parameters["tasks_per_node"] == 2
    assert executor.parameters["timeout_min"] == 30
    with pytest.raises(LaunchError, match="--local runs on this machine only"):
        make_executor(parse("--local"), tmp_path, JobResources("x", nodes=2))


@pytest.mark.skipif(shutil.which("srun") is None, reason="SLURM's srun is not installed")
def test_slurm_executor_carries_every_option(tmp_path: Path) -> None:
    executor = make_executor(parse(*SITE, "--max-requeues", "5"), tmp_path,
                             JobResources("job", nodes=2, tasks_per_node=4, gpus_per_node=4,
                                          cpus_per_task=8))
    assert isinstance(executor, submitit.SlurmExecutor)
    assert executor.max_num_timeout == 5
    expected = {"nodes": 2, "ntasks_per_node": 4, "gpus_per_node": 4, "cpus_per_task": 8,
                "partition": "gpu", "account": "proj42", "qos": "high", "constraint": "a100",
                "time": 600, "mem": "64GB", "srun_args": ["--kill-on-bad-exit=1"]}
    assert {key: executor.parameters[key] for key in expected} == expected
