"""What the loop reports while it trains: windowed mean losses and the saliency picture.

Losses are summed on the device step by step (no host synchronisation); a log line averages
the window over all ranks, checks that it is finite and writes it to the log, TensorBoard and
the progress bar.
"""

from __future__ import annotations

import logging
import math
import time

import torch

from ssit.methods import Method
from ssit.train.distributed import DistributedContext, mean_over_ranks
from ssit.train.monitor import RunMonitor
from ssit.train.progress import RunProgress

log = logging.getLogger(__name__)


class LossWindow:
    """Running sums of the losses since the last log line, kept on the device (no sync)."""

    def __init__(self, device: torch.device, loss_names: tuple[str, ...]) -> None:
        self.device = device
        self.names = ("loss", *(f"loss_{name}" for name in loss_names))
        self.reset()

    def reset(self) -> None:
        self.total = torch.zeros(len(self.names), device=self.device)
        self.steps = 0
        self.started = time.monotonic()

    def add(self, losses: torch.Tensor) -> None:
        self.total += losses
        self.steps += 1


def log_window(
    window: LossWindow,
    progress: RunProgress,
    monitor: RunMonitor,
    ctx: DistributedContext,
    global_batch: int,
    steps_per_epoch: int,
    *,
    lr: float,
    scalars: dict[str, float],
) -> None:
    mean = mean_over_ranks(window.total / max(window.steps, 1), ctx).tolist()
    losses = dict(zip(window.names, mean, strict=True))
    if not all(math.isfinite(value) for value in mean):
        raise FloatingPointError(
            f"loss became non-finite by step {progress.step} ({losses}); the last checkpoint "
            f"is {progress.last_checkpoint}"
        )
    seconds = max(time.monotonic() - window.started, 1e-9)
    samples_per_s = window.steps * global_batch / seconds
    if progress.first_losses is None:
        progress.first_losses = losses
    progress.last_losses = losses
    epoch = progress.step / steps_per_epoch
    monitor.scalars(progress.step, {
        **losses, "lr": lr, **scalars, "samples_per_s": samples_per_s, "epoch": epoch,
    })
    shown = {name.removeprefix("loss_"): value for name, value in losses.items()}
    monitor.progress(0, {**shown, "img/s": samples_per_s})
    log.info(
        "step %d epoch %.2f %s lr %.3g %s %.1f samples/s", progress.step, epoch,
        " ".join(f"{name} {value:.4f}" for name, value in losses.items()), lr,
        " ".join(f"{name} {value:.5g}" for name, value in scalars.items()), samples_per_s,
    )
    window.reset()


@torch.no_grad()
def log_picture(
    model: Method,
    monitor: RunMonitor,
    step: int,
    images: list[torch.Tensor],
    maps: list[torch.Tensor | None],
    amp_dtype: torch.dtype | None,
) -> None:
    if maps[0] is None:
        return
    with torch.autocast(images[0].device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        picture = model.saliency_picture(images[0], maps[0])
    if picture is not None:
        monitor.saliency_picture(step, *picture)
