"""Encoder networks by name: timm ViTs and CNNs, built from a ``backbone:`` config section.

See :mod:`ssit.backbones.registry` for what a backbone offers and how to add one.
"""

from __future__ import annotations

import importlib
from typing import Any

from ssit.backbones.config import (
    BACKBONE_CONFIGS,
    BackboneConfig,
    CNNConfig,
    MsSSLConfig,
    TimmBackboneConfig,
    ViTConfig,
)

# Everything but the config sections needs torch; it is imported on first use so that
# configuration checks stay light for launchers.
_LAZY = {
    **dict.fromkeys(("BRANCH_PREFIXES", "Branch", "backbone_state_dict", "describe_backbone",
                     "extract_backbone", "fit_backbone_state", "load_exported_backbone",
                     "saved_backbone_config"), "ssit.backbones.extract"),
    **dict.fromkeys(("BACKBONE_KINDS", "BackboneKind", "backbone_kind", "create_backbone",
                     "timm_backbone_name"), "ssit.backbones.registry"),
    **dict.fromkeys(("CheckpointError", "checkpoint_state_dict", "load_into",
                     "read_checkpoint"), "ssit.backbones.weights"),
}


def __getattr__(name: str) -> Any:
    """Import the torch-dependent parts only when one of their names is asked for."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)


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
