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


@dataclass
class DINOConfig(MethodConfig):
    """DINO (Caron et al., ICCV 2021) as released in facebookresearch/dino (ViT backbones).

    The student (the backbone with ``drop_path_rate``, plus the head) sees 2 global crops at
    the backbone's size and ``local_crops_number`` local crops of ``local_crops_size``; the
    teacher (an EMA copy without drop-path) sees the global crops. The teacher temperature
    warms up linearly from ``warmup_teacher_temp`` over ``warmup_teacher_temp_epochs`` whole
    epochs; the weight decay follows a cosine from ``optim.weight_decay`` to
    ``weight_decay_end``; the last layer gets no update for ``freeze_last_layer`` epochs.
    Grading and export read the teacher backbone unless ``export_student`` is true.
    """

    name: str = "dino"
    out_dim: int = 65536
    use_bn_in_head: bool = False
    norm_last_layer: bool = True
    head_layers: int = 3
    head_hidden_dim: int = 2048
    head_bottleneck_dim: int = 256
    momentum_teacher: float = 0.996
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: int = 0
    student_temp: float = 0.1
    center_momentum: float = 0.9
    global_crops_scale: tuple[float, float] = (0.4, 1.0)
    local_crops_number: int = 8
    local_crops_scale: tuple[float, float] = (0.05, 0.4)
    local_crops_size: int = 96
    drop_path_rate: float = 0.1
    weight_decay_end: float = 0.4
    freeze_last_layer: int = 1
    export_student: bool = False

    def check(self, backbone: BackboneConfig) -> None:
        if backbone.name != "vit":
            raise ValueError(f"method dino needs backbone.name=vit (its position embedding is "
                             f"resized for the local crops), got backbone.name={backbone.name}")
        if "drop_path_rate" in getattr(backbone, "kwargs", {}):
            raise ValueError("set the student's drop path with method.drop_path_rate, not "
                             "backbone.kwargs.drop_path_rate (the teacher has none)")
        patch = getattr(backbone, "patch_size", None)
        if patch and self.local_crops_size % patch:
            raise ValueError(f"local_crops_size {self.local_crops_size} is not a multiple of the "
                             f"patch size {patch}")
        for key in ("global_crops_scale", "local_crops_scale"):
            low, high = getattr(self, key)
            if not 0 < low <= high <= 1:
                raise ValueError(f"method.{key} must satisfy 0 < low <= high <= 1, got "
                                 f"{list(getattr(self, key))}")

    def range_checks(self) -> list[RangeCheck]:
        return [
            ("method.out_dim", self.out_dim, self.out_dim >= 1, ">= 1"),
            ("method.head_layers", self.head_layers, self.head_layers >= 1, ">= 1"),
            ("method.head_hidden_dim", self.head_hidden_dim, self.head_hidden_dim >= 1, ">= 1"),
            ("method.head_bottleneck_dim", self.head_bottleneck_dim,
             self.head_bottleneck_dim >= 1, ">= 1"),
            within("method.momentum_teacher", self.momentum_teacher, 0, 1),
            temperature("method.teacher_temp", self.teacher_temp),
            temperature("method.warmup_teacher_temp", self.warmup_teacher_temp),
            ("method.warmup_teacher_temp_epochs", self.warmup_teacher_temp_epochs,
             self.warmup_teacher_temp_epochs >= 0, ">= 0"),
            temperature("method.student_temp", self.student_temp),
            within("method.center_momentum", self.center_momentum, 0, 1),
            ("method.local_crops_number", self.local_crops_number,
             self.local_crops_number >= 0, ">= 0"),
            ("method.local_crops_size", self.local_crops_size, self.local_crops_size >= 1, ">= 1"),
            within("method.drop_path_rate", self.drop_path_rate, 0, 1, open_high=True),
            non_negative("method.weight_decay_end", self.weight_decay_end),
            ("method.freeze_last_layer", self.freeze_last_layer, self.freeze_last_layer >= 0,
             ">= 0"),
        ]


@dataclass
class MAEConfig(MethodConfig):
    """MAE (He et al., CVPR 2022): a ViT encoder sees a random quarter of the patches, a light
    decoder reconstructs the pixels of the others.

    ViT-S/16 has no released MAE decoder; the defaults (512 wide, 8 blocks, 16 heads) are the
    ViT-B/L/H decoder of the released code, as other ViT-S reproductions use them.
    ``norm_pix_loss`` normalises each target patch by its own mean and variance;
    ``augmentation`` overrides fields of the view recipe (see ``ssit.methods.mae``).
    """

    name: str = "mae"
    mask_ratio: float = 0.75
    decoder_embed_dim: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    norm_pix_loss: bool = True
    augmentation: dict[str, Any] = field(default_factory=dict)

    def check(self, backbone: BackboneConfig) -> None:
        check_augmentation_overrides("method.augmentation", self.augmentation)
        if backbone.name != "vit":
            raise ValueError(f"method mae needs backbone.name=vit (it masks ViT patches), got "
                             f"backbone.name={backbone.name}")
        if self.decoder_embed_dim % 4:
            raise ValueError("method.decoder_embed_dim must be divisible by 4 (its sine-cosine "
                             f"position embedding), got {self.decoder_embed_dim}")
        if self.decoder_num_heads > 0 and self.decoder_embed_dim % self.decoder_num_heads:
            raise ValueError(f"method.decoder_num_heads={self.decoder_num_heads} must divide "
                             f"method.decoder_embed_dim={self.decoder_embed_dim}")
        patch = getattr(backbone, "patch_size", None)
        if patch and 0 < self.mask_ratio < 1:
            grid = backbone.img_size // patch
            if int(grid * grid * (1 - self.mask_ratio)) < 1:
                raise ValueError(f"method.mask_ratio={self.mask_ratio} keeps no patch of the "
                                 f"{grid}x{grid} grid")

    def range_checks(self) -> list[RangeCheck]:
        return [
            ("method.mask_ratio", self.mask_ratio, 0 < self.mask_ratio < 1, "in (0, 1)"),
            positive("method.decoder_embed_dim", self.decoder_embed_dim),
            positive("method.decoder_depth", self.decoder_depth),
            positive("method.decoder_num_heads", self.decoder_num_heads),
        ]


METHOD_CONFIGS: dict[str, type[MethodConfig]] = {
    "ssit": SSiTConfig,
    "simclr": SimCLRConfig,
    "gravis": GraVISConfig,
    "dino": DINOConfig,
    "mae": MAEConfig,
}
