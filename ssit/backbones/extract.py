"""Taking a pre-trained backbone out of a method checkpoint.

Every method keeps its query backbone under ``base_encoder.*`` and, where it has one, the
momentum copy under ``momentum_encoder.*``. Branch ``auto`` is the one the checkpoint's method
declares (its ``export_branch``, e.g. DINO's teacher), ``query`` when it declares none. A
projector stored inside the backbone as ``head.*`` (SSiT's, in the authors' layout) is dropped
when the plain backbone has no such weights. A checkpoint that holds a plain backbone (no
prefix) is accepted for the query branch.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ssit.backbones.config import BACKBONE_CONFIGS, BackboneConfig, ViTConfig
from ssit.backbones.registry import backbone_kind
from ssit.backbones.weights import (
    CheckpointError,
    CheckpointSource,
    checkpoint_state_dict,
    load_into,
    read_checkpoint,
)

logger = logging.getLogger(__name__)

Branch = Literal["auto", "query", "momentum"]
BRANCH_PREFIXES: dict[str, str] = {"query": "base_encoder.", "momentum": "momentum_encoder."}


def resolve_branch(checkpoint: CheckpointSource, branch: Branch) -> str:
    """``branch``, or for ``auto`` the branch the checkpoint declares (``query`` if none)."""
    if branch != "auto":
        return branch
    loaded = read_checkpoint(checkpoint) if isinstance(checkpoint, str | Path) else checkpoint
    declared = loaded.get("export_branch", "query")
    if declared not in BRANCH_PREFIXES:
        raise CheckpointError(f"checkpoint declares an unknown export branch {declared!r}")
    return declared


def backbone_state_dict(
    checkpoint: CheckpointSource, branch: Branch = "query"
) -> dict[str, torch.Tensor]:
    """The weights of one branch's backbone with the branch prefix removed (heads included)."""
    if branch not in (*BRANCH_PREFIXES, "auto"):
        raise ValueError(f"branch must be 'auto', 'query' or 'momentum', got {branch!r}")
    if isinstance(checkpoint, str | Path):
        checkpoint = read_checkpoint(checkpoint)
    branch = resolve_branch(checkpoint, branch)
    state = checkpoint_state_dict(checkpoint)
    prefix = BRANCH_PREFIXES[branch]
    backbone = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
    if backbone:
        return backbone
    if branch == "query" and not any(key.startswith(tuple(BRANCH_PREFIXES.values()))
                                     for key in state):
        logger.info("checkpoint holds a plain backbone; using it as the query backbone")
        return state
    raise CheckpointError(
        f"checkpoint holds no '{prefix}*' weights (keys like {', '.join(list(state)[:3])})"
    )


def fit_backbone_state(
    state: dict[str, torch.Tensor], model: nn.Module, cfg: BackboneConfig
) -> dict[str, torch.Tensor]:
    """``state`` without projector weights the backbone lacks, adapted to its input size."""
    own = model.state_dict()
    kept = {key: value for key, value in state.items()
            if not key.startswith("head.") or key in own}
    return backbone_kind(cfg.name).adapt_state(kept, model)


def extract_backbone(
    checkpoint: CheckpointSource, cfg: BackboneConfig, branch: Branch = "query"
) -> nn.Module:
    """The backbone of ``cfg`` (at ``cfg.img_size``) holding one branch's pre-trained weights."""
    model = backbone_kind(cfg.name).build(cfg)
    state = fit_backbone_state(backbone_state_dict(checkpoint, branch), model, cfg)
    load_into(model, state, strict=True, what=f"{describe_backbone(cfg)} backbone")
    return model


def describe_backbone(cfg: BackboneConfig) -> str:
    """A short human name: the timm architecture where there is one, else the kind."""
    return str(getattr(cfg, "arch", cfg.name))


def saved_backbone_config(checkpoint: Mapping[str, Any]) -> BackboneConfig | None:
    """The backbone section recorded in a training checkpoint's config, or None.

    Reads ``config.backbone`` and, for checkpoints written before backbones were configurable,
    the ViT settings of the old ``config.model`` section (``arch``, ``img_size``,
    ``encoder_kwargs``).
    """
    config = checkpoint.get("config")
    if not isinstance(config, Mapping):
        return None
    section = config.get("backbone")
    if isinstance(section, Mapping):
        name = section.get("name", "vit")
        schema = BACKBONE_CONFIGS.get(name)
        if schema is None:
            raise CheckpointError(f"checkpoint names an unknown backbone {name!r}")
        known = {f.name for f in dataclasses.fields(schema)}
        return schema(**{key: value for key, value in section.items() if key in known})
    model = config.get("model")
    if isinstance(model, Mapping) and model.get("arch"):
        return ViTConfig(arch=model["arch"], img_size=int(model.get("img_size", 224)),
                         kwargs=dict(model.get("encoder_kwargs") or {}))
    return None


def load_exported_backbone(path: str | Path) -> nn.Module:
    """The backbone that ``ssit export`` wrote to ``path``, rebuilt from the file's metadata.

    Works for every kind (timm ViTs and CNNs also load with ``timm.create_model``).
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata() or {})
    kind = backbone_kind(metadata.get("backbone", "vit"))
    cfg = kind.config_from_metadata(metadata)
    model = kind.build(cfg)
    load_into(model, load_file(str(path)), strict=True, what=f"{describe_backbone(cfg)} backbone")
    return model
