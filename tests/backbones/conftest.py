"""Tiny backbones and method checkpoints holding them, as every method stores its encoders."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from ssit.backbones import CNNConfig, ViTConfig, create_backbone

TINY_VIT = ViTConfig(arch="vit_tiny_patch16_224", img_size=32,
                     kwargs={"depth": 2, "embed_dim": 48, "num_heads": 2})
TINY_CNN = CNNConfig(arch="resnet18", img_size=32)
OLD_CHECKPOINT = Path(__file__).resolve().parents[1] / "methods" / "data" / "ssit-v0.1-tiny.pt"


def perturbed(model: nn.Module, amount: float) -> nn.Module:
    """``model`` with every floating-point weight and buffer shifted (so branches differ)."""
    with torch.no_grad():
        for value in model.state_dict().values():
            if value.is_floating_point():
                value.add_(amount)
    return model.eval()


def method_checkpoint(
    query: nn.Module, momentum: nn.Module | None, backbone: Mapping[str, Any], method: str
) -> dict[str, Any]:
    """A training checkpoint in the current layout: prefixed branches, a projector, the config."""
    state = {f"base_encoder.{key}": value for key, value in query.state_dict().items()}
    if momentum is not None:
        state.update({f"momentum_encoder.{k}": v for k, v in momentum.state_dict().items()})
    state["projector.0.weight"] = torch.randn(8, 4)
    return {"model": state, "step": 3,
            "config": {"backbone": dict(backbone), "method": {"name": method}}}


@pytest.fixture(scope="module")
def vit_branches() -> tuple[nn.Module, nn.Module]:
    """Query and momentum tiny ViTs at 32x32 with different weights."""
    torch.manual_seed(0)
    return perturbed(create_backbone(TINY_VIT), 0.0), perturbed(create_backbone(TINY_VIT), 0.05)


@pytest.fixture(scope="module")
def cnn_branches() -> tuple[nn.Module, nn.Module]:
    """Query and momentum resnet18s with different weights and BN statistics."""
    torch.manual_seed(1)
    return perturbed(create_backbone(TINY_CNN), 0.01), perturbed(create_backbone(TINY_CNN), 0.05)


def features(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model.forward_features(images)
