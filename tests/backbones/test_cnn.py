"""The CNN backbone: timm CNNs globally pooled, extracted from a method checkpoint."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from ssit.backbones import CheckpointError, backbone_kind, create_backbone, extract_backbone
from ssit.backbones.cnn import CNN, create_cnn

from .conftest import TINY_CNN, TINY_VIT, method_checkpoint


def pooled(model, images):
    model.eval()
    with torch.no_grad():
        return model(images)


@pytest.mark.parametrize(("arch", "width"), [("resnet18", 512), ("resnet50", 2048),
                                             ("densenet161", 2208)])
def test_pooled_width_of_the_paper_cnns(arch, width) -> None:
    with torch.device("meta"):
        model = create_cnn(arch)
    assert model.num_features == width and CNN.grading_dim(model) == width
    assert model(torch.empty(2, 3, 64, 64, device="meta")).shape == (2, width)


def test_any_input_size_gives_the_pooled_feature(cnn_branches) -> None:
    model = cnn_branches[0]
    for size in (32, 72):
        x = torch.randn(2, 3, size, size)
        out = pooled(model, x)
        assert out.shape == (2, 512)
        with torch.no_grad():
            assert torch.equal(CNN.pooled(model, x), out)
            assert torch.equal(CNN.grading_features(model, x), out)
            # the pooled feature is the mean of the last feature map
            torch.testing.assert_close(out, model.forward_features(x).mean(dim=(2, 3)))


@pytest.mark.parametrize(
    ("arch", "kwargs", "message"),
    [
        ("not_a_model", {}, "unknown timm model"),
        ("vit_tiny_patch16_224", {}, "is a transformer"),
        ("resnet18", {"no_such_option": 1}, "cannot create"),
    ],
)
def test_create_cnn_refuses_what_cannot_work(arch, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        create_cnn(arch, kwargs=kwargs)


def test_extract_from_a_simclr_style_checkpoint(cnn_branches) -> None:
    query, momentum = cnn_branches
    saved = method_checkpoint(query, None, dataclasses.asdict(TINY_CNN), "simclr")
    backbone = extract_backbone(saved, TINY_CNN)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(pooled(backbone, x), pooled(query, x))
    assert torch.equal(backbone.bn1.running_var, query.bn1.running_var)
    with pytest.raises(CheckpointError, match="momentum_encoder"):
        extract_backbone(saved, TINY_CNN, branch="momentum")
    with_momentum = method_checkpoint(query, momentum, dataclasses.asdict(TINY_CNN), "byol")
    other = extract_backbone(with_momentum, TINY_CNN, branch="momentum")
    assert torch.equal(pooled(other, x), pooled(momentum, x))
    with pytest.raises(CheckpointError, match="does not fit"):
        extract_backbone(saved, dataclasses.replace(TINY_CNN, arch="resnet34"))


def test_cnn_kind_metadata_round_trip_and_config_checks() -> None:
    kind = backbone_kind("cnn")
    assert kind is CNN
    config = dataclasses.replace(TINY_CNN, kwargs={"drop_rate": 0.1})
    metadata = kind.export_metadata(config)
    assert metadata["arch"] == "resnet18" and json.loads(metadata["model_kwargs"]) == {
        "drop_rate": 0.1}
    assert kind.config_from_metadata(metadata) == config
    with pytest.raises(TypeError, match="CNNConfig"):
        kind.build(TINY_VIT)
    with pytest.raises(ValueError, match="unknown backbone 'mlp'"):
        backbone_kind("mlp")
    assert create_backbone(TINY_CNN).num_features == 512
