"""Functions run by real worker processes in the tests (importable by spawned workers)."""

from __future__ import annotations

import os
import signal
import sys
import time

DIE_ON = "fatal.png"


def dies_on_one_item(name: str) -> str:
    """Returns ``name``; the worker kills itself (SIGKILL, like the OOM killer) on ``DIE_ON``."""
    if name == DIE_ON:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.2)
    return name


def sleeps(seconds: float) -> float:
    """Keeps a worker busy."""
    time.sleep(seconds)
    return seconds


if __name__ == "__main__":
    # A parent that keeps two workers busy for a minute: the test kills it with SIGKILL.
    from ssit.prepare.workers import parallel_map

    for _ in parallel_map(sleeps, [60.0] * 4, 2, describe=str):
        pass
    sys.exit(0)
