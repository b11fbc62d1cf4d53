"""Fixtures of the training tests: the tiny run configuration and real multi-process jobs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def tiny_overrides(shards: Path, **extra: object) -> list[str]:
    """Overrides that shrink demo_tiny_cpu to a few seconds: 2 epochs of 8 samples per step."""
    values: dict[str, object] = {
        "data.shards": str(shards),
        "optim.epochs": 2,
        "optim.warmup_epochs": 1,
        "optim.batch_size": 8,
        "checkpoint.every_minutes": None,
        "checkpoint.every_epochs": 1,
        "checkpoint.keep": 2,
        "log.every_steps": 1,
        "log.image_every_steps": 5,
        "log.progress_bar": False,
        **extra,
    }
    return [f"{key}={'null' if value is None else value}" for key, value in values.items()]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _child_env(rank: int, world_size: int, port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
        "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT),
    })
    return env


@pytest.fixture(scope="session")
def run_ranks(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., list[dict]]:
    """Run a plan of pre-training calls in ``world_size`` real gloo ranks; return rank 0's results.

    Fails the test with every rank's log tail if any rank exits non-zero or runs past
    ``timeout``.
    """

    def launch(
        runs: Sequence[dict],
        world_size: int = 2,
        timeout: float = 240,
        expect_failure: bool = False,
        collective_timeout: float = 60,
    ) -> list[dict] | list[tuple[int, str, float]]:
        plan = tmp_path_factory.mktemp("job") / "plan.json"
        plan.write_text(json.dumps({"runs": list(runs), "timeout_s": collective_timeout}))
        port = _free_port()
        logs = [plan.with_suffix(f".rank{rank}.log") for rank in range(world_size)]
        procs = []
        for rank in range(world_size):
            with open(logs[rank], "w") as log_file:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "tests.train.workers", "train", str(plan)],
                    cwd=REPO_ROOT, env=_child_env(rank, world_size, port),
                    stdout=log_file, stderr=subprocess.STDOUT,
                ))
        start = time.monotonic()
        ended = [0.0] * world_size
        while time.monotonic() - start < timeout and any(p.poll() is None for p in procs):
            for rank, proc in enumerate(procs):
                if proc.poll() is not None and not ended[rank]:
                    ended[rank] = time.monotonic() - start
            time.sleep(0.05)
        for rank, proc in enumerate(procs):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            ended[rank] = ended[rank] or time.monotonic() - start
        codes = [proc.returncode for proc in procs]
        if expect_failure:
            return [(code, logs[rank].read_text(), ended[rank])
                    for rank, code in enumerate(codes)]
        if any(codes):
            tails = "\n".join(
                f"--- rank {rank} (exit {code}) ---\n{logs[rank].read_text()[-3000:]}"
                for rank, code in enumerate(codes)
            )
            pytest.fail(f"ranks exited with {codes}\n{tails}")
        return json.loads(Path(f"{plan}.result").read_text())

    return launch
