"""The timm Vision Transformer backbone: creation, and extraction from SSiT checkpoints.

For grading, the pre-trained query encoder (``base_encoder.*``) or momentum encoder
(``momentum_encoder.*``) is taken out of a checkpoint, its projector (``head.*``) dropped, and
loaded into a plain timm ``VisionTransformer`` with ``num_classes=0`` at the requested input
size, the position embeddings being resampled to the new patch grid.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any, Literal

import timm
import torch
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer

from ssit.model.checkpoint import CheckpointError, CheckpointSource, load_into, ssit_state_dict

logger = logging.getLogger(__name__)

Branch = Literal["query", "momentum"]
BRANCH_PREFIXES: dict[str, str] = {"query": "base_encoder.", "momentum": "momentum_encoder."}


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
    if not timm.is_model(arch):
        raise ValueError(f"unknown timm model {arch!r}")
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


def backbone_state_dict(
    checkpoint: CheckpointSource, branch: Branch = "query"
) -> dict[str, torch.Tensor]:
    """The ViT weights of one SSiT branch in timm names, projector (``head.*``) dropped.

    A checkpoint that already holds a plain ViT (``patch_embed.*`` at top level) is accepted
    for the query branch.
    """
    if branch not in BRANCH_PREFIXES:
        raise ValueError(f"branch must be 'query' or 'momentum', got {branch!r}")
    state = ssit_state_dict(checkpoint)
    prefix = BRANCH_PREFIXES[branch]
    backbone = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
    if not backbone:
        if branch == "query" and "patch_embed.proj.weight" in state:
            logger.info("checkpoint holds a plain ViT; using it as the query backbone")
            backbone = state
        else:
            raise CheckpointError(
                f"checkpoint holds no '{prefix}*' weights (keys like {', '.join(list(state)[:3])})"
            )
    return {key: value for key, value in backbone.items() if not key.startswith("head.")}


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


def extract_backbone(
    checkpoint: CheckpointSource,
    arch: str = "vit_small_patch16_224",
    img_size: int = 384,
    branch: Branch = "query",
    encoder_kwargs: Mapping[str, Any] | None = None,
) -> VisionTransformer:
    """A plain timm ViT (``num_classes=0``) holding one branch's pre-trained weights.

    Position embeddings are resampled when ``img_size`` differs from the pre-training size.
    """
    model = create_vit(arch, img_size, encoder_kwargs=encoder_kwargs)
    state = resize_pos_embed(backbone_state_dict(checkpoint, branch), model)
    load_into(model, state, strict=True, what=f"{arch} backbone")
    return model
