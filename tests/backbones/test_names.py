"""timm's architecture names read from its sources agree with timm's own registry."""

from __future__ import annotations

import timm

from ssit.backbones.names import timm_architecture, timm_backbone_name, timm_model_names


def test_names_read_from_the_sources_are_timms_registry():
    assert timm_model_names() == set(timm.list_models())


def test_backbone_kinds_follow_the_defining_module():
    assert timm_backbone_name("vit_small_patch16_224") == "vit"
    assert timm_backbone_name("deit_tiny_patch16_224") == "vit"
    assert timm_backbone_name("vit_small_patch16_224.augreg_in21k") == "vit"
    assert timm_backbone_name("resnet50") == "cnn"
    assert timm_backbone_name("densenet161") == "cnn"


def test_architecture_check():
    assert timm_architecture("k", "resnet18")[2]
    assert timm_architecture("k", "resnet18.a1_in1k")[2]
    assert timm_architecture("k", "hf-hub:timm/resnet18.a1_in1k")[2]
    for bad in ("resnet_imaginary", "", None, 18):
        assert not timm_architecture("k", bad)[2]
