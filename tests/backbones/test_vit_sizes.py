"""A ViT on crops of another size: DINO's position-embedding resize and the pooled feature."""

from __future__ import annotations

import math

import pytest
import torch
from timm.layers import resample_abs_pos_embed

from ssit.backbones.vit import create_vit, interpolate_pos_encoding, vit_pooled_any_size


def test_interpolate_pos_encoding_follows_dinos_formula() -> None:
    torch.manual_seed(0)
    pos_embed = torch.randn(1, 1 + 14 * 14, 8)  # class token + the 14x14 grid of 224 px / 16
    resized = interpolate_pos_encoding(pos_embed, 6, 6)  # 96 px crops
    assert resized.shape == (1, 1 + 36, 8)
    assert torch.equal(resized[:, :1], pos_embed[:, :1])  # the class token's entry is kept
    grid = pos_embed[:, 1:].reshape(1, 14, 14, 8).permute(0, 3, 1, 2)
    scale = (6 + 0.1) / math.sqrt(196)  # (w0 + 0.1) / sqrt(N)
    expected = torch.nn.functional.interpolate(grid, scale_factor=(scale, scale),
                                               mode="bicubic", align_corners=False)
    assert torch.allclose(resized[:, 1:], expected.permute(0, 2, 3, 1).reshape(1, 36, 8),
                          atol=1e-6)
    # not timm's resize to an exact size (sampling positions differ, antialiasing on)
    timm_style = resample_abs_pos_embed(pos_embed, new_size=[6, 6], old_size=[14, 14],
                                        num_prefix_tokens=1)
    assert not torch.allclose(resized, timm_style, atol=1e-3)


def test_same_grid_returns_the_embedding_itself() -> None:
    pos_embed = torch.randn(1, 1 + 16, 4)
    assert interpolate_pos_encoding(pos_embed, 4, 4) is pos_embed


def test_a_constant_embedding_stays_constant() -> None:
    pos_embed = torch.full((1, 1 + 49, 3), 0.25)
    assert torch.allclose(interpolate_pos_encoding(pos_embed, 3, 3), torch.full((1, 10, 3), 0.25))


def test_pooled_feature_at_the_models_size_is_timms_and_other_sizes_work() -> None:
    torch.manual_seed(0)
    model = create_vit("vit_tiny_patch16_224", 64, encoder_kwargs={"depth": 2}).eval()
    images = torch.randn(2, 3, 64, 64)
    assert torch.equal(vit_pooled_any_size(model, images), model(images))
    small = vit_pooled_any_size(model, torch.randn(2, 3, 32, 32))
    assert small.shape == (2, model.num_features) and torch.isfinite(small).all()
    with pytest.raises(ValueError, match="not a multiple of the patch 16"):
        vit_pooled_any_size(model, torch.randn(1, 3, 40, 40))
