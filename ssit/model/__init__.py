"""The SSiT model and objective on timm Vision Transformers, and backbone extraction."""

from __future__ import annotations

from ssit.model.backbone import (
    backbone_state_dict,
    create_vit,
    extract_backbone,
    resize_pos_embed,
)
from ssit.model.checkpoint import (
    CheckpointError,
    load_ssit_state_dict,
    read_checkpoint,
    ssit_state_dict,
)
from ssit.model.losses import contrastive_loss, gather_from_all_ranks, saliency_segmentation_loss
from ssit.model.ssit import SSiT

__all__ = [
    "CheckpointError",
    "SSiT",
    "backbone_state_dict",
    "contrastive_loss",
    "create_vit",
    "extract_backbone",
    "gather_from_all_ranks",
    "load_ssit_state_dict",
    "read_checkpoint",
    "resize_pos_embed",
    "saliency_segmentation_loss",
    "ssit_state_dict",
]
