"""BatchNorm statistics refreshed on the grading images: a fair floor for BatchNorm backbones.

An untrained network's BatchNorm layers hold running mean 0 and variance 1, which match none
of its activations; in eval mode its features are then badly scaled, and a pre-trained encoder
whose statistics were gathered during pre-training wins partly by calibration, not by what it
learned. :func:`refresh_batchnorm` re-estimates those statistics on the images at hand (no
gradient, no weight changes), so that floor and encoder are calibrated alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def batchnorm_layers(model: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers of ``model`` (any dimension, SyncBatchNorm too) that keep running
    statistics."""
    return [module for module in model.modules()
            if isinstance(module, _BatchNorm) and module.track_running_stats]


@torch.no_grad()
def refresh_batchnorm(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    forward: Callable[[torch.Tensor], object] | None = None,
) -> int:
    """Replace every BatchNorm layer's running mean and variance of ``model`` by their cumulative
    average over ``batches``; return the number of batches seen.

    Each layer is reset (mean 0, variance 1, count 0) and, with ``momentum=None``, ends with the
    plain mean over batches of each batch's mean and unbiased variance. Only the BatchNorm layers
    run in train mode (dropout and drop-path stay off); ``forward`` (default: ``model``) maps a
    batch to anything. Weights, biases and every other buffer stay as they were, and so do each
    module's mode and each layer's momentum. Raises ValueError when ``batches`` is empty.
    """
    layers = batchnorm_layers(model)
    modes = {module: module.training for module in model.modules()}
    momenta = [layer.momentum for layer in layers]
    forward = model if forward is None else forward
    seen = 0
    try:
        model.eval()
        for layer in layers:
            layer.reset_running_stats()
            layer.momentum = None
            layer.train()
        for batch in batches:
            forward(batch)
            seen += 1
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
        for module, training in modes.items():
            module.training = training
    if seen == 0:
        raise ValueError("no batch to refresh the BatchNorm statistics on")
    return seen
