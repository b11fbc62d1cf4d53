"""Method sections of the configuration: ``method.name`` and that method's own options.

Each method's dataclass holds the paper's values as defaults. This module imports neither
torch nor DALI, so launchers can load and check configurations quickly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ssit.backbones.config import BackboneConfig, MsSSLConfig
from ssit.data.views import VIEW1, augmentation_with_overrides
from ssit.validators import (
    RangeCheck,
    non_negative,
    positive,
    temperature,
    whole_number,
    within,
)

# GraVIS's views of one image all go through the encoder in one step; beyond this many the
# activations of even a small batch outgrow a GPU (the paper uses 20).
MAX_VIEWS_PER_IMAGE = 64


@dataclass
class MethodConfig:
    """Base of the method sections; ``name`` selects the method."""

    name: str = "ssit"

    @classmethod
    def config_variants(cls) -> dict[str, type[MethodConfig]]:
        """The dataclass of every registered method, by name."""
        return dict(METHOD_CONFIGS)

    def check(self, backbone: BackboneConfig) -> None:
        """Raise ``ValueError`` (one line) when the options or the backbone cannot work."""

    def range_checks(self) -> list[RangeCheck]:
        """``(key, value, ok, expected)`` for every option with a valid range."""
        return []

    @property
    def views_per_step(self) -> int:
        """How many views of each image one step encodes."""
        return 2

    @property
    def needs_saliency_maps(self) -> bool:
        """Whether any view of the method comes with its saliency map (read from the shards)."""
        return False


def check_augmentation_overrides(key: str, overrides: Any) -> None:
    """Raise ``ValueError`` (one line, naming ``key``) when ``overrides`` is not a mapping of
    known view-augmentation fields to valid values (each field is checked on its own)."""
    if not isinstance(overrides, dict):
        raise ValueError(f"{key} must be a mapping of augmentation options, got {overrides!r}")
    try:
        augmentation_with_overrides(VIEW1, overrides)
    except ValueError as error:
        raise ValueError(f"{key}: {error}") from None


@dataclass
class SSiTConfig(MethodConfig):
    """SSiT (Huang et al., JBHI 2024); ``pool: null`` and ``segmentation: false`` give MoCo v3.

    On the MsSSL hybrid: ``mask_cnn_pixels`` also blanks the dropped patches' pixels for the CNN
    branch (key selection drops ViT patches only), and ``segment_from: deep_learner`` lets the
    segmentation head read the Deep Learner's finer map instead of the ViT tokens.

    ``view1_augmentation`` and ``view2_augmentation`` override fields of the paper's two view
    recipes (``ssit.data.views.VIEW1`` and ``VIEW2``), e.g. to scale crops and blur to a small
    resolution; left empty, the paper's views are used unchanged.
    """

    name: str = "ssit"
    mask_ratio: float = 0.25
    temperature: float = 0.2
    saliency_threshold: float = 0.5
    pool: Literal["max", "avg"] | None = "max"
    proj_dim: int = 256
    mlp_dim: int = 4096
    segmentation: bool = True
    momentum: float = 0.99
    w_cl: float = 1.0
    w_ss: float = 10.0
    ss_decay: bool = False
    mask_cnn_pixels: bool = False
    segment_from: Literal["tokens", "deep_learner"] = "tokens"
    view1_augmentation: dict[str, Any] = field(default_factory=dict)
    view2_augmentation: dict[str, Any] = field(default_factory=dict)

    def check(self, backbone: BackboneConfig) -> None:
        check_augmentation_overrides("method.view1_augmentation", self.view1_augmentation)
        check_augmentation_overrides("method.view2_augmentation", self.view2_augmentation)
        if not backbone.uses_tokens:
            raise ValueError(
                f"method ssit (MoCo v3 included) needs a token backbone (vit, msssl_hybrid), got "
                f"backbone.name={backbone.name}: key selection and the segmentation head read "
                "patch tokens"
            )
        if not self.segmentation and self.w_ss > 0:
            raise ValueError("method.w_ss must be 0 when method.segmentation is false")
        hybrid = isinstance(backbone, MsSSLConfig)
        if self.mask_cnn_pixels and not hybrid:
            raise ValueError("method.mask_cnn_pixels needs a backbone with a CNN branch "
                             f"(msssl_hybrid), got backbone.name={backbone.name}")
        if self.mask_cnn_pixels and self.pool is None:
            raise ValueError("method.mask_cnn_pixels needs key selection (method.pool max or avg)")
        if self.segment_from not in ("tokens", "deep_learner"):
            raise ValueError("method.segment_from must be 'tokens' or 'deep_learner', got "
                             f"{self.segment_from!r}")
        if self.segment_from == "deep_learner" and not hybrid:
            raise ValueError("method.segment_from=deep_learner needs backbone.name=msssl_hybrid, "
                             f"got {backbone.name}")
        if self.segment_from == "deep_learner" and not self.segmentation:
            raise ValueError("method.segment_from=deep_learner needs method.segmentation true")

    def range_checks(self) -> list[RangeCheck]:
        return [
            within("method.mask_ratio", self.mask_ratio, 0, 1, open_high=True),
            temperature("method.temperature", self.temperature),
            within("method.saliency_threshold", self.saliency_threshold, 0, 1),
            positive("method.proj_dim", self.proj_dim),
            positive("method.mlp_dim", self.mlp_dim),
            within("method.momentum", self.momentum, 0, 1),
            non_negative("method.w_cl", self.w_cl),
            non_negative("method.w_ss", self.w_ss),
        ]

    @property
    def needs_saliency_maps(self) -> bool:
        return self.pool is not None or self.segmentation


@dataclass
class SimCLRConfig(MethodConfig):
    """SimCLR (Chen et al., ICML 2020): NT-Xent on two symmetric views, MLP projector.

    ``augmentation`` overrides fields of the view recipe (see ``ssit.methods.simclr``).
    """

    name: str = "simclr"
    temperature: float = 0.07
    proj_hidden: int = 2048
    proj_dim: int = 128
    augmentation: dict[str, Any] = field(default_factory=dict)

    def check(self, backbone: BackboneConfig) -> None:
        check_augmentation_overrides("method.augmentation", self.augmentation)

    def range_checks(self) -> list[RangeCheck]:
        return [
            temperature("method.temperature", self.temperature),
            positive("method.proj_hidden", self.proj_hidden),
            positive("method.proj_dim", self.proj_dim),
        ]


@dataclass
class GraVISConfig(MethodConfig):
    """GraVIS (Zhou et al., TMI 2023): Smooth-AP over K views of each image.

    ``normalize`` L2-normalises the embeddings (the released code does not);
    ``hardness_aware`` weights positives by a softmax of their similarity (a reconstruction:
    the formula is not public); ``augmentation`` overrides fields of the view recipe.
    """

    name: str = "gravis"
    views_per_image: int = 20
    temperature: float = 0.2
    normalize: bool = False
    hardness_aware: bool = False
    hardness_temperature: float = 0.1
    proj_hidden: int = 2048
    proj_dim: int = 128
    augmentation: dict[str, Any] = field(default_factory=dict)

    def check(self, backbone: BackboneConfig) -> None:
        check_augmentation_overrides("method.augmentation", self.augmentation)
        if self.views_per_image < 2:
            raise ValueError(
                f"method.views_per_image must be at least 2, got {self.views_per_image}"
            )

    def range_checks(self) -> list[RangeCheck]:
        return [
            whole_number("method.views_per_image", self.views_per_image, 2, MAX_VIEWS_PER_IMAGE),
            temperature("method.temperature", self.temperature),
            temperature("method.hardness_temperature", self.hardness_temperature),
            positive("method.proj_hidden", self.proj_hidden),
            positive("method.proj_dim", self.proj_dim),
        ]

    @property
    def views_per_step(self) -> int:
        return self.views_per_image


METHOD_CONFIGS: dict[str, type[MethodConfig]] = {
    "ssit": SSiTConfig,
    "simclr": SimCLRConfig,
    "gravis": GraVISConfig,
}
