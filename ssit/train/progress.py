"""The counters of a run that travel in its checkpoints besides model and optimiser."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class RunProgress:
    """Counters that travel in the checkpoint besides model and optimiser."""

    step: int = 0
    elapsed_s: float = 0.0
    first_losses: dict[str, float] | None = None
    last_losses: dict[str, float] | None = None
    last_checkpoint: Path | None = None
    saved_step: int = -1
