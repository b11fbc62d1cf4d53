"""What every pre-training method offers the loop.

A method is an ``nn.Module`` that owns its backbone(s) and heads. It declares the views it needs
(``views``: one :class:`~ssit.data.views.ViewSpec` per view of every image), computes named
losses for a batch (``forward``), weights them (``loss_weights``) and may act before each
optimisation step (``before_step``, e.g. the EMA update of a momentum encoder). The query
backbone is always ``base_encoder`` (``momentum_encoder`` for a momentum copy), so grading and
export find it in any method's checkpoint.
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

    def forward(
        self, images: list[torch.Tensor], maps: list[torch.Tensor | None]
    ) -> dict[str, torch.Tensor]:
        """Named losses for one batch: ``images[v]`` is view ``v`` of every image ``(B, 3, S, S)``,
        ``maps[v]`` its saliency map ``(B, 1, S, S)`` in [0, 1] or None."""
        raise NotImplementedError

    def before_step(self, epoch: float, total_epochs: float) -> dict[str, float]:
        """Called before each step's forward pass; returns scalars worth logging."""
        return {}

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
    shape = images[0].shape
    for index, (spec, image, saliency) in enumerate(zip(method.views, images, maps, strict=True)):
        if image.dim() != 4 or image.shape != shape or image.shape[1] != 3:
            raise ValueError(f"view {index} has shape {tuple(image.shape)}, expected "
                             f"{tuple(shape)} with 3 channels")
        if spec.with_map:
            expected = (shape[0], 1, shape[2], shape[3])
            if saliency is None or tuple(saliency.shape) != expected:
                got = None if saliency is None else tuple(saliency.shape)
                raise ValueError(f"view {index} needs a saliency map of shape {expected}, "
                                 f"got {got}")
