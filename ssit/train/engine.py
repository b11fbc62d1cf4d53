"""The pre-training loop: SSiT on DDP, resumable from any step.

Each step evaluates the schedules at the fractional epoch ``step / steps_per_epoch``, runs the
model under autocast, combines ``w_cl * loss_cl + w_ss(e) * loss_ss``, back-propagates, unscales,
clips the gradient norm and steps AdamW. After the step all ranks agree, with one MAX all-reduce,
whether any of them was asked to stop or whether rank 0's checkpoint clock has run out; a
checkpoint gathers every rank's pipeline and random state to rank 0, which writes it.

A run directory holds ``config.yaml``, ``log.txt``, ``tensorboard/``, ``checkpoints/`` and, once
training completes, ``summary.json``. Starting again in a directory with checkpoints resumes from
the newest readable one, mid-epoch, with the same number of ranks.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ssit.atomic_write import replace_json
from ssit.config import config_to_dict, save_config
from ssit.data.pipeline import PretrainPipeline
from ssit.model import SSiT
from ssit.train.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    capture_rng_state,
    checkpoint_path,
    load_checkpoint,
    load_latest_checkpoint,
    record_world_size,
    restore_rng_state,
    save_checkpoint,
)
from ssit.train.config import (
    REFERENCE_BATCH_SIZE,
    PretrainConfig,
    config_fields_differing,
    resolve_precision,
    resume_locked_fields,
    validate_pretrain_config,
)
from ssit.train.distributed import (
    DEFAULT_TIMEOUT_S,
    DistributedContext,
    all_gather_objects,
    any_rank,
    barrier,
    broadcast_object,
    destroy_distributed,
    init_distributed,
    mean_over_ranks,
)
from ssit.train.monitor import RunMonitor
from ssit.train.run_folder import check_run_folder
from ssit.train.schedules import (
    ema_momentum,
    learning_rate,
    scaled_learning_rate,
    segmentation_weight,
)

log = logging.getLogger(__name__)

# Config keys that must not change when a run resumes: they define what the checkpoint holds.
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def never() -> bool:
    """The default stop request: never stop early."""
    return False


@dataclass(frozen=True)
class PretrainOutcome:
    """How a call to :func:`pretrain` ended."""

    status: Literal["completed", "interrupted"]
    step: int
    epoch: float
    checkpoint: Path | None


@dataclass
class _Progress:
    """Counters that travel in the checkpoint besides model and optimiser."""

    step: int = 0
    elapsed_s: float = 0.0
    first_losses: dict[str, float] | None = None
    last_losses: dict[str, float] | None = None
    last_checkpoint: Path | None = None
    saved_step: int = -1


def pretrain_main(
    cfg: PretrainConfig,
    run_dir: str | Path,
    *,
    should_stop: Callable[[], bool] = never,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    restart: bool = False,
) -> PretrainOutcome:
    """Launcher entry point: join the process group from the environment, train, leave it.

    Reads torchrun-style ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``
    (none of them: one process). ``should_stop`` is polled at every step boundary, e.g. a flag
    set by a preemption signal handler. ``timeout_s`` bounds every collective, so a dead rank
    fails the others within that time. ``restart`` allows training from step 0 in a folder
    that trained before (see :func:`~ssit.train.run_folder.check_run_folder`).
    """
    ctx = init_distributed(device=cfg.device, timeout_s=timeout_s)
    try:
        outcome = pretrain(cfg, run_dir, ctx=ctx, should_stop=should_stop, restart=restart)
    except BaseException as error:
        log.error("rank %d of %d failed: %s", ctx.rank, ctx.world_size, error)
        raise
    destroy_distributed()
    return outcome


def pretrain(
    cfg: PretrainConfig,
    run_dir: str | Path,
    *,
    ctx: DistributedContext | None = None,
    should_stop: Callable[[], bool] = never,
    restart: bool = False,
) -> PretrainOutcome:
    """Pre-train SSiT into ``run_dir`` (resuming from its checkpoints) until done or stopped.

    ``should_stop`` is called once per step on every rank; when it returns True on any rank,
    all ranks stop after the same step, rank 0 writes a checkpoint holding every rank's state
    and the call returns an ``interrupted`` outcome. Without ``ctx`` the process group is
    joined from the environment (see :func:`pretrain_main`).
    """
    ctx = ctx or init_distributed(device=cfg.device)
    validate_pretrain_config(cfg, ctx.world_size)
    precision = resolve_precision(cfg.precision, ctx.device.type)
    run_dir = Path(run_dir)
    checkpoint_dir = run_dir / "checkpoints"
    check_run_folder(run_dir, restart)  # every rank, before any of them writes there
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    barrier(ctx)
    monitor = RunMonitor(run_dir, ctx.rank, cfg.log.progress_bar)
    pipe = None
    try:
        resumed = _load_resume_state(cfg, checkpoint_dir, ctx)
        if ctx.is_main:  # only once the checkpoint accepted this config
            save_config(cfg, run_dir / "config.yaml")
        model = build_model(cfg).to(ctx.device)
        if resumed is not None:
            model.load_state_dict(resumed["model"])
        trained: nn.Module = model
        if ctx.is_distributed:
            if ctx.device.type == "cuda":
                trained = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            trained = DistributedDataParallel(
                trained, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None
            )
        optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad],
            lr=0.0, weight_decay=cfg.optim.weight_decay,
        )
        scaler = torch.amp.GradScaler(ctx.device.type, enabled=precision == "fp16")
        progress = _Progress()
        if resumed is None:
            _seed_rank(cfg.seed, ctx.rank)
        else:
            optimizer.load_state_dict(resumed["optimizer"])
            if resumed.get("scaler"):
                scaler.load_state_dict(resumed["scaler"])
            restore_rng_state(resumed["rng_states"][ctx.rank])
            progress.step = progress.saved_step = int(resumed["step"])
            progress.elapsed_s = float(resumed.get("elapsed_s", 0.0))
            progress.first_losses = resumed.get("first_losses")
            progress.last_losses = resumed.get("last_losses")
            progress.last_checkpoint = checkpoint_path(checkpoint_dir, progress.step)
        pipe = PretrainPipeline(
            cfg.data.shards,
            cfg.batch_size_per_rank(ctx.world_size),
            rank=ctx.rank,
            world_size=ctx.world_size,
            device=ctx.device.type,
            seed=cfg.seed,
            img_size=cfg.model.img_size,
            num_threads=cfg.data.num_threads,
            state=None if resumed is None else resumed["pipeline_states"][ctx.rank],
        )
        steps_per_epoch = len(pipe)
        total_steps = cfg.optim.epochs * steps_per_epoch
        if resumed is not None:
            _check_resume_position(resumed, steps_per_epoch, total_steps)
        del resumed

        peak_lr = (scaled_learning_rate(cfg.optim.lr, cfg.optim.batch_size, REFERENCE_BATCH_SIZE)
                   if cfg.optim.scale_lr else cfg.optim.lr)
        amp_dtype = AMP_DTYPES[precision]
        monitor.start(total_steps, progress.step)
        log.info(
            "pre-training %s on %d rank(s) (%s, %s): %d epochs x %d steps, global batch %d, "
            "peak lr %.3g", cfg.model.arch, ctx.world_size, ctx.device.type, precision,
            cfg.optim.epochs, steps_per_epoch, cfg.optim.batch_size, peak_lr,
        )
        session_start = last_save_time = time.monotonic()
        window = _LossWindow(ctx.device)
        while progress.step < total_steps:
            # One pass of the pipeline runs to the end of the current (possibly resumed) epoch.
            pass_start = progress.step
            for batch in pipe:
                x1, x2, m1, m2 = (t.to(ctx.device, non_blocking=True) for t in batch)
                epoch = progress.step / steps_per_epoch
                lr = learning_rate(epoch, peak_lr, cfg.optim.warmup_epochs, cfg.optim.epochs)
                momentum = ema_momentum(epoch, cfg.model.momentum, cfg.optim.epochs)
                w_ss = segmentation_weight(epoch, cfg.loss.w_ss, cfg.optim.epochs,
                                           cfg.loss.ss_decay)
                losses = train_step(
                    trained, optimizer, scaler, (x1, x2, m1, m2),
                    lr=lr, momentum=momentum, w_cl=cfg.loss.w_cl, w_ss=w_ss,
                    amp_dtype=amp_dtype, clip_grad=cfg.optim.clip_grad,
                )
                progress.step += 1
                window.add(losses)
                monitor.progress(1)

                if progress.step % cfg.log.every_steps == 0 or progress.step == total_steps:
                    _log_window(window, progress, monitor, ctx, cfg, steps_per_epoch,
                                lr=lr, momentum=momentum, w_ss=w_ss)
                image_every = cfg.log.image_every_steps
                if (ctx.is_main and image_every and model.segmentation
                        and progress.step % image_every == 0):
                    _log_picture(model, monitor, progress.step, x1, m1, amp_dtype,
                                 cfg.model.saliency_threshold)

                # Step boundary: one all-reduce tells every rank whether any must stop and
                # whether rank 0's checkpoint clock has run out.
                time_due = bool(cfg.checkpoint.every_minutes) and (
                    time.monotonic() - last_save_time >= 60.0 * cfg.checkpoint.every_minutes
                )
                stop, time_due = any_rank([should_stop(), ctx.is_main and time_due], ctx)
                epoch_due = (
                    progress.step % steps_per_epoch == 0
                    and bool(cfg.checkpoint.every_epochs)
                    and (progress.step // steps_per_epoch) % cfg.checkpoint.every_epochs == 0
                )
                if stop or time_due or epoch_due or progress.step == total_steps:
                    progress.elapsed_s += time.monotonic() - session_start
                    session_start = time.monotonic()
                    _save(cfg, model, optimizer, scaler, pipe, progress, checkpoint_dir, ctx)
                    last_save_time = time.monotonic()
                if stop:
                    log.info("stopped at step %d on request; resume from %s",
                             progress.step, progress.last_checkpoint)
                    return PretrainOutcome("interrupted", progress.step,
                                           progress.step / steps_per_epoch,
                                           progress.last_checkpoint)
            if progress.step % steps_per_epoch or progress.step == pass_start:
                raise RuntimeError(
                    f"the data pipeline ended an epoch after step {progress.step}, which is not "
                    f"a multiple of its {steps_per_epoch} batches per epoch"
                )
        if ctx.is_main:
            _write_summary(run_dir, cfg, ctx, progress, total_steps)
        barrier(ctx)
        log.info("pre-training complete: %d steps, final checkpoint %s", progress.step,
                 progress.last_checkpoint)
        return PretrainOutcome("completed", progress.step, progress.step / steps_per_epoch,
                               progress.last_checkpoint)
    finally:
        monitor.close()
        if pipe is not None:
            pipe.close()


def build_model(cfg: PretrainConfig) -> SSiT:
    """The SSiT model of ``cfg``, initialised from ``cfg.seed`` (identically on every rank)."""
    torch.manual_seed(cfg.seed)
    model = SSiT(
        arch=cfg.model.arch,
        img_size=cfg.model.img_size,
        mask_ratio=cfg.model.mask_ratio,
        temperature=cfg.model.temperature,
        saliency_threshold=cfg.model.saliency_threshold,
        pool=cfg.model.pool,
        proj_dim=cfg.model.proj_dim,
        mlp_dim=cfg.model.mlp_dim,
        segmentation=cfg.model.segmentation,
        encoder_kwargs=cfg.model.encoder_kwargs,
    )
    return model.train()


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    *,
    lr: float,
    momentum: float,
    w_cl: float,
    w_ss: float,
    amp_dtype: torch.dtype | None,
    clip_grad: float | None,
) -> torch.Tensor:
    """One optimisation step; returns the detached ``[loss, loss_cl, loss_ss]``."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    x1, x2, m1, m2 = batch
    device_type = x1.device.type
    with torch.autocast(device_type, dtype=amp_dtype, enabled=amp_dtype is not None):
        loss_cl, loss_ss = model(x1, x2, m1, m2, momentum)
    loss = w_cl * loss_cl.float() + w_ss * loss_ss.float()
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if clip_grad is not None:
        scaler.unscale_(optimizer)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, clip_grad)
    scaler.step(optimizer)
    scaler.update()
    return torch.stack([loss.detach(), loss_cl.detach().float(), loss_ss.detach().float()])


