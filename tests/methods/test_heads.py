"""Projector, predictor and segmentor layouts (names as in the authors' release)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ssit.backbones.tokens import patch_map
from ssit.methods.heads import build_mlp, build_saliency_segmentor


def test_projector_layout_and_names() -> None:
    projector = build_mlp(3, 384, 4096, 256)
    kinds = [type(layer).__name__ for layer in projector]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU"] * 2 + ["Linear", "BatchNorm1d"]
    assert all(layer.bias is None for layer in projector if isinstance(layer, nn.Linear))
    assert not projector[7].affine and projector[1].affine
    names = set(projector.state_dict())
    assert {"0.weight", "1.running_mean", "3.weight", "6.weight", "7.running_var"} <= names
    assert "7.weight" not in names and "6.bias" not in names
    assert projector(torch.randn(4, 384)).shape == (4, 256)


def test_predictor_layout() -> None:
    predictor = build_mlp(2, 256, 4096, 256)
    assert [type(layer).__name__ for layer in predictor] == [
        "Linear",
        "BatchNorm1d",
        "ReLU",
        "Linear",
        "BatchNorm1d",
    ]
    assert predictor[0].in_features == 256 and predictor[0].out_features == 4096
    assert not predictor[4].affine
    with pytest.raises(ValueError, match="layer"):
        build_mlp(0, 8, 8, 8)


def test_segmentor_puts_each_token_on_its_own_patch_of_pixels() -> None:
    patch, grid = 4, (2, 3)
    segmentor = build_saliency_segmentor(embed_dim=5, patch_size=patch)
    with torch.no_grad():
        segmentor[0].weight.zero_()
        segmentor[0].bias.zero_()
        segmentor[0].weight[:, 0] = 1.0  # every output pixel copies channel 0
        # Distinguish the pixels inside a patch: sub-pixel (dy, dx) is channel dy * p + dx.
        segmentor[0].bias.copy_(torch.arange(patch * patch) / 100)
    tokens = torch.zeros(1, 6, 5)
    tokens[0, :, 0] = torch.arange(6, dtype=torch.float32)  # token t (row-major) carries t
    logits = segmentor(patch_map(tokens, grid))
    assert logits.shape == (1, 1, 8, 12)
    for row in range(2):
        for col in range(3):
            block = logits[0, 0, row * patch : (row + 1) * patch, col * patch : (col + 1) * patch]
            expected = row * 3 + col + torch.arange(patch * patch).view(patch, patch) / 100
            assert torch.allclose(block, expected)


def test_patch_map_rejects_wrong_count() -> None:
    with pytest.raises(ValueError, match="grid"):
        patch_map(torch.zeros(1, 5, 3), (2, 3))
