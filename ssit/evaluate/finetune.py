"""Fine-tuning and linear probing: one regression loop, the backbone frozen or not.

The model predicts the grade as one number trained with MSE; predictions become grades through
thresholds and the epoch with the best validation kappa is kept (``best.pt``, the whole
model). ``last.pt`` is written after every epoch, so an interrupted run continues from its last
finished epoch; a frozen backbone is left out of it (it does not change, and the resumed job
builds it again from its encoder checkpoint).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ssit.atomic_write import replacing
from ssit.evaluate.config import TrainConfig
from ssit.evaluate.encoder import GradingModel
from ssit.evaluate.inference import collect_outputs
from ssit.evaluate.metrics import grades_from_scores, grading_metrics
from ssit.evaluate.precision import autocast
from ssit.train.schedules import learning_rate

LOGGER = logging.getLogger(__name__)
LAST_CHECKPOINT = "last.pt"
BEST_WEIGHTS = "best.pt"
_BACKBONE = "backbone."


class TrainingError(RuntimeError):
    """Training that cannot go on (e.g. a non-finite loss)."""


@dataclass
class FitResult:
    """Outcome of :func:`fit_regression`: the selected epoch and the per-epoch history."""

    best_epoch: int
    best_val_kappa: float
    history: list[dict] = field(default_factory=list)


def predict_scores(
    model: GradingModel, loader: DataLoader, device: torch.device, precision: str,
    desc: str = "predict",
) -> tuple[np.ndarray, np.ndarray]:
    """Continuous grade predictions and true grades of every image of ``loader``."""
    scores, grades = collect_outputs(model, loader, device, precision, desc=desc, leave=False)
    return scores.numpy().astype(np.float64), grades.numpy()


def regression_metrics(
    scores: np.ndarray, grades: np.ndarray, thresholds: list[float]
) -> dict:
    """Grading metrics of continuous predictions (the score itself ranks referable DR)."""
    return grading_metrics(grades, grades_from_scores(scores, thresholds), scores)


def fit_regression(
    model: GradingModel,
    train_loader: DataLoader,
    val_loader: DataLoader,
    cfg: TrainConfig,
    out_dir: Path,
    device: torch.device,
    precision: str,
) -> FitResult:
    """Train ``model`` for ``cfg.epochs`` and leave the best-validation-kappa weights in it.

    Adam with ``cfg.base_lr`` and ``cfg.decay``, cosine schedule (optional linear warm-up)
    evaluated per step, MSE between the predicted and the true grade.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = parameter_groups(model, cfg.head_lr_scale)
    optimizer = torch.optim.Adam(groups, lr=cfg.base_lr, weight_decay=cfg.decay)
    state = _resume(model, optimizer, out_dir)
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise TrainingError("the training loader yields no batches")
    LOGGER.info("training %d parameters for %d epochs of %d steps (lr %.2g, head x%g, wd %.2g)",
                sum(p.numel() for group in groups for p in group["params"]), cfg.epochs,
                steps_per_epoch, cfg.base_lr, cfg.head_lr_scale, cfg.decay)
    for epoch in range(state.start_epoch, cfg.epochs):
        _seed_epoch(train_loader, cfg.seed, epoch)
        model.train()
        total, count = 0.0, 0
        progress = tqdm(train_loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch",
                        mininterval=5.0, leave=False)
        for step, (images, grades) in enumerate(progress):
            lr = learning_rate(epoch + step / steps_per_epoch, cfg.base_lr, cfg.warmup_epochs,
                               cfg.epochs)
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
            with autocast(device, precision):
                scores = model(images.to(device, non_blocking=True))
            loss = torch.nn.functional.mse_loss(scores.float(), grades.to(device).float())
            if not torch.isfinite(loss):
                raise TrainingError(f"loss is {loss.item()} at epoch {epoch + 1} step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(grades)
            count += len(grades)
        scores, grades = predict_scores(model, val_loader, device, precision, desc="validate")
        val = regression_metrics(scores, grades, cfg.thresholds)
        record = {"epoch": epoch + 1, "train_loss": total / count, "val_kappa": val["kappa"],
                  "val_accuracy": val["accuracy"], "lr": lr}
        state.history.append(record)
        LOGGER.info("epoch %d/%d: train loss %.4f, val kappa %.4f, val accuracy %.4f",
                    epoch + 1, cfg.epochs, record["train_loss"], val["kappa"], val["accuracy"])
        if _better(val["kappa"], state.best_val_kappa) or state.best_epoch == 0:
            state.best_val_kappa, state.best_epoch = val["kappa"], epoch + 1
            _save_atomic(model.state_dict(), out_dir / BEST_WEIGHTS)
        _save_atomic({"model": resumable_state(model), "optimizer": optimizer.state_dict(),
                      "epoch": epoch + 1, "best_epoch": state.best_epoch,
                      "best_val_kappa": state.best_val_kappa, "history": state.history},
                     out_dir / LAST_CHECKPOINT)
    model.load_state_dict(torch.load(out_dir / BEST_WEIGHTS, map_location=device,
                                     weights_only=True))
    LOGGER.info("selected epoch %d (val kappa %.4f)", state.best_epoch, state.best_val_kappa)
    return FitResult(state.best_epoch, state.best_val_kappa, state.history)


def resumable_state(model: GradingModel) -> dict[str, torch.Tensor]:
    """What ``last.pt`` keeps of ``model``: its whole state, less a frozen backbone."""
    state = model.state_dict()
    if not model.freeze_backbone:
        return state
    return {name: value for name, value in state.items() if not name.startswith(_BACKBONE)}


def parameter_groups(model: GradingModel, head_lr_scale: float = 1.0) -> list[dict]:
    """Optimiser groups of the trainable parameters: the backbone's, then the head's.

    Each group carries ``lr_scale``, the factor applied to the scheduled learning rate.
    """
    backbone = [p for p in model.backbone.parameters() if p.requires_grad]
    head = [p for p in model.head.parameters() if p.requires_grad]
    groups = [{"params": backbone, "lr_scale": 1.0}] if backbone else []
    return [*groups, {"params": head, "lr_scale": head_lr_scale}]


@dataclass
class _LoopState:
    start_epoch: int = 0
    best_epoch: int = 0
    best_val_kappa: float = float("nan")
    history: list[dict] = field(default_factory=list)


def _better(kappa: float, best: float) -> bool:
    if math.isnan(kappa):
        return False
    return math.isnan(best) or kappa > best


def _resume(model: GradingModel, optimizer: torch.optim.Optimizer, out_dir: Path) -> _LoopState:
    path = out_dir / LAST_CHECKPOINT
    if not path.is_file():
        return _LoopState()
    saved = torch.load(path, map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(saved["model"], strict=False)
    left_out = model.freeze_backbone and all(name.startswith(_BACKBONE) for name in missing)
    if unexpected or (missing and not left_out):
        raise TrainingError(f"{path} does not match this model (missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]}): grade into a new output folder")
    optimizer.load_state_dict(saved["optimizer"])
    LOGGER.info("resuming from %s after epoch %d", path, saved["epoch"])
    return _LoopState(saved["epoch"], saved["best_epoch"], saved["best_val_kappa"],
                      list(saved["history"]))


def _seed_epoch(loader: DataLoader, seed: int, epoch: int) -> None:
    """Make the shuffle and the augmentation of an epoch depend only on (seed, epoch)."""
    torch.manual_seed(seed * 1000 + epoch)
    if loader.generator is not None:
        loader.generator.manual_seed(seed * 1000 + epoch)


def _save_atomic(obj: object, path: Path) -> None:
    with replacing(path) as partial:
        torch.save(obj, partial)
