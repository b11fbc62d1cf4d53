"""The registry of backbone kinds and what every kind offers the methods and the grading.

A backbone is an ``nn.Module`` whose call ``model(images)`` returns its pooled feature
``(B, num_features)``; ``model.num_features`` is that dimension. A *kind* (one per registered
name) knows how to build it from its config section and what features grading reads. Adding a
backbone is a module with a :class:`BackboneKind` and one line in ``BACKBONE_KINDS`` (and its
config dataclass in :mod:`ssit.backbones.config`).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping

import torch
from torch import nn

from ssit.backbones.config import BackboneConfig
from ssit.backbones.names import TIMM_VIT_MODULES, timm_backbone_name

# name -> "module:attribute" of the kind object, imported on first use.
BACKBONE_KINDS: dict[str, str] = {
    "vit": "ssit.backbones.vit:VIT",
    "cnn": "ssit.backbones.cnn:CNN",
    "msssl_hybrid": "ssit.backbones.msssl:MSSSL_HYBRID",
}


class BackboneKind:
    """How to build one kind of backbone and read features from it (timm defaults)."""

    name = ""

    def build(self, cfg: BackboneConfig, pretrained: bool = False) -> nn.Module:
        """The backbone of ``cfg`` without classifier (random weights unless ``pretrained``)."""
        raise NotImplementedError

    def pooled(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """The pooled feature ``(B, D)`` that projectors and kNN read."""
        return model(images)

    def grading_features(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """The feature the grading head reads (the pooled feature unless the kind says else)."""
        return model(images)

    def grading_dim(self, model: nn.Module) -> int:
        """Width of :meth:`grading_features`."""
        return int(model.num_features)

    def adapt_state(
        self, state: Mapping[str, torch.Tensor], model: nn.Module
    ) -> dict[str, torch.Tensor]:
        """Pre-trained weights made to fit ``model`` (e.g. resized position embeddings)."""
        return dict(state)

    def export_metadata(self, cfg: BackboneConfig) -> dict[str, str]:
        """What an exported file records so that the backbone can be rebuilt from it."""
        raise NotImplementedError

    def config_from_metadata(self, metadata: Mapping[str, str]) -> BackboneConfig:
        """The config section that :meth:`export_metadata` describes."""
        raise NotImplementedError


def backbone_kind(name: str) -> BackboneKind:
    """The registered kind called ``name``."""
    if name not in BACKBONE_KINDS:
        raise ValueError(f"unknown backbone {name!r} (known: {', '.join(sorted(BACKBONE_KINDS))})")
    module, attribute = BACKBONE_KINDS[name].split(":")
    return getattr(importlib.import_module(module), attribute)


def create_backbone(cfg: BackboneConfig, pretrained: bool = False) -> nn.Module:
    """Build the backbone that ``cfg`` describes."""
    return backbone_kind(cfg.name).build(cfg, pretrained=pretrained)


__all__ = [
    "BACKBONE_KINDS",
    "TIMM_VIT_MODULES",
    "BackboneKind",
    "backbone_kind",
    "create_backbone",
    "timm_backbone_name",
]
