"""What a run shows while it trains: log.txt, TensorBoard scalars and pictures, a progress bar.

Rank 0 logs everything at INFO to ``<run>/log.txt``, writes TensorBoard events under
``<run>/tensorboard`` and draws the progress bar; the other ranks log only warnings (to the same
file, tagged with their rank).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from ssit.prepare.statistics import EYEPACS_MEAN, EYEPACS_STD

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_PACKAGE_LOGGER = "ssit"
# The pipeline normalises views with the EyePACS channel statistics (see ssit.prepare.statistics).


class _TqdmHandler(logging.StreamHandler):
    """Console handler that prints through tqdm so log lines do not break the progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


class RunMonitor:
    """Log file, TensorBoard writer and progress bar of one run, on one rank."""

    def __init__(self, run_dir: str | Path, rank: int, progress_bar: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.rank = rank
        self.progress_bar = progress_bar
        self._handlers = _attach_log_handlers(self.run_dir / "log.txt", rank)
        self.writer = None
        self.bar = None

    def start(self, total_steps: int, initial_step: int) -> None:
        """Open the TensorBoard writer and the progress bar (rank 0) at ``initial_step``."""
        if self.rank != 0:
            return
        from torch.utils.tensorboard import SummaryWriter

        # On resume, drop events an interrupted run wrote after its last checkpoint's step.
        self.writer = SummaryWriter(
            str(self.run_dir / "tensorboard"), purge_step=initial_step + 1 if initial_step else None
        )
        if self.progress_bar:
            # In a batch log (not a terminal) the bar is redrawn rarely, in plain ASCII.
            interactive = sys.stderr.isatty()
            self.bar = tqdm(
                total=total_steps, initial=initial_step, desc="pretrain", unit="step",
                dynamic_ncols=interactive, ncols=None if interactive else 110,
                ascii=not interactive, mininterval=0.5 if interactive else 60.0,
                file=sys.stderr,
            )

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Record scalars under ``train/<name>`` at ``step``."""
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(f"train/{name}", value, step)

    def progress(self, steps: int, postfix: dict[str, float] | None = None) -> None:
        """Advance the bar by ``steps`` and, if given, show ``postfix`` values."""
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
            self.bar.update(steps)

    def saliency_picture(
        self,
        step: int,
        view: torch.Tensor,
        target: torch.Tensor,
        predicted: torch.Tensor,
        max_images: int = 4,
    ) -> None:
        """Show views, their saliency targets and predicted saliency side by side."""
        if self.writer is None:
            return
        self.writer.add_image(
            "train/view_target_prediction",
            saliency_grid(view, target, predicted, max_images),
            step,
        )

    def close(self) -> None:
        """Close the bar and the writer and detach this run's log handlers."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        package_logger = logging.getLogger(_PACKAGE_LOGGER)
        for handler in self._handlers:
            package_logger.removeHandler(handler)
            handler.close()
        self._handlers = []


def saliency_grid(
    view: torch.Tensor, target: torch.Tensor, predicted: torch.Tensor, max_images: int = 4
) -> torch.Tensor:
    """A ``(3, H', W')`` picture in [0, 1]: one row per image of view | target | prediction.

    ``view`` is a normalised ``(B, 3, H, W)`` batch, ``target`` and ``predicted`` are
    ``(B, 1, H, W)`` maps in [0, 1].
    """
    from torchvision.utils import make_grid

    n = min(max_images, view.shape[0])
    mean = torch.tensor(EYEPACS_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(EYEPACS_STD).view(1, 3, 1, 1)
    images = (view[:n].detach().float().cpu() * std + mean).clamp(0, 1)
    target = target[:n].detach().float().cpu().clamp(0, 1).expand(-1, 3, -1, -1)
    predicted = predicted[:n].detach().float().cpu().clamp(0, 1).expand(-1, 3, -1, -1)
    tiles = torch.stack([images, target, predicted], dim=1).flatten(0, 1)
    return make_grid(tiles, nrow=3, padding=2, pad_value=1.0)


def _attach_log_handlers(log_file: Path, rank: int) -> list[logging.Handler]:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    package_logger = logging.getLogger(_PACKAGE_LOGGER)
    level = logging.INFO if rank == 0 else logging.WARNING
    if package_logger.getEffectiveLevel() > level or package_logger.level == logging.NOTSET:
        package_logger.setLevel(logging.INFO)
    prefix = "" if rank == 0 else f"[rank {rank}] "
    formatter = logging.Formatter(prefix + LOG_FORMAT)
    file_handler = logging.FileHandler(log_file, mode="a", encoding="utf-8")
    file_handler.setLevel(level)
    file_handler.setFormatter(formatter)
    handlers: list[logging.Handler] = [file_handler]
    if not logging.getLogger().handlers:
        console = _TqdmHandler() if sys.stderr.isatty() else logging.StreamHandler(sys.stderr)
        console.setLevel(level)
        console.setFormatter(logging.Formatter(f"{prefix}%(levelname)s %(message)s"))
        handlers.append(console)
    for handler in handlers:
        package_logger.addHandler(handler)
    return handlers
