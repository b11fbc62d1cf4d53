"""The MsSSL hybrid backbone (``backbone.name: msssl_hybrid``): ViT + CNN-FPN + Deep Learner.

This is a reconstruction. MsSSL (Almattar et al., Scientific Reports 15:33742, 2025) is public
only as an abstract: a ViT for global context and a CNN with a Feature Pyramid Network for
multi-scale features, fused and refined by a "Deep Learner" module that improves spatial
resolution, with CBAM among its keywords. The first author's earlier public code is a fork of
SSiT, so the hybrid is trained with the SSiT / MoCo v3 objective here. Everything below the
abstract's level of detail is inferred, and each inferred choice is a config option
(:class:`~ssit.backbones.config.MsSSLConfig`):

- ViT branch (``arch``, default ViT-S/16): the class token ``g`` and the final patch tokens as a
  map on the patch grid (14 x 14 at 224);
- CNN branch (``cnn_arch``, default ResNet-50): stages C2-C5 (timm ``features_only``,
  ``cnn_levels``) into torchvision's ``FeaturePyramidNetwork`` (``fpn_width`` channels per
  level), every level resampled to the ViT grid (average pooling down, bilinear up);
- fusion (``fusion``): the levels concatenated with the ViT map projected to ``fpn_width``
  channels (``concat``), or summed with it (``sum``), then 1 x 1 conv, BatchNorm, ReLU;
- Deep Learner (``deep_learner_rounds``, default 2): per round upsample x2 (bilinear),
  3 x 3 conv-BN-ReLU, CBAM (``cbam_reduction``); the map is average- and max-pooled;
- pooled feature: ``[g, avgpool, maxpool]``, ``embed_dim + 2 * fpn_width`` wide (896 by
  default); the projector, kNN and the grading head read it.

With SSiT's key selection only the ViT branch drops patches: its dropped positions are zeros in
the ViT map; ``method.mask_cnn_pixels`` also blanks those patches' pixels (to 0, the normalised
mean) for the CNN branch. A segmentation head may read the ViT tokens or the Deep Learner's
finer map (``method.segment_from``). The ViT branch needs its fixed input size (position
embeddings are resized for other sizes); the CNN branch takes any size.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torchvision.ops import FeaturePyramidNetwork

from ssit.backbones.cbam import CBAM
from ssit.backbones.config import BackboneConfig, MsSSLConfig
from ssit.backbones.registry import BackboneKind, timm_backbone_name
from ssit.backbones.tokens import (
    TOKENS,
    VIT_TOKENS,
    TokenAccess,
    patch_map,
    vit_tokens,
)
from ssit.backbones.vit import create_vit, resize_pos_embed

DEEP_LEARNER = "deep_learner"
"""The dense source made of the Deep Learner's output map (``2**rounds`` times the grid)."""

FUSIONS = ("concat", "sum")


def resample_to_grid(feature: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
    """``feature`` ``(B, C, H, W)`` at ``grid_size``: average pooling down, bilinear up."""
    if tuple(feature.shape[-2:]) == tuple(grid_size):
        return feature
    if feature.shape[-2] >= grid_size[0] and feature.shape[-1] >= grid_size[1]:
        return F.adaptive_avg_pool2d(feature, grid_size)
    return F.interpolate(feature, size=grid_size, mode="bilinear", align_corners=False)


def kept_pixel_mask(
    patch_indices: torch.Tensor, grid_size: tuple[int, int], patch_size: int
) -> torch.Tensor:
    """``(B, 1, H, W)`` mask: 1 on the pixels of the patches at ``patch_indices``, else 0."""
    height, width = grid_size
    keep = torch.zeros(patch_indices.shape[0], height * width, device=patch_indices.device)
    keep.scatter_(1, patch_indices, 1.0)
    keep = keep.view(-1, 1, height, width)
    return keep.repeat_interleave(patch_size, dim=2).repeat_interleave(patch_size, dim=3)


def build_deep_learner(channels: int, rounds: int, reduction: int) -> nn.Sequential:
    """``rounds`` x (upsample x2, 3x3 conv-BN-ReLU, CBAM) at ``channels`` channels."""
    return nn.Sequential(*(
        nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            CBAM(channels, reduction),
        )
        for _ in range(rounds)
    ))


