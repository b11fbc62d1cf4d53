"""Fixtures of the cluster tests: the one-machine SLURM cluster and the launcher as a command."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
TEST_CLUSTER = REPO_ROOT / "slurm" / "test-cluster"
LAUNCHER = REPO_ROOT / "launch" / "pretrain.py"
SLURM_BINARIES = ("slurmctld", "slurmd", "sbatch", "srun", "scontrol", "squeue", "scancel")
FINISHED_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                   "PREEMPTED", "BOOT_FAIL", "DEADLINE"}
# 3 epochs of 12 steps on two ranks (48 demo samples, a global batch of 4): long enough to be
# signalled mid-epoch, short enough to run in seconds.
STEPS_PER_EPOCH = 12
EPOCHS = 3


def tiny_overrides(shards: Path) -> list[str]:
    """Overrides that turn demo_tiny_cpu into a 36-step run that logs every step."""
    return [
        f"data.shards={shards}",
        f"optim.epochs={EPOCHS}",
        "optim.warmup_epochs=1",
        "optim.batch_size=4",
        "checkpoint.every_minutes=null",
        "checkpoint.every_epochs=1",
        "checkpoint.keep=3",
        "log.every_steps=1",
        "log.image_every_steps=null",
        "log.progress_bar=false",
    ]


@dataclass(frozen=True)
class SlurmCluster:
    """A running test cluster: its folder and the environment its commands need."""

    directory: Path
    env: dict[str, str]

    def command(self, *args: str) -> str:
        """Run a SLURM client command against this cluster and return its stdout."""
        done = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

    def job_fields(self) -> dict[str, dict[str, str]]:
        """Every job the controller knows, as ``{job id: {field: value}}`` (one scontrol call)."""
        jobs = {}
        for line in self.command("scontrol", "show", "job", "--oneliner").splitlines():
            fields = dict(re.findall(r"(\w+)=(\S*)", line))
            if "JobId" in fields:
                jobs[fields["JobId"]] = fields
        return jobs

    def wait_for_end(self, job_id: str, timeout_s: float = 300, poll_s: float = 0.5) -> str:
        """The state job ``job_id`` ended in; fails the test if it is still going after
        ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            state = self.job_fields().get(job_id, {}).get("JobState", "")
            if state in FINISHED_STATES:
                return state
            time.sleep(poll_s)
        pytest.fail(f"job {job_id} unfinished after {timeout_s}s")


def _free_port_base(count: int) -> int:
    """A port p such that p .. p+count-1 are free right now."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + count >= 65533:
            continue
        try:
            for offset in range(count):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", base + offset))
        except OSError:
            continue
        return base
    raise RuntimeError("no free port range for the test cluster")


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """The one-machine cluster (one controller, two nodes), started for the session."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    missing = [name for name in SLURM_BINARIES if shutil.which(name, path=path) is None]
    if missing:
        pytest.skip(f"SLURM is not installed (missing {', '.join(missing)}); "
                    "install Debian's slurmctld, slurmd and slurm-client")
    directory = tmp_path_factory.mktemp("slurm-cluster")
    env = dict(os.environ)
    env.update({
        "PATH": path,
        "SSIT_CLUSTER_DIR": str(directory),
        "SSIT_CLUSTER_PORT": str(_free_port_base(3)),
        # Six slots per node: the tests run several two-node jobs side by side.
        "SSIT_CLUSTER_CPUS": "6",
        "SLURM_CONF": str(directory / "slurm.conf"),
        "OMP_NUM_THREADS": "1",
        **checkout_import_path(),
    })
    started = subprocess.run([str(TEST_CLUSTER / "up.sh")], env=env, capture_output=True,
                             text=True, timeout=120)
    if started.returncode != 0:
        subprocess.run([str(TEST_CLUSTER / "down.sh")], env=env, capture_output=True,
                       timeout=120)
        pytest.fail(f"the test cluster did not start: {started.stderr.strip()}")
    try:
        yield SlurmCluster(directory, env)
    finally:
        subprocess.run([str(TEST_CLUSTER / "down.sh")], env=env, capture_output=True,
                       timeout=120)


def checkout_import_path() -> dict[str, str]:
    """PYTHONPATH that makes child processes and jobs import ``ssit`` from this checkout, not
    from wherever the environment installed it."""
    return {"PYTHONPATH": os.pathsep.join(
        [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}


def run_launcher(args: Sequence[str], env: dict[str, str] | None = None,
                 timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``python launch/pretrain.py ARGS`` as a user would."""
    env = {**(os.environ if env is None else env), **checkout_import_path()}
    return subprocess.run([sys.executable, str(LAUNCHER), *args], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout)


def submitted_job_id(output: str) -> str:
    """The job id the launcher printed."""
    match = re.search(r"^job id: (\S+)", output, re.MULTILINE)
    if match is None:
        raise AssertionError(f"the launcher printed no job id:\n{output}")
    return match.group(1)
