"""How much room a checkpoint needs, and the words for a save that ran out of it."""

from __future__ import annotations

import contextlib
import errno
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# Room kept free beyond the checkpoint's estimated size (zip headers, pickled metadata, file
# system blocks).
_SPACE_MARGIN = 1.02
_SPACE_SLACK_BYTES = 4 * 2**20


def estimated_checkpoint_bytes(state: Mapping[str, Any], existing: list[Path] = ()) -> int:
    """Bytes a checkpoint of ``state`` will take: its tensors' storages (counted once each),
    or the newest of the ``existing`` checkpoints if that is larger, plus a margin."""
    import torch

    storages: dict[tuple[int, str], int] = {}

    def visit(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            storage = value.untyped_storage()
            storages[(storage.data_ptr(), str(value.device))] = storage.nbytes()
        elif isinstance(value, Mapping):
            for item in value.values():
                visit(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                visit(item)

    visit(state)
    estimate = sum(storages.values())
    if existing:
        with contextlib.suppress(OSError):
            estimate = max(estimate, existing[-1].stat().st_size)
    return int(estimate * _SPACE_MARGIN) + _SPACE_SLACK_BYTES


def no_space_message(final: Path, needed: int, free: int, keep: int, kept: int) -> str:
    """The one line of a save that has no room: sizes, what is kept meanwhile, what helps."""
    if kept > 1:
        advice = ("free space there or lower checkpoint.keep (a save first deletes the oldest "
                  "checkpoints beyond checkpoint.keep - 1)")
    else:
        advice = ("free space there (lowering checkpoint.keep frees nothing: the newest "
                  "complete checkpoint stays until the new one is written)")
    return (
        f"No space left on device for {final.name} in {final.parent}: a checkpoint needs about "
        f"{_megabytes(needed)} and {_megabytes(free)} are free, beside the {kept} checkpoint(s) "
        f"kept while it is written (checkpoint.keep={keep}): {advice}"
    )


def _megabytes(count: int) -> str:
    return f"{count / 2**20:.0f} MB" if count >= 2**20 else f"{count / 2**20:.2f} MB"


def is_out_of_space(error: BaseException, directory: Path, needed: int) -> bool:
    """True when a failed write ran out of room (torch hides ENOSPC behind its own errors)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    try:
        return shutil.disk_usage(directory).free < needed
    except OSError:
        return False
