"""The backbone a training checkpoint records: current and old layouts."""

from __future__ import annotations

import pytest
import torch

from ssit.backbones import (
    CheckpointError,
    CNNConfig,
    ViTConfig,
    extract_backbone,
    read_checkpoint,
    saved_backbone_config,
)

from .conftest import OLD_CHECKPOINT


def test_current_layout_names_the_kind_and_its_options() -> None:
    cnn = {"config": {"backbone": {"name": "cnn", "arch": "resnet18", "img_size": 32,
                                   "kwargs": {}}, "method": {"name": "simclr"}}}
    assert saved_backbone_config(cnn) == CNNConfig(arch="resnet18", img_size=32, kwargs={})
    vit = {"config": {"backbone": {"name": "vit", "arch": "vit_small_patch16_224",
                                   "img_size": 224, "kwargs": {"depth": 4},
                                   "added_later": True}}}
    assert saved_backbone_config(vit) == ViTConfig(arch="vit_small_patch16_224", img_size=224,
                                                   kwargs={"depth": 4})


def test_old_ssit_checkpoint_records_its_vit() -> None:
    loaded = read_checkpoint(OLD_CHECKPOINT)
    recorded = saved_backbone_config(loaded)
    assert recorded == ViTConfig(arch="vit_tiny_patch16_224", img_size=32,
                                 kwargs={"embed_dim": 32, "num_heads": 2, "depth": 2})
    backbone = extract_backbone(loaded, recorded)
    assert backbone(torch.randn(1, 3, 32, 32)).shape == (1, 32)


@pytest.mark.parametrize(
    "checkpoint",
    [{}, {"config": "not a mapping"}, {"config": {"method": {"name": "ssit"}}},
     {"config": {"model": {"img_size": 32}}}],
)
def test_checkpoints_without_a_record(checkpoint) -> None:
    assert saved_backbone_config(checkpoint) is None


def test_unknown_backbone_name_is_refused() -> None:
    with pytest.raises(CheckpointError, match="unknown backbone 'mlp'"):
        saved_backbone_config({"config": {"backbone": {"name": "mlp"}}})
