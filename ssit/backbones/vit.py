"""The timm Vision Transformer backbone (``backbone.name: vit``).

Pooled feature: the class token after the final norm. Grading reads the class token
concatenated with the mean patch token, as in the SSiT paper. Pre-trained weights taken to
another input size get their position embeddings resampled to the new patch grid.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from typing import Any

import timm
import torch
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ssit.backbones.config import BackboneConfig, ViTConfig
from ssit.backbones.registry import BackboneKind, timm_backbone_name
from ssit.backbones.weights import CheckpointError

logger = logging.getLogger(__name__)


def create_vit(
    arch: str,
    img_size: int,
    pretrained: bool = False,
    encoder_kwargs: Mapping[str, Any] | None = None,
) -> VisionTransformer:
    """Create a timm ViT without classifier (``num_classes=0``) and check it suits SSiT.

    The ViT needs a class token pooled by ``global_pool='token'``, a square patch and an input
    size divisible by the patch size. ``encoder_kwargs`` go to ``timm.create_model`` and may
    override the defaults (no drop-path, fixed input size).
    """
    if timm_backbone_name(arch) != "vit":
        raise ValueError(f"{arch} is not a timm VisionTransformer (for CNNs use backbone.name=cnn)")
    kwargs: dict[str, Any] = {"drop_path_rate": 0.0, "dynamic_img_size": False}
    kwargs.update(encoder_kwargs or {})
    try:
        model = timm.create_model(
            arch, pretrained=pretrained, img_size=img_size, num_classes=0, **kwargs
        )
    except TypeError as error:
        raise ValueError(f"cannot create {arch} with these options: {error}") from None
    if type(model) is not VisionTransformer:
        raise ValueError(f"{arch} is a {type(model).__name__}, not a plain timm VisionTransformer")
    if not model.has_class_token or model.global_pool != "token":
        raise ValueError(f"{arch} has no class token pooling (global_pool={model.global_pool!r})")
    patch_h, patch_w = model.patch_embed.patch_size
    if patch_h != patch_w:
        raise ValueError(f"{arch} has a non-square patch {patch_h}x{patch_w}")
    if img_size % patch_h:
        raise ValueError(f"input size {img_size} is not divisible by the patch size {patch_h}")
    return model


def resize_pos_embed(
    state: Mapping[str, torch.Tensor], model: VisionTransformer
) -> dict[str, torch.Tensor]:
    """Return ``state`` with ``pos_embed`` resampled (bicubic) to ``model``'s patch grid."""
    state = dict(state)
    source = state.get("pos_embed")
    if source is None or model.pos_embed is None or source.shape == model.pos_embed.shape:
        return state
    num_prefix = 0 if model.no_embed_class else model.num_prefix_tokens
    side = math.isqrt(source.shape[1] - num_prefix)
    if side * side != source.shape[1] - num_prefix:
        raise CheckpointError(
            f"checkpoint pos_embed of {source.shape[1]} tokens is not {num_prefix} prefix "
            "tokens plus a square grid"
        )
    state["pos_embed"] = resample_abs_pos_embed(
        source.float(),
        new_size=list(model.patch_embed.grid_size),
        old_size=[side, side],
        num_prefix_tokens=num_prefix,
    ).to(source.dtype)
    logger.info("resized pos_embed from %dx%d to %s", side, side, model.patch_embed.grid_size)
    return state


