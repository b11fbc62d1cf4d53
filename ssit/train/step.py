"""One optimisation step: forward under autocast, weighted losses, backward, clip, step.

Gradient clipping is either by the global norm of every gradient (``global``) or by each
parameter's own norm (``per_parameter``, DINO's ``clip_gradients``: a gradient whose norm
exceeds the limit is scaled by ``limit / (norm + 1e-6)``). With a GradScaler the gradients are
unscaled before clipping.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal

import torch
from torch import nn

ClipMode = Literal["global", "per_parameter"]


def clip_each_parameter_(params: Iterable[torch.Tensor], max_norm: float) -> None:
    """Scale every gradient whose own L2 norm exceeds ``max_norm`` by
    ``max_norm / (norm + 1e-6)``; the others stay as they are (no host synchronisation)."""
    for param in params:
        if param.grad is None:
            continue
        norm = param.grad.detach().norm(2)
        coefficient = (max_norm / (norm + 1e-6)).clamp(max=1.0)
        param.grad.detach().mul_(coefficient.to(param.grad.dtype))


def clip_gradients_(params: list[torch.Tensor], max_norm: float, mode: ClipMode) -> None:
    """Clip the gradients of ``params`` in place by their global norm or each by its own."""
    if mode == "per_parameter":
        clip_each_parameter_(params, max_norm)
    elif mode == "global":
        torch.nn.utils.clip_grad_norm_(params, max_norm)
    else:
        raise ValueError(f"clip mode must be 'global' or 'per_parameter', got {mode!r}")


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    images: list[torch.Tensor],
    maps: list[torch.Tensor | None],
    weights: dict[str, float],
    *,
    lr: float,
    amp_dtype: torch.dtype | None,
    clip_grad: float | None,
    clip_mode: ClipMode = "global",
    weight_decay: float | None = None,
    before_update: Callable[[], None] | None = None,
) -> torch.Tensor:
    """One optimisation step; returns the detached ``[loss, *named losses]`` (weights' order).

    ``weight_decay`` (when given) is set on the decayed parameter group (group 0) first;
    ``before_update`` runs after backward and clipping, just before the optimiser step (e.g.
    to drop the gradients of a frozen layer).
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
    if weight_decay is not None:
        optimizer.param_groups[0]["weight_decay"] = weight_decay
    device_type = images[0].device.type
    with torch.autocast(device_type, dtype=amp_dtype, enabled=amp_dtype is not None):
        named = model(images, maps)
    parts = [named[name].float() for name in weights]
    loss = sum(weight * part for weight, part in zip(weights.values(), parts, strict=True))
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if clip_grad is not None:
        scaler.unscale_(optimizer)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        clip_gradients_(params, clip_grad, clip_mode)
    if before_update is not None:
        before_update()
    scaler.step(optimizer)
    scaler.update()
    return torch.stack([loss.detach(), *(part.detach() for part in parts)])


__all__ = ["ClipMode", "clip_each_parameter_", "clip_gradients_", "train_step"]
