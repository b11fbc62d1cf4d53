"""Backbone sections of the configuration: which encoder network, with its own options.

``backbone.name`` picks a registered kind (see :mod:`ssit.backbones`); the other keys of the
section are checked against that kind's dataclass. This module imports neither torch nor timm,
so launchers can load and check configurations quickly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass
class BackboneConfig:
    """Base of the backbone sections; ``name`` selects the kind."""

    name: str = "vit"
    img_size: int = 224

    @classmethod
    def config_variants(cls) -> dict[str, type[BackboneConfig]]:
        """The dataclass of every registered backbone kind, by name."""
        return dict(BACKBONE_CONFIGS)

    @property
    def uses_tokens(self) -> bool:
        """Whether the backbone gives ViT patch tokens (key selection, token heads)."""
        return False


@dataclass
class TimmBackboneConfig(BackboneConfig):
    """A timm model by architecture name, created with ``num_classes=0`` and ``kwargs``."""

    arch: str = "vit_small_patch16_224"
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class ViTConfig(TimmBackboneConfig):
    """A timm Vision Transformer with a class token (fixed input size, no drop-path)."""

    name: str = "vit"

    @property
    def uses_tokens(self) -> bool:
        return True


@dataclass
class CNNConfig(TimmBackboneConfig):
    """A timm convolutional network, globally pooled (e.g. resnet50, resnet18, densenet161)."""

    name: str = "cnn"
    arch: str = "resnet50"


@dataclass
class MsSSLConfig(TimmBackboneConfig):
    """The MsSSL hybrid (a reconstruction, see :mod:`ssit.backbones.msssl`).

    ``arch`` and ``kwargs`` describe the ViT branch, ``cnn_arch``, ``cnn_kwargs`` and
    ``cnn_levels`` (timm ``out_indices``; 1-4 are C2-C5 of a ResNet) the CNN branch. The
    choices the paper's abstract leaves open are options: ``fpn_width``, ``fusion`` of the
    pyramid levels with the ViT map (``concat`` or ``sum``), ``deep_learner_rounds`` and the
    CBAM ``cbam_reduction``.
    """

    name: str = "msssl_hybrid"
    cnn_arch: str = "resnet50"
    cnn_kwargs: dict[str, Any] = field(default_factory=dict)
    cnn_levels: list[int] = field(default_factory=lambda: [1, 2, 3, 4])
    fpn_width: int = 256
    fusion: Literal["concat", "sum"] = "concat"
    deep_learner_rounds: int = 2
    cbam_reduction: int = 16

    @property
    def uses_tokens(self) -> bool:
        return True


BACKBONE_CONFIGS: dict[str, type[BackboneConfig]] = {
    "vit": ViTConfig,
    "cnn": CNNConfig,
    "msssl_hybrid": MsSSLConfig,
}