def interpolate_pos_encoding(
    pos_embed: torch.Tensor, grid_h: int, grid_w: int, num_prefix: int = 1
) -> torch.Tensor:
    """``pos_embed`` ``(1, P + N, D)`` for a ``grid_h x grid_w`` patch grid, as DINO resizes it.

    The ``N`` patch entries (a square grid of side ``sqrt(N)``) are resampled bicubically with
    ``scale_factor = ((grid + 0.1) / sqrt(N))`` per axis, without antialiasing (DINO's
    ``interpolate_pos_encoding``; the 0.1 avoids a floating-point floor one short of the grid);
    the ``P`` prefix entries are kept. The same grid returns ``pos_embed`` itself.
    """
    num_patches = pos_embed.shape[1] - num_prefix
    side = math.sqrt(num_patches)
    if grid_h * grid_w == num_patches and grid_h == grid_w:
        return pos_embed
    if int(side) ** 2 != num_patches:
        raise ValueError(f"pos_embed of {num_patches} patches is not a square grid")
    prefix, patches = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    dim = pos_embed.shape[-1]
    grid = patches.reshape(1, int(side), int(side), dim).permute(0, 3, 1, 2)
    resized = nn.functional.interpolate(
        grid.float(), scale_factor=((grid_h + 0.1) / side, (grid_w + 0.1) / side),
        mode="bicubic", align_corners=False,
    ).to(pos_embed.dtype)
    if tuple(resized.shape[-2:]) != (grid_h, grid_w):
        raise ValueError(f"resizing pos_embed to {grid_h}x{grid_w} gave "
                         f"{tuple(resized.shape[-2:])}")
    return torch.cat([prefix, resized.permute(0, 2, 3, 1).reshape(1, -1, dim)], dim=1)


def vit_pooled_any_size(model: VisionTransformer, images: torch.Tensor) -> torch.Tensor:
    """The pooled feature (class token after the final norm) of ``images`` of any size that
    is a multiple of the patch, with the position embedding resized as DINO does; at the
    model's own size the same as ``model(images)``."""
    if model.no_embed_class or model.reg_token is not None or model.cls_token is None:
        raise ValueError("images of another size need a ViT with a class token, no register "
                         "tokens and a position embedding that covers it")
    patch = model.patch_embed.patch_size[0]
    height, width = images.shape[-2:]
    if height % patch or width % patch:
        raise ValueError(f"image size {height}x{width} is not a multiple of the patch {patch}")
    tokens = model.patch_embed.proj(images).flatten(2).transpose(1, 2)
    tokens = model.patch_embed.norm(tokens)
    tokens = torch.cat([model.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
    pos_embed = interpolate_pos_encoding(model.pos_embed, height // patch, width // patch)
    x = model.pos_drop(tokens + pos_embed)
    x = model.norm(model.blocks(model.norm_pre(model.patch_drop(x))))
    return model.forward_head(x)


def _require_vit_config(cfg: BackboneConfig) -> None:
    if not isinstance(cfg, ViTConfig):
        raise TypeError(f"the vit backbone needs a ViTConfig, got {type(cfg).__name__}")


class ViTKind(BackboneKind):
    """timm ViTs: class-token pooling; grading reads [class token, mean patch token]."""

    name = "vit"

    def build(self, cfg: BackboneConfig, pretrained: bool = False) -> nn.Module:
        _require_vit_config(cfg)
        return create_vit(cfg.arch, cfg.img_size, pretrained, cfg.kwargs)

    def grading_features(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        tokens = model.forward_features(images)
        patches = tokens[:, model.num_prefix_tokens :]
        return torch.cat([tokens[:, 0], patches.mean(dim=1)], dim=1)

    def grading_dim(self, model: nn.Module) -> int:
        return 2 * int(model.embed_dim)

    def adapt_state(
        self, state: Mapping[str, torch.Tensor], model: nn.Module
    ) -> dict[str, torch.Tensor]:
        return resize_pos_embed(state, model)

    def export_metadata(self, cfg: BackboneConfig) -> dict[str, str]:
        _require_vit_config(cfg)
        return {"arch": cfg.arch, "img_size": str(cfg.img_size),
                "model_kwargs": json.dumps(cfg.kwargs)}

    def config_from_metadata(self, metadata: Mapping[str, str]) -> BackboneConfig:
        return ViTConfig(arch=metadata["arch"], img_size=int(metadata.get("img_size", 224)),
                         kwargs=json.loads(metadata.get("model_kwargs") or "{}"))


VIT = ViTKind()
