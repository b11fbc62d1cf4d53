"""Inference over a whole data loader: a model's outputs and the labels of every image."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ssit.evaluate.precision import autocast


@torch.no_grad()
def collect_outputs(
    model: torch.nn.Module,
    loader: DataLoader,
    device: torch.device,
    precision: str,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
    desc: str = "inference",
    leave: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs (float32, on CPU) and labels of every batch of ``loader``, ``model`` in eval mode.

    ``forward`` maps a batch of images on ``device`` to outputs (default: ``model`` itself); it
    runs under no_grad and the autocast of ``precision``. ``leave`` keeps the progress bar.
    """
    model.eval()
    forward = model if forward is None else forward
    outputs, labels = [], []
    for images, batch_labels in tqdm(loader, desc=desc, unit="batch", mininterval=5.0, leave=leave):
        with autocast(device, precision):
            output = forward(images.to(device, non_blocking=True))
        outputs.append(output.float().cpu())
        labels.append(batch_labels)
    return torch.cat(outputs), torch.cat(labels)
