"""Checkpoint files: atomic writes, checksums, rotation, and finding the newest readable one.

A checkpoint is ``<dir>/checkpoint-<step:08d>.pt``: a ``torch.save`` file followed by a one-line
trailer holding the SHA-256 of the bytes before it (``torch.load`` ignores the trailer). It is
first written to a hidden temporary file in the same directory, flushed to disk, then renamed
over the final name, so a crash while saving never leaves a partial file under a checkpoint name.
Before writing, the free space is checked against the size of the checkpoint (a save needs room
for the ``keep - 1`` newest checkpoints, at least one, and the new one: the older ones are
deleted before it is written). The newest checkpoint is found by scanning the names; one that
cannot be read, or whose checksum does not match, is set aside (renamed ``*.unreadable``) and the
one before is used, with a warning. Errors say in words what is wrong with a file (truncated,
not a checkpoint, damaged, written by another version). Beside the checkpoints, ``ranks.json``
records how many ranks wrote them, so that a launcher can refuse a resume on another number of
ranks before it queues the job.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import random
import re
import shutil
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ssit.atomic_write import replace_json
from ssit.backbones.checkpoint_error import CheckpointError
from ssit.error_text import first_line
from ssit.train.checkpoint_space import (
    estimated_checkpoint_bytes,
    is_out_of_space,
    no_space_message,
)

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
REQUIRED_KEYS = frozenset(
    {"format", "step", "epoch", "world_size", "model", "optimizer", "pipeline_states",
     "rng_states"}
)
RANKS_FILE = "ranks.json"
_NAME = re.compile(r"^checkpoint-(\d{8,})\.pt$")
_TEMP_PREFIX = ".checkpoint-"
_TRAILER_TAG = b"\nssit-sha256:"
_TRAILER_SIZE = len(_TRAILER_TAG) + 64 + 1
ZIP_MAGIC = b"PK\x03\x04"


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
    import torch

    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = checkpoint_path(directory, int(state["step"]))
    _remove_stale_temporaries(directory)
    existing = list_checkpoints(directory)
    needed = estimated_checkpoint_bytes(state, existing)
    _make_room(existing, final, keep)
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise CheckpointError(no_space_message(final, needed, free, keep, _kept_beside(final)))
    temporary = directory / f"{_TEMP_PREFIX}{final.stem[len('checkpoint-'):]}.pt.tmp-{os.getpid()}"
    try:
        with open(temporary, "wb") as stream:
            hashing = _HashingWriter(stream)
            torch.save(dict(state), hashing)
            stream.write(_TRAILER_TAG + hashing.digest.hexdigest().encode() + b"\n")
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, final)
    except (OSError, RuntimeError) as error:
        temporary.unlink(missing_ok=True)
        if is_out_of_space(error, directory, needed):
            free = shutil.disk_usage(directory).free
            raise CheckpointError(
                no_space_message(final, needed, free, keep, _kept_beside(final))) from None
        raise
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


def _kept_beside(final: Path) -> int:
    """How many checkpoints other than ``final`` its folder holds."""
    return len([path for path in list_checkpoints(final.parent) if path != final])


def _make_room(existing: list[Path], final: Path, keep: int) -> None:
    """Delete the oldest checkpoints before ``final`` is written, so that only ``keep - 1`` of
    the others remain meanwhile: never fewer than one, the newest complete checkpoint."""
    others = [path for path in existing if path != final]
    for path in others[:max(0, len(others) - max(1, keep - 1))]:
        log.info("removing %s before saving %s (checkpoint.keep=%d)", path.name, final.name,
                 keep)
        path.unlink(missing_ok=True)


def record_world_size(directory: str | Path, world_size: int,
                      data_fingerprint: dict[str, str] | None = None) -> None:
    """Note in ``directory`` that its checkpoints were written by ``world_size`` ranks, and
    the fingerprint of the shards they trained on, so that a launcher can check a resume
    without reading a checkpoint."""
    replace_json(Path(directory) / RANKS_FILE,
                 {"world_size": world_size, "data_fingerprint": data_fingerprint})


def _checkpoint_record(directory: str | Path) -> dict[str, Any] | None:
    if not list_checkpoints(directory):
        return None
    try:
        record = json.loads((Path(directory) / RANKS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def recorded_world_size(directory: str | Path) -> int | None:
    """How many ranks wrote the checkpoints in ``directory``; None without checkpoints or record."""
    value = (_checkpoint_record(directory) or {}).get("world_size")
    return value if isinstance(value, int) and value > 0 else None


def recorded_data_fingerprint(directory: str | Path) -> dict[str, str] | None:
    """The shard fingerprint the checkpoints in ``directory`` were trained on, where recorded
    (checkpoints written before it was recorded have none)."""
    value = (_checkpoint_record(directory) or {}).get("data_fingerprint")
    return value if isinstance(value, dict) and isinstance(value.get("digest"), str) else None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read one checkpoint onto the CPU; raise CheckpointError if it is unreadable or incomplete."""
    import torch

    path = Path(path)
    verify_or_warn(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{path.name} was written by another version of ssit or torch: it holds objects "
            f"this version does not load ({first_line(error)})"
        ) from None
    except Exception as error:  # torch raises many types for damaged files
        raise CheckpointError(f"{path.name} is damaged: torch cannot read it "
                              f"({first_line(error)})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path.name} is not a pre-training checkpoint: it holds a "
                              f"{type(state).__name__}, not a dictionary")
    if "format" in state and state["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path.name} was written by another version of ssit (checkpoint "
                              f"format {state['format']!r}; this version reads "
                              f"{CHECKPOINT_FORMAT})")
    missing = sorted(REQUIRED_KEYS - state.keys())
    if missing:
        raise CheckpointError(f"{path.name} is not a pre-training checkpoint: it lacks "
                              f"{', '.join(missing)}")
    return state


