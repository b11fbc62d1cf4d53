"""One ``ssit shards`` at a time per output folder.

The lock is an ``flock`` on ``<out>/.state/lock``: the kernel drops it when the holder ends in
any way (exit, crash, ``kill -9``), so no stale lock is ever left behind. The file holds the
holder's process id, for the message of the run that is refused.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ssit.prepare.shard_format import STATE_DIR, PrepareError

__all__ = ["hold_output_folder"]

LOCK_NAME = "lock"


@contextmanager
def hold_output_folder(out_dir: Path) -> Iterator[None]:
    """Hold ``out_dir`` (created if needed) for this process, or raise :class:`PrepareError`."""
    state = out_dir / STATE_DIR
    try:
        state.mkdir(parents=True, exist_ok=True)
        handle = os.open(state / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as error:
        raise PrepareError(f"cannot write to {out_dir}: {error.strerror or error}") from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(handle, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise PrepareError(
                f"{out_dir} is being written by another `ssit shards` (process {holder}); "
                "wait for it to finish or choose another --out"
            ) from None
        os.ftruncate(handle, 0)
        os.pwrite(handle, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(handle)
