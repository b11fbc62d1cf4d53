"""The encoder under evaluation and the regression model built on it.

An encoder is a timm ViT (``num_classes=0``) at the grading input size, from an SSiT checkpoint
(query or momentum branch), from a ``.safetensors`` file written by ``ssit export``, or randomly
initialised (``random``, the floor every pre-training must beat).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ssit.error_text import first_line
from ssit.evaluate.config import EncoderConfig
from ssit.evaluate.export import saved_model_config
from ssit.model.backbone import create_vit, extract_backbone
from ssit.model.checkpoint import CheckpointError, read_checkpoint, ssit_state_dict

LOGGER = logging.getLogger(__name__)
RANDOM_ENCODER = "random"


class EncoderError(ValueError):
    """An encoder that cannot be built; one line for the user."""


def exported_metadata(path: str | Path) -> dict[str, str]:
    """The metadata stored in a ``.safetensors`` file (empty when it has none)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except Exception as error:  # safetensors raises its own error types for malformed files
        raise EncoderError(f"cannot read {path}: {error}") from None


def check_encoder_checkpoint(cfg: EncoderConfig) -> None:
    """Read only the header of ``cfg.checkpoint`` and check that it is a checkpoint of
    ``cfg.arch`` holding model weights; raise EncoderError (one line) if not.

    The tensors are memory-mapped, not read, so this is quick even for large files.
    """
    if cfg.checkpoint == RANDOM_ENCODER:
        return
    path = Path(cfg.checkpoint).expanduser()
    if not path.is_file():
        raise EncoderError(f"encoder checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        arch = exported_metadata(path).get("arch")
    else:
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as error:  # torch raises many types for files it cannot read
            raise EncoderError(f"{path} is not a readable checkpoint: {first_line(error)}"
                               ) from None
        if not isinstance(loaded, Mapping):
            raise EncoderError(f"{path} is not a checkpoint: it holds a "
                               f"{type(loaded).__name__}, not a mapping of weights")
        try:
            ssit_state_dict(loaded)
        except CheckpointError as error:
            raise EncoderError(f"{path}: {error}") from None
        arch = saved_model_config(loaded).get("arch")
    if arch and arch != cfg.arch:
        raise EncoderError(f"{path.name} holds a {arch} backbone but the grading config uses "
                           f"{cfg.arch}; set encoder.arch={arch} (or --arch {arch})")


def create_encoder(cfg: EncoderConfig) -> VisionTransformer:
    """Build the ViT backbone named by ``cfg`` at ``cfg.img_size`` (pos-embed resized).

    The architecture recorded in an exported file or a training checkpoint must match
    ``cfg.arch``; its ``model_kwargs``/``encoder_kwargs`` apply under ``cfg.model_kwargs``.
    """
    try:
        if cfg.checkpoint == RANDOM_ENCODER:
            LOGGER.info("encoder: randomly initialised %s", cfg.arch)
            return create_vit(cfg.arch, cfg.img_size, encoder_kwargs=cfg.model_kwargs)
        path = Path(cfg.checkpoint).expanduser()
        if not path.is_file():
            raise EncoderError(f"encoder checkpoint {path} does not exist")
        if path.suffix == ".safetensors":
            metadata = exported_metadata(path)
            arch = metadata.get("arch")
            saved_kwargs = json.loads(metadata.get("model_kwargs") or "{}")
            source: Path | Mapping[str, Any] = path
        else:
            source = read_checkpoint(path)
            saved = saved_model_config(source)
            arch, saved_kwargs = saved.get("arch"), saved.get("encoder_kwargs") or {}
        if arch and arch != cfg.arch:
            raise EncoderError(f"{path.name} holds a {arch} backbone; set encoder.arch={arch} "
                               f"(or --arch {arch})")
        LOGGER.info("encoder: %s branch of %s (%s)", cfg.branch, path, cfg.arch)
        kwargs = {**saved_kwargs, **cfg.model_kwargs}
        return extract_backbone(source, cfg.arch, cfg.img_size, cfg.branch, encoder_kwargs=kwargs)
    except EncoderError:
        raise
    except (ValueError, TypeError) as error:
        raise EncoderError(f"cannot build the encoder: {error}") from None


def describe_encoder(cfg: EncoderConfig) -> str:
    """A short name for tables: ``random`` or the checkpoint file name (plus branch)."""
    if cfg.checkpoint == RANDOM_ENCODER:
        return RANDOM_ENCODER
    name = Path(cfg.checkpoint).name
    return name if cfg.branch == "query" else f"{name}:{cfg.branch}"


def class_token(backbone: VisionTransformer, images: torch.Tensor) -> torch.Tensor:
    """The normalised class token of the final layer (the kNN feature)."""
    return backbone.forward_features(images)[:, 0]


class GradingModel(nn.Module):
    """ViT backbone + linear regression head on [class token, mean patch token].

    With ``freeze_backbone`` (linear probe) the backbone has no gradients and stays in eval mode.
    """

    def __init__(
        self, backbone: VisionTransformer, freeze_backbone: bool, head_init_std: float = 0.01
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.freeze_backbone = freeze_backbone
        self.head = nn.Linear(2 * backbone.embed_dim, 1)
        nn.init.normal_(self.head.weight, std=head_init_std)
        nn.init.zeros_(self.head.bias)
        if freeze_backbone:
            self.backbone.requires_grad_(False)

    def train(self, mode: bool = True) -> GradingModel:
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
        return self

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Class token concatenated with the mean of the patch tokens."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_backbone):
            tokens = self.backbone.forward_features(images)
        patches = tokens[:, self.backbone.num_prefix_tokens :]
        return torch.cat([tokens[:, 0], patches.mean(dim=1)], dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Predicted grade as a continuous score, shape (batch,)."""
        return self.head(self.features(images).float()).squeeze(1)

