"""Checkpoint files: atomic writes, rotation, and finding the newest one that can be read.

A checkpoint is ``<dir>/checkpoint-<step:08d>.pt``. It is first written to a hidden temporary
file in the same directory, flushed to disk, then renamed over the final name, so a crash while
saving never leaves a partial file under a checkpoint name. The newest checkpoint is found by
scanning the names; one that cannot be read is set aside (renamed ``*.unreadable``) and the one
before is used, with a warning. Beside the checkpoints, ``ranks.json`` records how many ranks
wrote them, so that a launcher can refuse a resume on another number of ranks before it queues
the job.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssit.atomic_write import replace_json
from ssit.backbones.weights import CheckpointError
from ssit.error_text import first_line

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
REQUIRED_KEYS = frozenset(
    {"format", "step", "epoch", "world_size", "model", "optimizer", "pipeline_states",
     "rng_states"}
)
RANKS_FILE = "ranks.json"
_NAME = re.compile(r"^checkpoint-(\d{8,})\.pt$")
_TEMP_PREFIX = ".checkpoint-"


def checkpoint_path(directory: str | Path, step: int) -> Path:
    """The file name of the checkpoint taken after ``step`` optimisation steps."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return Path(directory) / f"checkpoint-{step:08d}.pt"


def checkpoint_step(path: str | Path) -> int | None:
    """The step encoded in a checkpoint file name, or None for any other name."""
    match = _NAME.match(Path(path).name)
    return int(match.group(1)) if match else None


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Checkpoint files in ``directory``, oldest (lowest step) first; temporary files excluded."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [
        (step, path) for path in directory.iterdir()
        if (step := checkpoint_step(path)) is not None and path.is_file()
    ]
    return [path for _, path in sorted(found)]


def save_checkpoint(state: Mapping[str, Any], directory: str | Path, keep: int) -> Path:
    """Atomically write ``state`` (which holds ``step``) and keep only the newest ``keep`` files."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = checkpoint_path(directory, int(state["step"]))
    _remove_stale_temporaries(directory)
    temporary = directory / f"{_TEMP_PREFIX}{final.stem[len('checkpoint-'):]}.pt.tmp-{os.getpid()}"
    try:
        with open(temporary, "wb") as stream:
            torch.save(dict(state), stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, final)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_directory(directory)
    rotate_checkpoints(directory, keep)
    return final


def rotate_checkpoints(directory: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints; return the deleted paths."""
    paths = list_checkpoints(directory)
    removed = paths[:-keep] if len(paths) > keep else []
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def record_world_size(directory: str | Path, world_size: int) -> None:
    """Note in ``directory`` that its checkpoints were written by ``world_size`` ranks."""
    replace_json(Path(directory) / RANKS_FILE, {"world_size": world_size})


def recorded_world_size(directory: str | Path) -> int | None:
    """How many ranks wrote the checkpoints in ``directory``; None without checkpoints or record."""
    if not list_checkpoints(directory):
        return None
    try:
        value = json.loads((Path(directory) / RANKS_FILE).read_text())["world_size"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return value if isinstance(value, int) and value > 0 else None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read one checkpoint onto the CPU; raise CheckpointError if it is unreadable or incomplete."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"cannot read {path.name}: {first_line(error)}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path.name} does not hold a checkpoint dictionary")
    missing = sorted(REQUIRED_KEYS - state.keys())
    if missing:
        raise CheckpointError(f"{path.name} lacks {', '.join(missing)}")
    if state["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path.name} has format {state['format']}, "
                              f"expected {CHECKPOINT_FORMAT}")
    return state


def load_latest_checkpoint(
    directory: str | Path, set_aside_unreadable: bool = True
) -> tuple[Path, dict[str, Any]] | None:
    """The newest readable checkpoint in ``directory`` and its contents, or None if there is none.

    Unreadable newer files are logged as warnings and, with ``set_aside_unreadable``, renamed to
    ``<name>.unreadable`` so later scans and rotations ignore them. Raises CheckpointError when
    checkpoints exist but none can be read.
    """
    paths = list_checkpoints(directory)
    failures: list[str] = []
    for path in reversed(paths):
        try:
            state = load_checkpoint(path)
        except CheckpointError as error:
            failures.append(str(error))
            log.warning("checkpoint %s is unreadable (%s); falling back to the one before",
                        path, error)
            if set_aside_unreadable:
                path.replace(path.with_name(path.name + ".unreadable"))
            continue
        if failures:
            log.warning("resuming from %s instead of the newer unreadable checkpoint", path.name)
        return path, state
    if failures:
        raise CheckpointError(f"no readable checkpoint in {directory}: {failures[0]}")
    return None


def capture_rng_state() -> dict[str, Any]:
    """This process's random states (Python, NumPy, torch CPU and current GPU), loadable."""
    bit_generator, keys, position, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": bit_generator,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # this rank's (current) GPU only
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Put back random states captured by :func:`capture_rng_state`."""
    random.setstate(_as_tuple(state["python"]))
    saved = state["numpy"]
    np.random.set_state((
        saved["bit_generator"], saved["keys"].numpy().astype(np.uint32), saved["position"],
        saved["has_gauss"], saved["cached_gaussian"],
    ))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _as_tuple(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuple(item) for item in value)
    return value


def _remove_stale_temporaries(directory: Path) -> None:
    for path in directory.glob(f"{_TEMP_PREFIX}*.tmp-*"):
        log.warning("removing %s left by an interrupted save", path.name)
        path.unlink(missing_ok=True)


def _fsync_directory(directory: Path) -> None:
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "capture_rng_state",
    "checkpoint_path",
    "checkpoint_step",
    "list_checkpoints",
    "load_checkpoint",
    "load_latest_checkpoint",
    "restore_rng_state",
    "rotate_checkpoints",
    "save_checkpoint",
]
