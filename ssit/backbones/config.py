"""Backbone sections of the configuration: which encoder network, with its own options.

``backbone.name`` picks a registered kind (see :mod:`ssit.backbones`); the other keys of the
section are checked against that kind's dataclass. This module imports neither torch nor timm,
so launchers can load and check configurations quickly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ssit.backbones.names import timm_architecture, timm_backbone_name
from ssit.validators import RangeCheck, positive, strictly_increasing, whole_number

# timm names a ViT's patch side in its architecture name (vit_small_patch16_224).
_PATCH_IN_NAME = re.compile(r"patch(\d+)")

# Largest input side accepted: a ViT-S/16 step at 4096 pixels already holds 65536 tokens per
# image, past what attention fits in a GPU's memory for any useful batch.
MAX_IMG_SIZE = 4096


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

    def range_checks(self) -> list[RangeCheck]:
        """``(key, value, ok, expected)`` for every option with a valid range."""
        return [whole_number("backbone.img_size", self.img_size, 16, MAX_IMG_SIZE)]

    def check(self) -> None:
        """Raise ValueError (one line) for options that do not fit together; none by default."""


def timm_kwargs_checks(key: str, kwargs: Mapping[str, Any]) -> list[RangeCheck]:
    """Checks of the timm ``create_model`` keyword arguments the pipeline cannot honour: the
    shards hold RGB images (``in_chans`` 3) and the encoder must pool (``global_pool`` set)."""
    checks: list[RangeCheck] = []
    if "in_chans" in kwargs:
        checks.append((f"{key}.in_chans", kwargs["in_chans"], kwargs["in_chans"] == 3
                       and not isinstance(kwargs["in_chans"], bool), "3 (the images are RGB)"))
    if "global_pool" in kwargs:
        pool = kwargs["global_pool"]
        checks.append((f"{key}.global_pool", pool, isinstance(pool, str) and pool != "",
                       "a pooling name such as 'token', 'avg' or 'max', not empty"))
    return checks


def timm_kind(key: str, arch: str, kind: str) -> RangeCheck:
    """A check that the timm architecture ``arch`` is of backbone ``kind`` (``vit``/``cnn``);
    an unknown name passes here (:func:`timm_architecture` words that)."""
    try:
        ok = timm_backbone_name(arch) == kind
    except (ValueError, AttributeError):
        ok = True
    words = ("a timm VisionTransformer" if kind == "vit"
             else "a timm CNN (for VisionTransformers use backbone.name=vit)")
    return (key, arch, ok, words)


@dataclass
class TimmBackboneConfig(BackboneConfig):
    """A timm model by architecture name, created with ``num_classes=0`` and ``kwargs``."""

    arch: str = "vit_small_patch16_224"
    kwargs: dict[str, Any] = field(default_factory=dict)

    def range_checks(self) -> list[RangeCheck]:
        return [*super().range_checks(), timm_architecture("backbone.arch", self.arch),
                *timm_kwargs_checks("backbone.kwargs", self.kwargs)]


@dataclass
class ViTConfig(TimmBackboneConfig):
    """A timm Vision Transformer with a class token (fixed input size, no drop-path)."""

    name: str = "vit"

    @property
    def uses_tokens(self) -> bool:
        return True

    @property
    def patch_size(self) -> int | None:
        """The patch side: ``kwargs.patch_size``, else the ``patchN`` of timm's name (None if
        neither says, e.g. a model named without it)."""
        given = self.kwargs.get("patch_size")
        if isinstance(given, int) and not isinstance(given, bool):
            return given
        found = _PATCH_IN_NAME.search(self.arch)
        return int(found.group(1)) if found else None

    def check(self) -> None:
        """Raise ValueError (one line) when ``img_size`` does not cut into whole patches."""
        patch = self.patch_size
        if patch and self.img_size % patch:
            raise ValueError(f"input size {self.img_size} is not divisible by the patch size "
                             f"{patch} of {self.arch}")

    def range_checks(self) -> list[RangeCheck]:
        return [*super().range_checks(), timm_kind("backbone.arch", self.arch, "vit")]


@dataclass
class CNNConfig(TimmBackboneConfig):
    """A timm convolutional network, globally pooled (e.g. resnet50, resnet18, densenet161)."""

    name: str = "cnn"
    arch: str = "resnet50"

    def range_checks(self) -> list[RangeCheck]:
        return [*super().range_checks(), timm_kind("backbone.arch", self.arch, "cnn")]


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

    def range_checks(self) -> list[RangeCheck]:
        return [
            *super().range_checks(),
            timm_kind("backbone.arch", self.arch, "vit"),
            timm_architecture("backbone.cnn_arch", self.cnn_arch),
            timm_kind("backbone.cnn_arch", self.cnn_arch, "cnn"),
            *timm_kwargs_checks("backbone.cnn_kwargs", self.cnn_kwargs),
            strictly_increasing("backbone.cnn_levels", self.cnn_levels),
            positive("backbone.fpn_width", self.fpn_width),
            whole_number("backbone.deep_learner_rounds", self.deep_learner_rounds, 0),
            whole_number("backbone.cbam_reduction", self.cbam_reduction, 1),
        ]


BACKBONE_CONFIGS: dict[str, type[BackboneConfig]] = {
    "vit": ViTConfig,
    "cnn": CNNConfig,
    "msssl_hybrid": MsSSLConfig,
}
