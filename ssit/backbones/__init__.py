"""Encoder networks by name: timm ViTs and CNNs, built from a ``backbone:`` config section.

See :mod:`ssit.backbones.registry` for what a backbone offers and how to add one.
"""

from __future__ import annotations

from ssit.backbones.config import (
    BACKBONE_CONFIGS,
    BackboneConfig,
    CNNConfig,
    MsSSLConfig,
    TimmBackboneConfig,
    ViTConfig,
)
from ssit.backbones.extract import (
    BRANCH_PREFIXES,
    Branch,
    backbone_state_dict,
    describe_backbone,
    extract_backbone,
    fit_backbone_state,
    load_exported_backbone,
    saved_backbone_config,
)
from ssit.backbones.registry import (
    BACKBONE_KINDS,
    BackboneKind,
    backbone_kind,
    create_backbone,
    timm_backbone_name,
)
from ssit.backbones.weights import (
    CheckpointError,
    checkpoint_state_dict,
    load_into,
    read_checkpoint,
)

__all__ = [
    "BACKBONE_CONFIGS",
    "BACKBONE_KINDS",
    "BRANCH_PREFIXES",
    "BackboneConfig",
    "BackboneKind",
    "Branch",
    "CNNConfig",
    "CheckpointError",
    "MsSSLConfig",
    "TimmBackboneConfig",
    "ViTConfig",
    "backbone_kind",
    "backbone_state_dict",
    "checkpoint_state_dict",
    "create_backbone",
    "describe_backbone",
    "extract_backbone",
    "fit_backbone_state",
    "load_exported_backbone",
    "load_into",
    "read_checkpoint",
    "saved_backbone_config",
    "timm_backbone_name",
]
