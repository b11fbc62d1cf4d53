"""Process pools for the offline stage: forked workers, one OpenCV thread each.

Workers are forked where the platform can (Linux, macOS with fork available), so that they
start with this process's imports and with whatever an optional warm-up loaded (numba's
compiled kernels) instead of importing and loading it all again, which costs about a
CPU-second per spawned worker. Elsewhere they are spawned.
Workers never outlive the process that started them: on Linux the kernel kills them when it
dies (``PR_SET_PDEATHSIG``), and a watchdog thread in each worker also ends it once its
parent is gone. Each worker records in shared memory which item it is working on, so that
when one dies (out of memory, killed) the error names that item.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from typing import Any, TypeVar

import cv2

__all__ = ["WorkerDiedError", "available_cores", "parallel_map"]

_Item = TypeVar("_Item")
_Result = TypeVar("_Result")

_IDLE = -1
_PR_SET_PDEATHSIG = 1
_PARENT_POLL_S = 1.0

# Set in each worker by _init_worker: the shared table of items in progress and its row.
_progress: Any = None
_row = _IDLE


class WorkerDiedError(RuntimeError):
    """A worker process ended abruptly; ``str(error)`` names what it was working on."""


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a SLURM allocation)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _die_with_parent(parent_pid: int) -> None:
    """End this worker when ``parent_pid`` ends: kernel signal on Linux, watchdog everywhere."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before the line above
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(_PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _stopped_by_pool(signum: int, frame: object) -> None:
    """SIGTERM from the pool after another worker died: this one's item is not to blame."""
    if _progress is not None and _row != _IDLE:
        _progress[_row] = _IDLE
    os._exit(128 + signum)


def _init_worker(parent_pid: int, progress: Any, rows: Any) -> None:
    global _progress, _row
    _die_with_parent(parent_pid)
    cv2.setNumThreads(1)
    with rows.get_lock():
        _row = rows.value
        rows.value += 1
    _progress = progress
    signal.signal(signal.SIGTERM, _stopped_by_pool)


def _context() -> Any:
    """Fork where available (cheap start, inherits loaded modules), spawn otherwise."""
    if "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def _run_item(function: Callable[[_Item], _Result], number: int, item: _Item) -> _Result:
    _progress[_row] = number
    result = function(item)
    _progress[_row] = _IDLE
    return result


def parallel_map(
    function: Callable[[_Item], _Result],
    items: Iterable[_Item],
    jobs: int,
    describe: Callable[[_Item], str] = repr,
    warm_up: Callable[[], object] | None = None,
) -> Iterator[_Result]:
    """``map(function, items)`` on ``jobs`` worker processes; results come in input order.

    With ``jobs == 1`` everything runs in this process (OpenCV limited to one thread). If a
    worker dies, :class:`WorkerDiedError` names the item it was on, as ``describe`` shows it.
    ``warm_up`` runs once here, with one OpenCV thread, before the workers are forked, so that
    what it loads is loaded once rather than in every worker.
    """
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        if warm_up is not None:
            warm_up()
        if jobs == 1:
            yield from map(function, items)
            return
    finally:
        cv2.setNumThreads(threads)
    listed = list(items)
    context = _context()
    progress = context.Array("q", [_IDLE] * jobs, lock=False)
    rows = context.Value("i", 0)
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_init_worker,
                             initargs=(os.getpid(), progress, rows)) as executor:
        try:
            yield from executor.map(partial(_run_item, function), range(len(listed)), listed)
        except BrokenProcessPool as error:
            raise WorkerDiedError(_death_message(progress, listed, describe)) from error


def _death_message(progress: Any, items: list[Any], describe: Callable[[Any], str]) -> str:
    # Give the other workers' SIGTERM handlers a moment to clear their rows.
    deadline = time.monotonic() + 2.0
    busy = [n for n in progress if n != _IDLE]
    while len(busy) > 1 and time.monotonic() < deadline:
        time.sleep(0.05)
        busy = [n for n in progress if n != _IDLE]
    if not busy:
        return ("a worker process died (out of memory, killed, or the calling script lacks an "
                "`if __name__ == '__main__':` guard)")
    names = ", ".join(describe(items[n]) for n in busy)
    return f"a worker process died while processing {names} (out of memory or killed)"
