"""numba compilation for the offline stage's kernels, cached on disk where that is possible.

numba's on-disk cache needs a writable ``__pycache__`` beside the module or a writable user
cache folder. Where neither exists (a read-only install, a service account without a home) a
kernel is compiled in memory at first use instead of failing the import.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

try:
    import numba
except ImportError:
    numba = None

NUMBA_AVAILABLE = numba is not None


def njit(**options: Any) -> Callable[[Callable], Callable]:
    """``numba.njit(cache=True, **options)``, or without the disk cache when it is unavailable."""
    if numba is None:
        raise RuntimeError("numba is not installed (pip install numba)")

    def compile_kernel(function: Callable) -> Callable:
        try:
            return numba.njit(cache=True, **options)(function)
        except RuntimeError as error:
            logger.debug("no disk cache for %s (%s); compiling in memory", function.__name__,
                         error)
            return numba.njit(cache=False, **options)(function)

    return compile_kernel
