"""Whether a run may resume on the shards it reads: the fingerprint its checkpoints recorded
against the fingerprint of ``data.shards`` now. Kept free of torch, so that a launcher can make
the same check before it submits a job."""

from __future__ import annotations

import logging

from ssit.backbones.checkpoint_error import CheckpointError

log = logging.getLogger(__name__)


def check_resume_data(
    saved: dict[str, str] | None,
    current: dict[str, str],
    checkpoint: str,
    allow_other_shards: bool,
    log_it: bool = True,
) -> None:
    """Refuse to resume ``checkpoint`` on shards whose fingerprint differs from the one it saved
    (one line naming both sources), unless ``allow_other_shards``: then say so in the log. A
    checkpoint without a fingerprint (written before they were recorded) resumes with a
    warning."""
    if not isinstance(saved, dict) or not saved.get("digest"):
        if log_it:
            log.warning("%s records no fingerprint of its shards (an older checkpoint): resuming "
                        "without checking that data.shards holds the same data", checkpoint)
        return
    if saved["digest"] == current["digest"]:
        return
    difference = (f"it was trained on shards with fingerprint {saved['digest'][:12]} (from "
                  f"{saved.get('source', 'unknown')}) but data.shards now has fingerprint "
                  f"{current['digest'][:12]} (from {current['source']})")
    if not allow_other_shards:
        raise CheckpointError(f"cannot resume {checkpoint}: {difference}; set "
                              "data.allow_other_shards=true to continue on these shards on "
                              "purpose, or use another --output")
    if log_it:
        log.warning("resuming %s on other shards on purpose (data.allow_other_shards=true): %s",
                    checkpoint, difference)
