"""Functions run by real worker processes in the tests (importable by any worker)."""

from __future__ import annotations

import os
import signal
import sys
import time

DIE_ON = "fatal.png"
LOADED: str | None = None
"""Set by a test's warm-up in the parent; forked workers see its value."""


def dies_on_one_item(name: str) -> str:
    """Returns ``name``; the worker kills itself (SIGKILL, like the OOM killer) on ``DIE_ON``."""
    if name == DIE_ON:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.2)
    return name


def loaded_marker(item: int) -> tuple[str | None, int]:
    """What the warm-up left in :data:`LOADED`, and which process answered."""
    time.sleep(0.05)
    return LOADED, os.getpid()


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
