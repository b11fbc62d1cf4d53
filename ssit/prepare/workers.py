"""Process pools for the offline stage: fresh (spawned) workers, one OpenCV thread each."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

import cv2

__all__ = ["available_cores", "parallel_map"]

_Item = TypeVar("_Item")
_Result = TypeVar("_Result")


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a SLURM allocation)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _init_worker() -> None:
    cv2.setNumThreads(1)


def parallel_map(
    function: Callable[[_Item], _Result], items: Iterable[_Item], jobs: int
) -> Iterator[_Result]:
    """``map(function, items)`` on ``jobs`` worker processes; results come in input order.

    With ``jobs == 1`` everything runs in this process (OpenCV limited to one thread).
    """
    if jobs == 1:
        threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            yield from map(function, items)
        finally:
            cv2.setNumThreads(threads)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_init_worker) as executor:
        try:
            yield from executor.map(function, items)
        except BrokenProcessPool as error:
            raise RuntimeError(
                "a worker process died (out of memory, killed, or the calling script lacks an "
                "`if __name__ == '__main__':` guard)"
            ) from error
