"""Writing files so that a reader sees either the old content or the new, never a partial file."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file beside ``path``; when the block succeeds it replaces ``path``.

    The temporary file is removed if the block raises, so a failed write leaves ``path`` as it
    was. Parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield partial
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def replace_json(path: str | Path, value: Any, indent: int | None = None) -> Path:
    """Write ``value`` as JSON (one trailing newline) to ``path`` atomically; return the path."""
    path = Path(path)
    with replacing(path) as partial:
        partial.write_text(json.dumps(value, indent=indent) + "\n")
    return path
