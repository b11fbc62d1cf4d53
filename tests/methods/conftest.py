"""Tiny SSiT models and inputs shared by the model tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from ssit.methods.ssit import SSiT

TINY_ARCH = "vit_tiny_patch16_224"
TINY_ENCODER = {"depth": 2, "embed_dim": 48, "num_heads": 2}


def tiny_ssit(**overrides: Any) -> SSiT:
    """A 2-block ViT-Ti/16 SSiT at 64x64 (4x4 patch grid) with small heads."""
    kwargs: dict[str, Any] = {
        "arch": TINY_ARCH,
        "img_size": 64,
        "mlp_dim": 64,
        "proj_dim": 32,
        "encoder_kwargs": TINY_ENCODER,
    }
    kwargs.update(overrides)
    return SSiT(**kwargs)


def views(batch: int = 4, size: int = 64, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Two image views and two saliency maps in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    x1, x2 = torch.randn(2, batch, 3, size, size, generator=generator)
    m1, m2 = torch.rand(2, batch, 1, size, size, generator=generator)
    return x1, x2, m1, m2


def run_ssit(
    model: torch.nn.Module,
    x1: torch.Tensor,
    x2: torch.Tensor,
    m1: torch.Tensor | None,
    m2: torch.Tensor | None,
    momentum: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """EMA step then forward, as the loop does; ``(loss_cl, loss_ss)`` (0 without segmentation).

    ``model`` may be wrapped (DDP); the EMA step goes to the SSiT module inside.
    """
    inner = getattr(model, "module", model)
    inner.update_momentum_encoder(momentum)
    losses = model([x1, x2], [m1, m2])
    return losses["cl"], losses.get("ss", losses["cl"].new_zeros(()))


@pytest.fixture
def make_ssit() -> Callable[..., SSiT]:
    def make(seed: int = 0, **overrides: Any) -> SSiT:
        torch.manual_seed(seed)
        return tiny_ssit(**overrides)

    return make
