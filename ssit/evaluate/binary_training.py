"""Binary (referable-DR) classifiers and their resumable SGD training loop.

One stage of the semi-supervised protocol trains a model for a number of epochs with BCE
against targets that a function computes per batch (true labels, or a teacher's
pseudo-labels on that very batch). ``last.pt`` in the stage folder is written after every
epoch, so an interrupted stage continues at its next epoch; ``final.pt`` marks a finished
stage, which is then loaded instead of trained again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ssit.atomic_write import replacing
from ssit.evaluate.config import StageConfig
from ssit.evaluate.encoder import Encoder
from ssit.evaluate.finetune import TrainingError
from ssit.evaluate.inference import collect_outputs
from ssit.evaluate.metrics import REFERABLE_GRADE
from ssit.evaluate.precision import autocast

LOGGER = logging.getLogger(__name__)
LAST_CHECKPOINT = "last.pt"
FINAL_WEIGHTS = "final.pt"

Targets = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class EncoderClassifier(nn.Module):
    """The encoder under evaluation with the head Linear(d, hidden)-Linear(hidden, 1)."""

    def __init__(self, encoder: Encoder, hidden: int = 512) -> None:
        super().__init__()
        self.backbone = encoder.model
        self.kind = encoder.kind
        width = encoder.kind.grading_dim(encoder.model)
        self.head = nn.Sequential(nn.Linear(width, hidden), nn.Linear(hidden, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The referable-DR logit, shape (batch,)."""
        return self.head(self.kind.grading_features(self.backbone, images).float()).squeeze(1)


class TimmClassifier(nn.Module):
    """A timm model with one output (the student); returns the logit, shape (batch,)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images).float().squeeze(1)


def referable_targets(images: torch.Tensor, grades: torch.Tensor) -> torch.Tensor:
    """The true referable-DR labels of a batch as float targets."""
    return (grades >= REFERABLE_GRADE).float()


def is_finished(stage_dir: Path) -> bool:
    """Whether the stage in ``stage_dir`` has finished (its final weights are written)."""
    return (Path(stage_dir) / FINAL_WEIGHTS).is_file()


def load_final(model: nn.Module, stage_dir: Path) -> list[dict]:
    """Load a finished stage's weights into ``model``; return its training history."""
    saved = torch.load(Path(stage_dir) / FINAL_WEIGHTS, map_location="cpu", weights_only=True)
    model.load_state_dict(saved["model"])
    return list(saved["history"])


def fit_binary(
    model: nn.Module, loader: DataLoader, targets: Targets, stage: StageConfig,
    stage_dir: Path, device: torch.device, precision: str, seed: int, name: str,
) -> list[dict]:
    """Train ``model`` with BCE on ``targets(images, grades)`` (SGD, constant learning rate).

    A finished stage is loaded, not trained again; an interrupted one continues after its
    last finished epoch. Returns the per-epoch history (loss, mean target).
    """
    stage_dir = Path(stage_dir)
    if is_finished(stage_dir):
        LOGGER.info("%s: finished earlier, loading %s", name, stage_dir / FINAL_WEIGHTS)
        return load_final(model, stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=stage.lr, momentum=stage.momentum,
                                nesterov=stage.nesterov, weight_decay=stage.weight_decay)
    start, history = _resume(model, optimizer, stage_dir, name)
    if len(loader) == 0:
        raise TrainingError(f"{name}: the training loader yields no batches")
    LOGGER.info("%s: %d epochs of %d steps from epoch %d (SGD lr %.2g%s)", name, stage.epochs,
                len(loader), start + 1, stage.lr, ", Nesterov" if stage.nesterov else "")
    for epoch in range(start, stage.epochs):
        torch.manual_seed(seed * 1000 + epoch)
        if loader.generator is not None:
            loader.generator.manual_seed(seed * 1000 + epoch)
        model.train()
        total, target_sum, count = 0.0, 0.0, 0
        for images, grades in tqdm(loader, desc=f"{name} {epoch + 1}/{stage.epochs}",
                                   unit="batch", mininterval=5.0, leave=False):
            images = images.to(device, non_blocking=True)
            wanted = targets(images, grades.to(device)).float()
            with autocast(device, precision):
                logits = model(images)
            loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), wanted)
            if not torch.isfinite(loss):
                raise TrainingError(f"{name}: loss is {loss.item()} at epoch {epoch + 1}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(wanted)
            target_sum += wanted.sum().item()
            count += len(wanted)
        history.append({"epoch": epoch + 1, "loss": total / count,
                        "mean_target": target_sum / count})
        LOGGER.info("%s epoch %d/%d: loss %.4f, mean target %.3f", name, epoch + 1,
                    stage.epochs, total / count, target_sum / count)
        _save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
               "epoch": epoch + 1, "history": history}, stage_dir / LAST_CHECKPOINT)
    _save({"model": model.state_dict(), "history": history}, stage_dir / FINAL_WEIGHTS)
    return history


def predict_probabilities(
    model: nn.Module, loader: DataLoader, device: torch.device, precision: str, desc: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Referable-DR probabilities and true grades of every image of ``loader`` (eval mode)."""
    probs, grades = collect_outputs(model, loader, device, precision,
                                    forward=lambda images: torch.sigmoid(model(images).float()),
                                    desc=desc, leave=False)
    return probs.numpy().astype(np.float64), grades.numpy()


def _resume(
    model: nn.Module, optimizer: torch.optim.Optimizer, stage_dir: Path, name: str
) -> tuple[int, list[dict]]:
    path = stage_dir / LAST_CHECKPOINT
    if not path.is_file():
        return 0, []
    saved: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    LOGGER.info("%s: resuming from %s after epoch %d", name, path, saved["epoch"])
    return int(saved["epoch"]), list(saved["history"])


def _save(obj: object, path: Path) -> None:
    with replacing(path) as partial:
        torch.save(obj, partial)
