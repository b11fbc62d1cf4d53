"""Launchers run as a user runs them, in a session of their own, for tests that interrupt or
kill them and then check that none of their processes is left."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
WAIT_S = 240


def import_path() -> dict[str, str]:
    """PYTHONPATH that makes the launcher and its jobs import ``ssit`` from this checkout."""
    return {"PYTHONPATH": os.pathsep.join(
        [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}


class Launch:
    """One launcher process in a session of its own, its console in files."""

    def __init__(self, launcher: Path, args: list[str], folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.out_path, self.err_path = folder / "stdout", folder / "stderr"
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.process = subprocess.Popen(
                [sys.executable, str(launcher), *args], cwd=REPO_ROOT, stdout=out, stderr=err,
                env={**os.environ, "OMP_NUM_THREADS": "1", **import_path()},
                start_new_session=True)

    @property
    def stdout(self) -> str:
        return self.out_path.read_text()

    @property
    def stderr(self) -> str:
        return self.err_path.read_text()

    def wait(self, timeout: float = WAIT_S) -> int:
        return self.process.wait(timeout=timeout)

    def end(self) -> None:
        """Kill whatever is left of the launcher's session."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


def session_processes(session: int) -> list[int]:
    """Live (not zombie) processes of the session ``session``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == session and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def wait_until(condition: Callable[[], bool], launch: Launch, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if launch.process.poll() is not None:
            pytest.fail(f"the launcher ended before {what}: {launch.stdout}\n{launch.stderr}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {WAIT_S} s")
        time.sleep(0.2)


