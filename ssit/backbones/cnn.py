"""timm convolutional backbones (``backbone.name: cnn``): ResNets, DenseNets and the like.

The network is created with ``num_classes=0`` so that its call returns the globally pooled
feature ``(B, num_features)`` (2048 for resnet50, 512 for resnet18, 2208 for densenet161);
projectors, kNN and the grading head all read that feature. Any input size works.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import timm
from torch import nn

from ssit.backbones.config import BackboneConfig, CNNConfig
from ssit.backbones.registry import BackboneKind, timm_backbone_name


def create_cnn(
    arch: str, pretrained: bool = False, kwargs: Mapping[str, Any] | None = None
) -> nn.Module:
    """A timm CNN without classifier; refuses transformers (use ``backbone.name: vit``)."""
    if timm_backbone_name(arch) != "cnn":
        raise ValueError(f"{arch} is a transformer, not a CNN; use backbone.name=vit")
    try:
        model = timm.create_model(arch, pretrained=pretrained, num_classes=0, **dict(kwargs or {}))
    except TypeError as error:
        raise ValueError(f"cannot create {arch} with these options: {error}") from None
    if hasattr(model, "patch_embed") or hasattr(model, "blocks"):
        raise ValueError(f"{arch} is a transformer, not a CNN; use backbone.name=vit")
    if not getattr(model, "num_features", 0):
        raise ValueError(f"{arch} does not report its pooled feature width (num_features)")
    return model


class CNNKind(BackboneKind):
    """Globally pooled timm CNNs; grading reads the pooled feature."""

    name = "cnn"

    def build(self, cfg: BackboneConfig, pretrained: bool = False) -> nn.Module:
        if not isinstance(cfg, CNNConfig):
            raise TypeError(f"the cnn backbone needs a CNNConfig, got {type(cfg).__name__}")
        return create_cnn(cfg.arch, pretrained, cfg.kwargs)

    def export_metadata(self, cfg: BackboneConfig) -> dict[str, str]:
        if not isinstance(cfg, CNNConfig):
            raise TypeError(f"the cnn backbone needs a CNNConfig, got {type(cfg).__name__}")
        return {"arch": cfg.arch, "img_size": str(cfg.img_size),
                "model_kwargs": json.dumps(cfg.kwargs)}

    def config_from_metadata(self, metadata: Mapping[str, str]) -> BackboneConfig:
        return CNNConfig(arch=metadata["arch"], img_size=int(metadata.get("img_size", 224)),
                         kwargs=json.loads(metadata.get("model_kwargs") or "{}"))


CNN = CNNKind()
