"""What every pre-training method offers the loop.

A method is an ``nn.Module`` that owns its backbone(s) and heads. It declares the views it needs
(``views``: one :class:`~ssit.data.views.ViewSpec` per view of every image), computes named
losses for a batch (``forward``), weights them (``loss_weights``) and may act before each
optimisation step (``before_step``, e.g. the EMA update of a momentum encoder), after backward
just before the update (``before_update``, e.g. dropping a frozen layer's gradients) and after
it (``after_step``, e.g. DINO's teacher EMA); it may schedule the weight decay
(``weight_decay``). State that is not a parameter lives in buffers, so checkpoints hold it.
The query backbone is always ``base_encoder`` (``momentum_encoder`` for a momentum copy);
``export_branch`` (``query`` or ``momentum``, saved in checkpoints) names the one grading and
export read by default.
"""

from __future__ import annotations

import torch
from torch import nn

from ssit.data.views import ViewSpec

Pictures = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class Method(nn.Module):
    """Base class of the pre-training objectives (see the module docstring)."""

    views: tuple[ViewSpec, ...] = ()
    loss_names: tuple[str, ...] = ()
    base_encoder: nn.Module
    # The branch grading and export read by default: query (base_encoder) or momentum.
    export_branch: str = "query"

    def forward(
        self, images: list[torch.Tensor], maps: list[torch.Tensor | None]
    ) -> dict[str, torch.Tensor]:
        """Named losses for one batch: ``images[v]`` is view ``v`` of every image
        ``(B, 3, S_v, S_v)`` (``S_v`` the view's size), ``maps[v]`` its saliency map
        ``(B, 1, S_v, S_v)`` in [0, 1] or None."""
        raise NotImplementedError

    def before_step(self, epoch: float, total_epochs: float) -> dict[str, float]:
        """Called before each step's forward pass; returns scalars worth logging."""
        return {}

    def before_update(self, epoch: float) -> None:
        """Called after backward (and gradient clipping), just before the optimiser step."""

    def after_step(self, epoch: float, total_epochs: float) -> dict[str, float]:
        """Called after each optimiser step; returns scalars worth logging."""
        return {}

    def weight_decay(self, epoch: float, total_epochs: float, base: float) -> float:
        """The weight decay of the decayed parameters at this point (``base`` by default)."""
        return base

    def loss_weights(self, epoch: float, total_epochs: float) -> dict[str, float]:
        """The weight of each named loss at this point of training (1 each by default)."""
        return dict.fromkeys(self.loss_names, 1.0)

    def saliency_picture(
        self, image: torch.Tensor, saliency: torch.Tensor
    ) -> Pictures | None:
        """``(images, target, prediction)`` for a picture of what the method predicts, if any."""
        return None


def check_views(
    method: Method, images: list[torch.Tensor], maps: list[torch.Tensor | None]
) -> None:
    """Raise ``ValueError`` when a batch does not match the method's declared views."""
    if len(images) != len(method.views) or len(maps) != len(method.views):
        raise ValueError(
            f"{type(method).__name__} needs {len(method.views)} views, got {len(images)} "
            f"images and {len(maps)} maps"
        )
    batch = images[0].shape[0] if images[0].dim() >= 1 else None
    default_side: int | None = None  # the side of the views at the backbone's size
    for index, (spec, image, saliency) in enumerate(zip(method.views, images, maps, strict=True)):
        shape = tuple(image.shape)
        side = spec.size if spec.size is not None else default_side
        if side is None and len(shape) == 4:
            side = shape[2]  # the first view at the backbone's size sets it
        expected = (batch, 3, side, side)
        if shape != expected:
            raise ValueError(f"view {index} has shape {shape}, expected {expected}")
        if spec.size is None:
            default_side = side
        if spec.with_map:
            expected = (batch, 1, side, side)
            if saliency is None or tuple(saliency.shape) != expected:
                got = None if saliency is None else tuple(saliency.shape)
                raise ValueError(f"view {index} needs a saliency map of shape {expected}, "
                                 f"got {got}")