def verify_or_warn(path: str | Path) -> None:
    """:func:`verify_checksum`, and a warning (logged) when the file has no checksum trailer."""
    if not verify_checksum(path):
        log.warning("%s has no checksum (no SHA-256 trailer: written by an earlier version or "
                    "another program), so damage to it cannot be detected; its contents are not "
                    "verified", Path(path).name)


def verify_checksum(path: str | Path) -> bool:
    """Check the SHA-256 trailer of the checkpoint file ``path``; False when it has none.

    Raises CheckpointError saying what is wrong: an empty, truncated or damaged file, or one
    that is not a checkpoint at all.
    """
    path = Path(path)
    try:
        with open(path, "rb") as stream:
            size = os.fstat(stream.fileno()).st_size
            head = stream.read(len(ZIP_MAGIC))
            stream.seek(max(0, size - _TRAILER_SIZE))
            tail = stream.read()
    except OSError as error:
        raise CheckpointError(f"cannot read {path.name}: {error.strerror or error}") from None
    if size == 0:
        raise CheckpointError(f"{path.name} is empty (0 bytes): the save was cut short")
    if head != ZIP_MAGIC:
        raise CheckpointError(f"{path.name} is not a checkpoint (not a file written by "
                              "torch.save)")
    if len(tail) != _TRAILER_SIZE or not tail.startswith(_TRAILER_TAG):
        if not zipfile.is_zipfile(path):
            raise CheckpointError(f"{path.name} is truncated ({size} bytes): the file ends "
                                  "before its index, so the save was cut short or the copy is "
                                  "incomplete")
        return False
    recorded = tail[len(_TRAILER_TAG):-1].decode("ascii", errors="replace")
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        remaining = size - _TRAILER_SIZE
        while remaining > 0:
            chunk = stream.read(min(remaining, 2**22))
            if not chunk:
                break
            digest.update(chunk)
            remaining -= len(chunk)
    if digest.hexdigest() != recorded:
        raise CheckpointError(f"{path.name} is damaged: its contents do not match the checksum "
                              "saved with it (a disk or copy error changed it)")
    return True


class _HashingWriter:
    """A write-only stream that passes bytes on to ``stream`` and hashes them."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.stream.write(data)

    def flush(self) -> None:
        self.stream.flush()


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
        aside = " (set aside as *.unreadable)" if set_aside_unreadable else ""
        raise CheckpointError(
            f"no readable checkpoint in {directory}{aside}: {failures[0]}; restore a good "
            "checkpoint there, or resubmit with --restart to train again from step 0"
        )
    return None


def capture_rng_state() -> dict[str, Any]:
    """This process's random states (Python, NumPy, torch CPU and current GPU), loadable."""
    import torch

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
    import torch

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
    "estimated_checkpoint_bytes",
    "list_checkpoints",
    "load_checkpoint",
    "load_latest_checkpoint",
    "restore_rng_state",
    "rotate_checkpoints",
    "save_checkpoint",
    "verify_checksum",
    "verify_or_warn",
]
