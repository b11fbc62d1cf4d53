"""The ViT backbone: creation checks, extraction from a method checkpoint, grading features."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from ssit.backbones import (
    CheckpointError,
    backbone_kind,
    backbone_state_dict,
    extract_backbone,
    fit_backbone_state,
)
from ssit.backbones.vit import VIT, create_vit

from .conftest import TINY_CNN, TINY_VIT, features, method_checkpoint


@pytest.fixture(scope="module")
def checkpoint(vit_branches):
    """A ViT method checkpoint whose query backbone keeps a projector as ``head.*``."""
    query, momentum = vit_branches
    saved = method_checkpoint(query, momentum, dataclasses.asdict(TINY_VIT), "ssit")
    saved["model"]["base_encoder.head.0.weight"] = torch.randn(16, 48)
    return saved


def test_backbone_state_dict_strips_the_branch_prefix(checkpoint, vit_branches) -> None:
    query, momentum = vit_branches
    state = backbone_state_dict(checkpoint)
    assert "patch_embed.proj.weight" in state and "head.0.weight" in state
    assert not any(key.startswith(("projector", "base_encoder")) for key in state)
    assert torch.equal(state["norm.weight"], query.norm.weight)
    other = backbone_state_dict(checkpoint, branch="momentum")
    assert torch.equal(other["norm.weight"], momentum.norm.weight)
    assert not torch.equal(other["norm.weight"], state["norm.weight"])
    model = create_vit(TINY_VIT.arch, 32, encoder_kwargs=TINY_VIT.kwargs)
    fitted = fit_backbone_state(state, model, TINY_VIT)
    assert "head.0.weight" not in fitted and len(fitted) == len(state) - 1


def test_extracted_backbone_matches_the_query_encoder(checkpoint, vit_branches, tmp_path: Path):
    path = tmp_path / "checkpoint.pt"
    torch.save(checkpoint, path)
    backbone = extract_backbone(path, TINY_VIT)
    assert type(backbone) is VisionTransformer and backbone.num_classes == 0
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(features(backbone, x), features(vit_branches[0], x))
    assert backbone(x).shape == (2, 48)  # class token, no projector


def test_extracted_backbone_at_another_size(checkpoint, vit_branches) -> None:
    backbone = extract_backbone(checkpoint, dataclasses.replace(TINY_VIT, img_size=64))
    assert backbone.pos_embed.shape == (1, 1 + 16, 48)
    assert torch.equal(backbone.pos_embed[:, :1], vit_branches[0].pos_embed[:, :1])
    # The query encoder resized to 64 by timm holds the same weights, hence the same features.
    reference = copy.deepcopy(vit_branches[0])
    reference.set_input_size(img_size=(64, 64))
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(features(backbone, x), features(reference, x))


def test_momentum_branch_and_plain_checkpoints(checkpoint, vit_branches) -> None:
    x = torch.randn(2, 3, 32, 32)
    momentum = extract_backbone(checkpoint, TINY_VIT, branch="momentum")
    assert torch.equal(features(momentum, x), features(vit_branches[1], x))
    plain = vit_branches[0].state_dict()
    again = extract_backbone(plain, TINY_VIT)
    assert torch.equal(features(again, x), features(vit_branches[0], x))
    with pytest.raises(CheckpointError, match="momentum_encoder"):
        backbone_state_dict(plain, branch="momentum")


def test_extraction_errors(checkpoint) -> None:
    with pytest.raises(ValueError, match="branch"):
        backbone_state_dict(checkpoint, branch="key")  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match="base_encoder"):
        backbone_state_dict({"predictor.0.weight": torch.zeros(2, 2),
                             "momentum_encoder.x": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="does not fit"):
        extract_backbone(checkpoint, dataclasses.replace(TINY_VIT, kwargs={}))
    bad = {"model": dict(checkpoint["model"])}
    bad["model"]["base_encoder.pos_embed"] = torch.zeros(1, 1 + 5, 48)
    with pytest.raises(CheckpointError, match="square grid"):
        extract_backbone(bad, dataclasses.replace(TINY_VIT, img_size=64))


@pytest.mark.parametrize(
    ("arch", "size", "kwargs", "message"),
    [
        ("not_a_model", 32, {}, "unknown timm model"),
        ("deit_tiny_distilled_patch16_224", 32, {"depth": 1}, "not a plain timm VisionTransformer"),
        ("resnet18", 32, {}, "not a timm VisionTransformer .for CNNs use backbone.name=cnn"),
        ("vit_tiny_patch16_224", 40, {"depth": 1}, "not divisible"),
        ("vit_tiny_patch16_224", 32, {"global_pool": "avg", "depth": 1}, "class token"),
        ("vit_tiny_patch16_224", 32, {"no_such_option": 1}, "cannot create"),
    ],
)
def test_create_vit_refuses_what_cannot_work(arch, size, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        create_vit(arch, size, encoder_kwargs=kwargs)


def test_vit_kind_features_and_metadata(vit_branches) -> None:
    model = vit_branches[0]
    x = torch.randn(3, 3, 32, 32)
    tokens = features(model, x)
    with torch.no_grad():
        pooled = VIT.pooled(model, x)
        grading = VIT.grading_features(model, x)
    assert torch.equal(pooled, tokens[:, 0])
    assert grading.shape == (3, VIT.grading_dim(model)) == (3, 96)
    assert torch.equal(grading[:, :48], tokens[:, 0])
    torch.testing.assert_close(grading[:, 48:], tokens[:, 1:].mean(dim=1))
    metadata = VIT.export_metadata(TINY_VIT)
    assert json.loads(metadata["model_kwargs"]) == TINY_VIT.kwargs
    assert backbone_kind("vit").config_from_metadata(metadata) == TINY_VIT
    with pytest.raises(TypeError, match="ViTConfig"):
        VIT.export_metadata(TINY_CNN)
