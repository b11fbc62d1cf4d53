"""The encoder under evaluation and the regression model built on it.

An encoder is a registered backbone (a timm ViT or CNN, ``num_classes=0``) at the grading input
size: one branch of a training checkpoint of any method, a ``.safetensors`` file written by
``ssit export``, or randomly initialised (``random``, the floor every pre-training must beat).
Its kind says which features kNN and the regression head read (:mod:`ssit.backbones.registry`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ssit.backbones import (
    BackboneConfig,
    BackboneKind,
    CheckpointError,
    backbone_kind,
    extract_backbone,
)
from ssit.evaluate.architecture import (
    EncoderError,
    EncoderSource,
    backbone_config,
    load_encoder_source,
    resolve_encoder,
)
from ssit.evaluate.config import RANDOM_ENCODER, EncoderConfig

LOGGER = logging.getLogger(__name__)


@dataclass
class Encoder:
    """A backbone network, its kind (which features to read) and the config it was built from."""

    model: nn.Module
    kind: BackboneKind
    config: BackboneConfig

    def to(self, device: torch.device | str) -> Encoder:
        """Move the network to ``device`` (in place) and return ``self``."""
        self.model.to(device)
        return self

    def pooled(self, images: torch.Tensor) -> torch.Tensor:
        """The pooled feature (ViT: class token; CNN: globally pooled map), what kNN reads."""
        return self.kind.pooled(self.model, images)


def create_encoder(cfg: EncoderConfig, source: EncoderSource | None = None) -> Encoder:
    """Build the backbone of ``cfg`` at ``cfg.img_size`` with its checkpoint's weights.

    ``source`` is the already read ``cfg.checkpoint`` (read here when not given). With
    ``backbone: auto`` the architecture recorded in the checkpoint wins over ``cfg``'s.
    """
    try:
        if source is None:
            source = load_encoder_source(cfg.checkpoint)
        resolved = resolve_encoder(cfg, source)
        backbone = backbone_config(resolved, source.recorded if source is not None else None)
        kind = backbone_kind(backbone.name)
        if source is None:
            LOGGER.info("encoder: randomly initialised %s (%s)", resolved.arch, backbone.name)
            return Encoder(kind.build(backbone), kind, backbone)
        LOGGER.info("encoder: %s branch of %s (%s %s)", cfg.branch, source.path, resolved.arch,
                    resolved.model_kwargs)
        model = extract_backbone(source.contents, backbone, resolved.branch)
        return Encoder(model, kind, backbone)
    except EncoderError:
        raise
    except (CheckpointError, ValueError, TypeError) as error:
        raise EncoderError(f"cannot build the encoder: {error}") from None


def describe_encoder(cfg: EncoderConfig) -> str:
    """A short name for tables: ``random`` or the checkpoint file name (plus branch)."""
    if cfg.checkpoint == RANDOM_ENCODER:
        return RANDOM_ENCODER
    name = Path(cfg.checkpoint).name
    return name if cfg.branch in ("auto", "query") else f"{name}:{cfg.branch}"


class GradingModel(nn.Module):
    """Backbone + linear regression head on the kind's grading features.

    ViTs give [class token, mean patch token], CNNs their pooled feature. With
    ``freeze_backbone`` (linear probe) the backbone has no gradients and stays in eval mode.
    ``feature_norm`` puts a BatchNorm without learnable scale or shift between the features and
    the head (as MAE's linear probe does), so features of any scale train at one learning rate.
    """

    def __init__(
        self, encoder: Encoder, freeze_backbone: bool, head_init_std: float = 0.01,
        feature_norm: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = encoder.model
        self.kind = encoder.kind
        self.freeze_backbone = freeze_backbone
        dim = encoder.kind.grading_dim(encoder.model)
        self.feature_norm = (nn.BatchNorm1d(dim, affine=False, eps=1e-6) if feature_norm
                             else nn.Identity())
        self.head = nn.Linear(dim, 1)
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
        """The features the head reads (no gradients into a frozen backbone)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_backbone):
            return self.kind.grading_features(self.backbone, images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Predicted grade as a continuous score, shape (batch,)."""
        return self.head(self.feature_norm(self.features(images).float())).squeeze(1)


class FeatureProbe(GradingModel):
    """A linear probe whose input is the features :meth:`encode` computed beforehand (the probe
    on cached features). Same modules and weights as :class:`GradingModel` with a frozen
    backbone; only ``forward`` reads features instead of images."""

    def __init__(self, encoder: Encoder, head_init_std: float = 0.01,
                 feature_norm: bool = False) -> None:
        super().__init__(encoder, freeze_backbone=True, head_init_std=head_init_std,
                         feature_norm=feature_norm)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """The frozen backbone's grading features of ``images``."""
        return super().features(images)

    def features(self, features: torch.Tensor) -> torch.Tensor:
        """The input itself: it already is the features."""
        return features