class _LossWindow:
    """Running sums of the losses since the last log line, kept on the device (no sync)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.total = torch.zeros(3, device=self.device)
        self.steps = 0
        self.started = time.monotonic()

    def add(self, losses: torch.Tensor) -> None:
        self.total += losses
        self.steps += 1


def _log_window(
    window: _LossWindow,
    progress: _Progress,
    monitor: RunMonitor,
    ctx: DistributedContext,
    cfg: PretrainConfig,
    steps_per_epoch: int,
    *,
    lr: float,
    momentum: float,
    w_ss: float,
) -> None:
    mean = mean_over_ranks(window.total / max(window.steps, 1), ctx).tolist()
    losses = {"loss": mean[0], "loss_cl": mean[1], "loss_ss": mean[2]}
    if not all(math.isfinite(value) for value in mean):
        raise FloatingPointError(
            f"loss became non-finite by step {progress.step} ({losses}); the last checkpoint "
            f"is {progress.last_checkpoint}"
        )
    seconds = max(time.monotonic() - window.started, 1e-9)
    samples_per_s = window.steps * cfg.optim.batch_size / seconds
    if progress.first_losses is None:
        progress.first_losses = losses
    progress.last_losses = losses
    epoch = progress.step / steps_per_epoch
    monitor.scalars(progress.step, {
        **losses, "lr": lr, "momentum": momentum, "seg_weight": w_ss,
        "samples_per_s": samples_per_s, "epoch": epoch,
    })
    monitor.progress(0, {"loss": losses["loss"], "cl": losses["loss_cl"],
                         "ss": losses["loss_ss"], "img/s": samples_per_s})
    log.info(
        "step %d epoch %.2f loss %.4f (cl %.4f ss %.4f) lr %.3g m %.5f w_ss %.3g %.1f samples/s",
        progress.step, epoch, losses["loss"], losses["loss_cl"], losses["loss_ss"], lr,
        momentum, w_ss, samples_per_s,
    )
    window.reset()


@torch.no_grad()
def _log_picture(
    model: SSiT,
    monitor: RunMonitor,
    step: int,
    view: torch.Tensor,
    saliency: torch.Tensor,
    amp_dtype: torch.dtype | None,
    threshold: float,
) -> None:
    count = min(4, view.shape[0])
    with torch.autocast(view.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        logits = model.segment(view[:count])
    target = (saliency[:count] > threshold).float()
    monitor.saliency_picture(step, view[:count], target, torch.sigmoid(logits.float()))


def _save(
    cfg: PretrainConfig,
    model: SSiT,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    pipe: Any,
    progress: _Progress,
    checkpoint_dir: Path,
    ctx: DistributedContext,
) -> None:
    """Collective: gather every rank's pipeline and RNG state; rank 0 writes the checkpoint."""
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
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "pipeline_states": [pipeline_state for pipeline_state, _ in per_rank],
            "rng_states": [rng_state for _, rng_state in per_rank],
            "config": config_to_dict(cfg),
            "elapsed_s": progress.elapsed_s,
            "first_losses": progress.first_losses,
            "last_losses": progress.last_losses,
            "saved_at": time.time(),
        }
        path = save_checkpoint(state, checkpoint_dir, cfg.checkpoint.keep)
        record_world_size(checkpoint_dir, ctx.world_size)
        log.info("saved checkpoint %s", path)
    barrier(ctx)
    progress.last_checkpoint = checkpoint_path(checkpoint_dir, progress.step)
    progress.saved_step = progress.step


