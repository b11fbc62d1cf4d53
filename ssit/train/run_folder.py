"""Whether a run folder may start training from step 0.

A folder that has trained before (it holds ``config.yaml``, ``summary.json`` or checkpoints set
aside as unreadable) but holds no checkpoint to resume from must not silently start again from
step 0: the user says so with ``--restart``. Launchers call :func:`check_run_folder` before they
submit, and the training loop calls it again at start on every rank.
"""

from __future__ import annotations

from pathlib import Path

from ssit.backbones.checkpoint_error import CheckpointError
from ssit.train.checkpoint import list_checkpoints

# Files a run leaves in its folder once it has started training.
TRAINING_TRACES = ("config.yaml", "summary.json")
UNREADABLE_SUFFIX = ".unreadable"


class RestartRefusedError(CheckpointError):
    """A run folder that trained before has nothing to resume from; the message is one line."""


def training_traces(run_dir: str | Path) -> list[str]:
    """What in ``run_dir`` shows that a run trained there (relative names, for messages)."""
    run_dir = Path(run_dir)
    found = [name for name in TRAINING_TRACES if (run_dir / name).is_file()]
    checkpoint_dir = run_dir / "checkpoints"
    if checkpoint_dir.is_dir():
        found += sorted(f"checkpoints/{path.name}" for path in checkpoint_dir.iterdir()
                        if path.name.endswith(UNREADABLE_SUFFIX))
    return found


def check_run_folder(run_dir: str | Path, restart: bool) -> None:
    """Refuse to train from step 0 in ``run_dir`` if it trained before, unless ``restart``.

    A folder with checkpoints passes (the run resumes from them), as does a new or empty one.
    Raises :class:`RestartRefusedError` naming what was found and what to do.
    """
    run_dir = Path(run_dir)
    if restart or list_checkpoints(run_dir / "checkpoints"):
        return
    found = training_traces(run_dir)
    if not found:
        return
    shown = ", ".join(found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")
    raise RestartRefusedError(
        f"{run_dir} has trained before (it holds {shown}) but has no checkpoint to resume "
        "from; resubmit with --restart to train again from step 0, or use another --output"
    )


__all__ = ["RestartRefusedError", "check_run_folder", "training_traces"]