class PyramidFusion(nn.Module):
    """The ViT map projected to ``width`` channels, fused with the pyramid levels, 1x1-BN-ReLU."""

    def __init__(self, vit_dim: int, width: int, num_levels: int, mode: str) -> None:
        super().__init__()
        if mode not in FUSIONS:
            raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}, got {mode!r}")
        self.mode = mode
        self.vit_projection = nn.Conv2d(vit_dim, width, kernel_size=1)
        in_channels = width * (num_levels + 1) if mode == "concat" else width
        self.mix = nn.Sequential(
            nn.Conv2d(in_channels, width, kernel_size=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )

    def forward(self, vit_map: torch.Tensor, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        projected = self.vit_projection(vit_map)
        if self.mode == "concat":
            return self.mix(torch.cat([*levels, projected], dim=1))
        return self.mix(projected + torch.stack(list(levels)).sum(dim=0))


class HybridOutput(NamedTuple):
    """One pass of the hybrid: pooled feature, ViT patch-token map, Deep Learner map."""

    pooled: torch.Tensor
    vit_map: torch.Tensor
    deep_map: torch.Tensor


class HybridTokenAccess(TokenAccess):
    """Token access of the hybrid: patches are the ViT branch's; two dense sources."""

    def check(self, model: nn.Module) -> None:
        VIT_TOKENS.check(model.vit)

    def patch_size(self, model: nn.Module) -> int:
        return VIT_TOKENS.patch_size(model.vit)

    def grid_size(self, model: nn.Module) -> tuple[int, int]:
        return VIT_TOKENS.grid_size(model.vit)

    def dense_sources(self, model: nn.Module) -> tuple[str, ...]:
        return (TOKENS, DEEP_LEARNER)

    def dense_shape(self, model: nn.Module, source: str) -> tuple[int, int]:
        self._check_source(model, source)
        patch = self.patch_size(model)
        if source == TOKENS:
            return int(model.vit.embed_dim), patch
        scale = 2 ** model.deep_learner_rounds
        if patch % scale:
            raise ValueError(f"the Deep Learner map ({scale}x the {patch}-pixel patch grid) does "
                             "not divide the input into whole pixels; use fewer rounds")
        return int(model.fpn_width), patch // scale

    def can_blank_pixels(self, model: nn.Module) -> bool:
        return True

    def query(
        self, model: nn.Module, images: torch.Tensor, source: str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        output = model.encode(images)
        if source is None:
            return output.pooled, None
        self._check_source(model, source)
        return output.pooled, output.vit_map if source == TOKENS else output.deep_map

    def keys(
        self,
        model: nn.Module,
        images: torch.Tensor,
        patch_indices: torch.Tensor | None,
        blank_pixels: bool = False,
    ) -> torch.Tensor:
        return model.encode(images, patch_indices, blank_pixels).pooled


class MsSSLHybrid(nn.Module):
    """ViT + CNN-FPN + Deep Learner; ``model(x)`` gives ``head([g, avgpool, maxpool])``.

    ``head`` is the identity (a method may put its projector there, as SSiT does for a ViT).
    Submodules: ``vit``, ``cnn`` (timm ``features_only``), ``fpn``, ``fusion``,
    ``deep_learner``, ``head``.
    """

    token_access = HybridTokenAccess()

    def __init__(
        self,
        vit: VisionTransformer,
        cnn: nn.Module,
        fpn_width: int = 256,
        fusion: str = "concat",
        deep_learner_rounds: int = 2,
        cbam_reduction: int = 16,
    ) -> None:
        super().__init__()
        if fpn_width < 1:
            raise ValueError(f"fpn_width must be at least 1, got {fpn_width}")
        if deep_learner_rounds < 0:
            raise ValueError(f"deep_learner_rounds must be >= 0, got {deep_learner_rounds}")
        self.vit = vit
        self.cnn = cnn
        cnn_channels = list(cnn.feature_info.channels())
        self.fpn = FeaturePyramidNetwork(cnn_channels, fpn_width)
        self.fusion = PyramidFusion(vit.embed_dim, fpn_width, len(cnn_channels), fusion)
        self.deep_learner = build_deep_learner(fpn_width, deep_learner_rounds, cbam_reduction)
        self.head: nn.Module = nn.Identity()
        self.fpn_width = fpn_width
        self.deep_learner_rounds = deep_learner_rounds
        self.num_features = int(vit.num_features) + 2 * fpn_width

    def encode(
        self,
        images: torch.Tensor,
        patch_indices: torch.Tensor | None = None,
        blank_pixels: bool = False,
    ) -> HybridOutput:
        """Both branches, fused and refined; ``patch_indices`` ``(B, K)`` limits the ViT's
        patches (the dropped ones are zeros in its map) and ``blank_pixels`` also zeroes their
        pixels for the CNN."""
        grid = self.token_access.grid_size(self)
        tokens = vit_tokens(self.vit, images, patch_indices)
        class_token = self.vit.forward_head(tokens, pre_logits=True)
        patches = tokens[:, self.vit.num_prefix_tokens :]
        if patch_indices is not None:
            index = patch_indices.unsqueeze(-1).expand(-1, -1, patches.shape[-1])
            full = patches.new_zeros(patches.shape[0], grid[0] * grid[1], patches.shape[-1])
            patches = full.scatter(1, index, patches)
            if blank_pixels:
                patch = self.token_access.patch_size(self)
                images = images * kept_pixel_mask(patch_indices, grid, patch).to(images.dtype)
        vit_map = patch_map(patches, grid).contiguous()  # NCHW strides for the convolutions
        features = self.cnn(images)
        levels = self.fpn(OrderedDict((str(i), level) for i, level in enumerate(features)))
        fused = self.fusion(vit_map, [resample_to_grid(level, grid) for level in levels.values()])
        deep_map = self.deep_learner(fused)
        pooled = torch.cat([class_token, deep_map.mean(dim=(2, 3)), deep_map.amax(dim=(2, 3))],
                           dim=1)
        return HybridOutput(pooled, vit_map, deep_map)

    def pooled_features(self, images: torch.Tensor) -> torch.Tensor:
        """``[g, avgpool, maxpool]`` ``(B, num_features)``, before ``head``."""
        return self.encode(images).pooled

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooled_features(images))


def create_hybrid_cnn(
    arch: str, levels: Sequence[int], pretrained: bool = False,
    kwargs: Mapping[str, Any] | None = None,
) -> nn.Module:
    """A timm CNN giving the feature maps of ``levels`` (``features_only``)."""
    if timm_backbone_name(arch) != "cnn":
        raise ValueError(f"{arch} is a transformer; the hybrid's CNN branch needs a CNN")
    if not levels:
        raise ValueError("the CNN branch needs at least one level (cnn_levels)")
    try:
        return timm.create_model(arch, pretrained=pretrained, features_only=True,
                                 out_indices=tuple(levels), **dict(kwargs or {}))
    except (TypeError, RuntimeError, IndexError, AssertionError) as error:
        raise ValueError(f"cannot create {arch} with levels {list(levels)}: {error}") from None


def create_msssl_hybrid(cfg: MsSSLConfig, pretrained: bool = False) -> MsSSLHybrid:
    """The hybrid that ``cfg`` describes (``pretrained`` loads timm weights into both branches)."""
    if cfg.cbam_reduction < 1:
        raise ValueError(f"cbam_reduction must be at least 1, got {cfg.cbam_reduction}")
    vit = create_vit(cfg.arch, cfg.img_size, pretrained, cfg.kwargs)
    cnn = create_hybrid_cnn(cfg.cnn_arch, cfg.cnn_levels, pretrained, cfg.cnn_kwargs)
    return MsSSLHybrid(vit, cnn, cfg.fpn_width, cfg.fusion, cfg.deep_learner_rounds,
                       cfg.cbam_reduction)


def _require_msssl_config(cfg: BackboneConfig) -> MsSSLConfig:
    if not isinstance(cfg, MsSSLConfig):
        raise TypeError(f"the msssl_hybrid backbone needs an MsSSLConfig, got {type(cfg).__name__}")
    return cfg


class MsSSLKind(BackboneKind):
    """The hybrid: pooling, kNN and grading all read ``[g, avgpool, maxpool]``."""

    name = "msssl_hybrid"

    def build(self, cfg: BackboneConfig, pretrained: bool = False) -> nn.Module:
        return create_msssl_hybrid(_require_msssl_config(cfg), pretrained)

    def adapt_state(
        self, state: Mapping[str, torch.Tensor], model: nn.Module
    ) -> dict[str, torch.Tensor]:
        vit_state = {key[4:]: value for key, value in state.items() if key.startswith("vit.")}
        resized = resize_pos_embed(vit_state, model.vit)
        return {**state, **{f"vit.{key}": value for key, value in resized.items()}}

    def export_metadata(self, cfg: BackboneConfig) -> dict[str, str]:
        cfg = _require_msssl_config(cfg)
        return {
            "arch": cfg.arch,
            "img_size": str(cfg.img_size),
            "model_kwargs": json.dumps(cfg.kwargs),
            "cnn_arch": cfg.cnn_arch,
            "cnn_kwargs": json.dumps(cfg.cnn_kwargs),
            "cnn_levels": json.dumps(list(cfg.cnn_levels)),
            "fpn_width": str(cfg.fpn_width),
            "fusion": cfg.fusion,
            "deep_learner_rounds": str(cfg.deep_learner_rounds),
            "cbam_reduction": str(cfg.cbam_reduction),
        }

    def config_from_metadata(self, metadata: Mapping[str, str]) -> BackboneConfig:
        defaults = MsSSLConfig()
        return MsSSLConfig(
            arch=metadata["arch"],
            img_size=int(metadata.get("img_size", defaults.img_size)),
            kwargs=json.loads(metadata.get("model_kwargs") or "{}"),
            cnn_arch=metadata.get("cnn_arch", defaults.cnn_arch),
            cnn_kwargs=json.loads(metadata.get("cnn_kwargs") or "{}"),
            cnn_levels=json.loads(metadata.get("cnn_levels") or json.dumps(defaults.cnn_levels)),
            fpn_width=int(metadata.get("fpn_width", defaults.fpn_width)),
            fusion=metadata.get("fusion", defaults.fusion),
            deep_learner_rounds=int(
                metadata.get("deep_learner_rounds", defaults.deep_learner_rounds)),
            cbam_reduction=int(metadata.get("cbam_reduction", defaults.cbam_reduction)),
        )


MSSSL_HYBRID = MsSSLKind()
