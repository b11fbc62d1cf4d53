"""The pre-training loop: any method on any backbone under DDP, resumable from any step.

Each step evaluates the schedules at the fractional epoch ``step / steps_per_epoch``, lets the
method act before the step (e.g. its momentum encoder's EMA update), runs it under autocast on
the views its recipe asked the pipeline for, sums its named losses with its weights,
back-propagates, unscales, clips the gradients (global norm or each parameter's own), lets the
method act just before the update, and steps the optimiser (AdamW or SGD) with the method's
weight decay on the decayed group; the method may act again after the step (DINO's teacher).
After the step all ranks agree, with one MAX all-reduce on the host (a gloo group, so the CPU
never waits for the GPU), whether any of them was asked to stop or whether rank 0's checkpoint
clock has run out; a
checkpoint gathers every rank's pipeline and random state to rank 0, which writes it.

A run directory holds ``config.yaml``, ``log.txt``, ``tensorboard/``, ``checkpoints/`` and, once
training completes, ``summary.json``. Starting again in a directory with checkpoints resumes from
the newest readable one, mid-epoch, with the same number of ranks.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ssit.backbones import describe_backbone
from ssit.config import save_config
from ssit.data.pipeline import PretrainPipeline
from ssit.methods import Method, create_method
from ssit.train.checkpoint import checkpoint_path, restore_rng_state
from ssit.train.config import (
    REFERENCE_BATCH_SIZE,
    PretrainConfig,
    resolve_precision,
    validate_pretrain_config,
)
from ssit.train.distributed import (
    DEFAULT_TIMEOUT_S,
    DistributedContext,
    any_rank,
    barrier,
    destroy_distributed,
    init_distributed,
)
from ssit.train.gpu_settings import training_memory_format
from ssit.train.loss_log import LossWindow, log_picture, log_window
from ssit.train.monitor import RunMonitor
from ssit.train.optimizer import build_optimizer as build_optimizer_from
from ssit.train.progress import RunProgress
from ssit.train.resume import (
    check_resume_position,
    load_resume_state,
    save_run_checkpoint,
    write_summary,
)
from ssit.train.run_folder import check_run_folder
from ssit.train.schedules import learning_rate, scaled_learning_rate
from ssit.train.step import train_step

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
    """Pre-train the configured method into ``run_dir`` (resuming its checkpoints) until done.

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
        resumed = load_resume_state(cfg, checkpoint_dir, ctx)
        if ctx.is_main:  # only once the checkpoint accepted this config
            save_config(cfg, run_dir / "config.yaml")
        memory_format = training_memory_format(cfg.backbone.name, ctx.device)
        model = build_model(cfg).to(ctx.device, memory_format=memory_format)
        if resumed is not None:
            model.load_state_dict(resumed["model"])
        trained: nn.Module = model
        if ctx.is_distributed:
            if ctx.device.type == "cuda":
                trained = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            trained = DistributedDataParallel(
                trained, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None
            )
        optimizer = build_optimizer(cfg, model)
        scaler = torch.amp.GradScaler(ctx.device.type, enabled=precision == "fp16")
        progress = RunProgress()
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
            img_size=cfg.backbone.img_size,
            views=model.views,
            num_threads=cfg.data.num_threads,
            state=None if resumed is None else resumed["pipeline_states"][ctx.rank],
        )
        steps_per_epoch = len(pipe)
        total_steps = cfg.optim.epochs * steps_per_epoch
        if resumed is not None:
            check_resume_position(resumed, steps_per_epoch, total_steps)
        del resumed

        peak_lr = (scaled_learning_rate(cfg.optim.lr, cfg.optim.batch_size, REFERENCE_BATCH_SIZE)
                   if cfg.optim.scale_lr else cfg.optim.lr)
        amp_dtype = AMP_DTYPES[precision]
        monitor.start(total_steps, progress.step)
        log.info(
            "pre-training %s on %s on %d rank(s) (%s, %s): %d epochs x %d steps, global batch "
            "%d, peak lr %.3g", cfg.method.name, describe_backbone(cfg.backbone), ctx.world_size,
            ctx.device.type, precision,
            cfg.optim.epochs, steps_per_epoch, cfg.optim.batch_size, peak_lr,
        )
        session_start = last_save_time = time.monotonic()
        window = LossWindow(ctx.device, model.loss_names)
        while progress.step < total_steps:
            # One pass of the pipeline runs to the end of the current (possibly resumed) epoch.
            pass_start = progress.step
            for batch in pipe:
                images = [view.to(ctx.device, memory_format=memory_format, non_blocking=True)
                          for view in batch.images]
                maps = [None if m is None else m.to(ctx.device, non_blocking=True)
                        for m in batch.maps]
                epoch = progress.step / steps_per_epoch
                lr = learning_rate(epoch, peak_lr, cfg.optim.warmup_epochs, cfg.optim.epochs,
                                   cfg.optim.min_lr)
                scalars = model.before_step(epoch, cfg.optim.epochs)
                weights = model.loss_weights(epoch, cfg.optim.epochs)
                weight_decay = model.weight_decay(epoch, cfg.optim.epochs, cfg.optim.weight_decay)
                losses = train_step(
                    trained, optimizer, scaler, images, maps, weights,
                    lr=lr, amp_dtype=amp_dtype, clip_grad=cfg.optim.clip_grad,
                    clip_mode=cfg.optim.clip_mode, weight_decay=weight_decay,
                    before_update=partial(model.before_update, epoch),
                )
                scalars.update(model.after_step(epoch, cfg.optim.epochs))
                progress.step += 1
                window.add(losses)
                monitor.progress(1)

                if progress.step % cfg.log.every_steps == 0 or progress.step == total_steps:
                    scalars.update({f"weight_{name}": w for name, w in weights.items()})
                    log_window(window, progress, monitor, ctx, cfg.optim.batch_size,
                               steps_per_epoch, lr=lr, scalars=scalars)
                image_every = cfg.log.image_every_steps
                if ctx.is_main and image_every and progress.step % image_every == 0:
                    log_picture(model, monitor, progress.step, images, maps, amp_dtype)

                # Step boundary: one host-side all-reduce (no device tensor, no GPU sync) tells
                # every rank whether any must stop and whether rank 0's checkpoint clock ran out.
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
                    save_run_checkpoint(cfg, model, optimizer, scaler, pipe, progress,
                                        checkpoint_dir, ctx)
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
            write_summary(run_dir, cfg, ctx, progress, total_steps)
        barrier(ctx)
        log.info("pre-training complete: %d steps, final checkpoint %s", progress.step,
                 progress.last_checkpoint)
        return PretrainOutcome("completed", progress.step, progress.step / steps_per_epoch,
                               progress.last_checkpoint)
    finally:
        monitor.close()
        if pipe is not None:
            pipe.close()


def build_model(cfg: PretrainConfig) -> Method:
    """The method of ``cfg`` on its backbone, initialised from ``cfg.seed`` (same on every rank)."""
    torch.manual_seed(cfg.seed)
    return create_method(cfg.method, cfg.backbone).train()


def build_optimizer(cfg: PretrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The optimiser of ``cfg.optim`` over ``model``'s trainable parameters."""
    return build_optimizer_from(cfg.optim, model)


def _seed_rank(seed: int, rank: int) -> None:
    random.seed(seed + rank)
    np.random.seed((seed + rank) % 2**32)
    torch.manual_seed(seed + rank)


__all__ = [
    "PretrainOutcome",
    "build_model",
    "never",
    "pretrain",
    "pretrain_main",
    "train_step",
]