def _load_resume_state(
    cfg: PretrainConfig, checkpoint_dir: Path, ctx: DistributedContext
) -> dict[str, Any] | None:
    """The checkpoint to resume from (rank 0 picks it, every rank reads it), or None."""
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
    saved_config = state.get("config") or {}
    differing = config_fields_differing(saved_config, config_to_dict(cfg))
    locked = resume_locked_fields(differing)
    if locked:
        raise CheckpointError(
            f"cannot resume {chosen}: {', '.join(locked)} differ from the checkpoint's config"
        )
    if differing and ctx.is_main:
        log.warning("resuming with changed settings: %s", ", ".join(differing))
    log.info("resuming from %s (step %d)", chosen, state["step"])
    return state


def _check_resume_position(
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


def _seed_rank(seed: int, rank: int) -> None:
    random.seed(seed + rank)
    np.random.seed((seed + rank) % 2**32)
    torch.manual_seed(seed + rank)


def _write_summary(
    run_dir: Path,
    cfg: PretrainConfig,
    ctx: DistributedContext,
    progress: _Progress,
    total_steps: int,
) -> None:
    summary = {
        "status": "completed",
        "steps": progress.step,
        "total_steps": total_steps,
        "epochs": cfg.optim.epochs,
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


__all__ = [
    "PretrainOutcome",
    "build_model",
    "never",
    "pretrain",
    "pretrain_main",
    "train_step",
]
