"""Extracting the pre-trained backbone as a plain timm ViT for grading."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from ssit.model import CheckpointError, backbone_state_dict, extract_backbone
from tests.model.conftest import TINY_ARCH, TINY_ENCODER, views


@pytest.fixture
def pretrained(make_ssit):
    """A tiny SSiT at 32x32 after one step, so the two branches differ."""
    model = make_ssit(img_size=32)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss_cl, loss_ss = model(*views(size=32), momentum=0.5)
    (loss_cl + loss_ss).backward()
    optimizer.step()
    return model.eval()


def features(model: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.forward_features(x)


def test_backbone_state_dict_drops_the_projector(pretrained) -> None:
    state = backbone_state_dict({"model": pretrained.state_dict()})
    assert "patch_embed.proj.weight" in state and "pos_embed" in state
    assert not any(name.startswith("head.") for name in state)
    assert torch.equal(state["norm.weight"], pretrained.base_encoder.norm.weight)
    momentum = backbone_state_dict(pretrained.state_dict(), branch="momentum")
    assert torch.equal(momentum["norm.weight"], pretrained.momentum_encoder.norm.weight)
    assert not torch.equal(momentum["norm.weight"], state["norm.weight"])


def test_extracted_backbone_matches_the_query_encoder_at_the_same_size(
    pretrained, tmp_path: Path
) -> None:
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": pretrained.state_dict()}, path)
    backbone = extract_backbone(path, TINY_ARCH, img_size=32, encoder_kwargs=TINY_ENCODER)
    assert type(backbone) is VisionTransformer and backbone.num_classes == 0
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(features(backbone.eval(), x), features(pretrained.base_encoder, x))
    assert backbone(x).shape == (2, 48)  # class token, no projector


def test_extracted_backbone_at_another_size(pretrained) -> None:
    backbone = extract_backbone(
        pretrained.state_dict(), TINY_ARCH, img_size=64, encoder_kwargs=TINY_ENCODER
    ).eval()
    assert backbone.pos_embed.shape == (1, 1 + 16, 48)
    assert torch.equal(backbone.pos_embed[:, :1], pretrained.base_encoder.pos_embed[:, :1])
    # The query encoder resized to 64 by timm holds the same weights, hence the same features.
    reference = copy.deepcopy(pretrained.base_encoder)
    reference.set_input_size(img_size=(64, 64))
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(features(backbone, x), features(reference.eval(), x))


def test_momentum_branch_is_extractable(pretrained) -> None:
    backbone = extract_backbone(
        pretrained.state_dict(), TINY_ARCH, 32, branch="momentum", encoder_kwargs=TINY_ENCODER
    ).eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(features(backbone, x), features(pretrained.momentum_encoder, x))


def test_plain_vit_checkpoint_is_accepted_for_the_query_branch(pretrained) -> None:
    plain = extract_backbone(
        pretrained.state_dict(), TINY_ARCH, 32, encoder_kwargs=TINY_ENCODER
    ).state_dict()
    again = extract_backbone(plain, TINY_ARCH, 32, encoder_kwargs=TINY_ENCODER)
    for name, value in plain.items():
        assert torch.equal(value, again.state_dict()[name])
    with pytest.raises(CheckpointError, match="momentum_encoder"):
        backbone_state_dict(plain, branch="momentum")


def test_extraction_errors(pretrained) -> None:
    with pytest.raises(ValueError, match="branch"):
        backbone_state_dict(pretrained.state_dict(), branch="key")  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match="base_encoder"):
        backbone_state_dict({"predictor.0.weight": torch.zeros(2, 2)})
    with pytest.raises(CheckpointError, match="does not fit"):
        extract_backbone(pretrained.state_dict(), "vit_small_patch16_224", 32)
    bad = dict(pretrained.state_dict())
    bad["base_encoder.pos_embed"] = torch.zeros(1, 1 + 5, 48)
    with pytest.raises(CheckpointError, match="square grid"):
        extract_backbone(bad, TINY_ARCH, 64, encoder_kwargs=TINY_ENCODER)
