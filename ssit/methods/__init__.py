"""Pre-training objectives by name: SSiT (and MoCo v3), SimCLR, GraVIS, DINO and MAE.

A method is a :class:`~ssit.methods.base.Method`. Adding one is a module with a builder
``build_<name>(method_cfg, backbone_cfg) -> Method``, its options dataclass in
:mod:`ssit.methods.config` and one line in ``METHODS`` below.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ssit.backbones.config import BackboneConfig
from ssit.methods.config import (
    METHOD_CONFIGS,
    DINOConfig,
    GraVISConfig,
    MAEConfig,
    MethodConfig,
    SimCLRConfig,
    SSiTConfig,
)

# name -> "module:builder", imported on first use.
METHODS: dict[str, str] = {
    "ssit": "ssit.methods.ssit:build_ssit",
    "simclr": "ssit.methods.simclr:build_simclr",
    "gravis": "ssit.methods.gravis:build_gravis",
    "dino": "ssit.methods.dino:build_dino",
    "mae": "ssit.methods.mae:build_mae",
}


if TYPE_CHECKING:
    from ssit.methods.base import Method


def __getattr__(name: str) -> Any:
    """``Method`` (it needs torch) is imported on first use, so configs stay light."""
    if name == "Method":
        from ssit.methods.base import Method

        return Method
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def create_method(method: MethodConfig, backbone: BackboneConfig) -> Method:
    """Build the method that ``method`` names on the backbone that ``backbone`` describes."""
    if method.name not in METHODS:
        raise ValueError(f"unknown method {method.name!r} (known: {', '.join(sorted(METHODS))})")
    method.check(backbone)
    module, builder = METHODS[method.name].split(":")
    return getattr(importlib.import_module(module), builder)(method, backbone)


__all__ = [
    "METHODS",
    "METHOD_CONFIGS",
    "DINOConfig",
    "GraVISConfig",
    "MAEConfig",
    "Method",
    "MethodConfig",
    "SSiTConfig",
    "SimCLRConfig",
    "create_method",
]
