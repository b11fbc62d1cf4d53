"""Saving and resuming a run: the collective checkpoint, the choice of where to resume, the summary.

A checkpoint gathers every rank's pipeline and random state to rank 0, which writes it with the
model, optimiser and scaler. On a restart rank 0 picks the newest readable checkpoint, every
rank reads it, and it is refused when it was written by another number of ranks, with other
locked settings, or for other data.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from ssit.atomic_write import replace_json
from ssit.backbones import describe_backbone
from ssit.config import ConfigError, config_from_values, config_to_dict
from ssit.methods import Method
from ssit.train.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    capture_rng_state,
    checkpoint_path,
    load_checkpoint,
    load_latest_checkpoint,
    record_world_size,
    save_checkpoint,
)
from ssit.train.config import (
    PretrainConfig,
    config_fields_differing,
    resume_locked_fields,
    upgrade_pretrain_values,
)
from ssit.train.distributed import (
    DistributedContext,
    all_gather_objects,
    barrier,
    broadcast_object,
)
from ssit.train.progress import RunProgress
from ssit.train.resume_data import check_resume_data

log = logging.getLogger(__name__)


def save_run_checkpoint(
    cfg: PretrainConfig,
    model: Method,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    pipe: Any,
    progress: RunProgress,
    checkpoint_dir: Path,
    ctx: DistributedContext,
    data_fingerprint: dict[str, str] | None = None,
) -> None:
    """Collective: gather every rank's pipeline and RNG state; rank 0 writes the checkpoint
    (with ``data_fingerprint``, the :func:`~ssit.data.fingerprint.shard_fingerprint` of the
    shards it trained on)."""
    if progress.saved_step == progress.step:
        return
    per_rank = all_gather_objects((pipe.state_dict(), capture_rng_state()), ctx)
    if ctx.is_main:
        state = {
            "format": CHECKPOINT_FORMAT,
            "step": progress.step,
            "epoch": progress.step // len(pipe),
            "steps_per_epoch": len(pipe),
            "world_size": ctx.world_size,
            "method": cfg.method.name,
            "backbone": cfg.backbone.name,
            "export_branch": model.export_branch,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "pipeline_states": [pipeline_state for pipeline_state, _ in per_rank],
            "rng_states": [rng_state for _, rng_state in per_rank],
            "config": config_to_dict(cfg),
            "data_fingerprint": data_fingerprint,
            "elapsed_s": progress.elapsed_s,
            "first_losses": progress.first_losses,
            "last_losses": progress.last_losses,
            "saved_at": time.time(),
        }
        path = save_checkpoint(state, checkpoint_dir, cfg.checkpoint.keep)
        record_world_size(checkpoint_dir, ctx.world_size, data_fingerprint)
        log.info("saved checkpoint %s", path)
    barrier(ctx)
    progress.last_checkpoint = checkpoint_path(checkpoint_dir, progress.step)
    progress.saved_step = progress.step


def load_resume_state(
    cfg: PretrainConfig,
    checkpoint_dir: Path,
    ctx: DistributedContext,
    data_fingerprint: dict[str, str] | None = None,
) -> dict[str, Any] | None:
    """The checkpoint to resume from (rank 0 picks it, every rank reads it), or None.

    With ``data_fingerprint`` (the shards this run reads), a checkpoint trained on other shards
    is refused unless ``data.allow_other_shards`` (see
    :func:`~ssit.train.resume_data.check_resume_data`).
    """
    chosen: str | None = None
    state: dict[str, Any] | None = None
    failure: str | None = None
    if ctx.is_main:
        try:
            found = load_latest_checkpoint(checkpoint_dir)
        except CheckpointError as error:
            failure = str(error)
        else:
            if found is not None:
                chosen, state = str(found[0]), found[1]
    chosen, failure = broadcast_object((chosen, failure), ctx)
    if failure is not None:
        raise CheckpointError(failure)
    if chosen is None:
        return None
    if state is None:
        state = load_checkpoint(chosen)
    if state["world_size"] != ctx.world_size:
        raise CheckpointError(
            f"{chosen} was written by {state['world_size']} ranks; resume it with "
            f"{state['world_size']} ranks, not {ctx.world_size}"
        )
    saved_config = saved_config_with_defaults(state.get("config") or {})
    differing = config_fields_differing(saved_config, config_to_dict(cfg))
    locked = resume_locked_fields(differing)
    if locked:
        raise CheckpointError(
            f"cannot resume {chosen}: {', '.join(locked)} differ from the checkpoint's config"
        )
    if differing and ctx.is_main:
        log.warning("resuming with changed settings: %s", ", ".join(differing))
    if data_fingerprint is not None:
        check_resume_data(state.get("data_fingerprint"), data_fingerprint, chosen,
                          cfg.data.allow_other_shards, ctx.is_main)
    log.info("resuming from %s (step %d)", chosen, state["step"])
    return state


def saved_config_with_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's config with today's defaults for keys added since it was written, so a
    new option left at its default does not count as changed; as saved if it no longer
    parses."""
    try:
        return config_to_dict(config_from_values(PretrainConfig, saved))
    except ConfigError:
        return upgrade_pretrain_values(saved)


def check_resume_position(
    state: dict[str, Any], steps_per_epoch: int, total_steps: int
) -> None:
    saved_per_epoch = state.get("steps_per_epoch", steps_per_epoch)
    if saved_per_epoch != steps_per_epoch:
        raise CheckpointError(
            f"the checkpoint was taken with {saved_per_epoch} steps per epoch but the data now "
            f"gives {steps_per_epoch}; the shards changed since the run started"
        )
    if state["step"] > total_steps:
        raise CheckpointError(
            f"the checkpoint is at step {state['step']}, beyond the {total_steps} steps this "
            "config trains for"
        )


def write_summary(
    run_dir: Path,
    cfg: PretrainConfig,
    ctx: DistributedContext,
    progress: RunProgress,
    total_steps: int,
) -> None:
    summary = {
        "status": "completed",
        "steps": progress.step,
        "total_steps": total_steps,
        "epochs": cfg.optim.epochs,
        "method": cfg.method.name,
        "backbone": describe_backbone(cfg.backbone),
        "world_size": ctx.world_size,
        "global_batch": cfg.optim.batch_size,
        "elapsed_s": round(progress.elapsed_s, 3),
        "first_losses": progress.first_losses,
        "last_losses": progress.last_losses,
        "final_checkpoint": str(progress.last_checkpoint),
        "run_dir": str(run_dir),
        "log": str(run_dir / "log.txt"),
        "tensorboard": str(run_dir / "tensorboard"),
    }
    replace_json(run_dir / "summary.json", summary, indent=2)
