"""SSiT: MoCo v3 with saliency-guided key selection and saliency segmentation (``method: ssit``).

Parameter names follow the authors' release: ``base_encoder.*`` (query ViT in timm names with
the projector as ``base_encoder.head.*``), ``momentum_encoder.*`` (its EMA copy),
``predictor.*`` and ``saliency_segmentor.*``. With ``pool=None`` and ``segmentation=False`` the
method is MoCo v3.

The backbone is any token backbone (a timm ViT or the MsSSL hybrid); SSiT reaches it only
through its :class:`~ssit.backbones.tokens.TokenAccess`. On the hybrid, key selection drops
patches of the ViT branch (``mask_cnn_pixels`` also blanks their pixels for the CNN branch) and
the segmentation head reads the ViT tokens or the Deep Learner's map (``segment_from``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ssit.backbones.config import BackboneConfig, ViTConfig
from ssit.backbones.extract import describe_backbone
from ssit.backbones.registry import create_backbone
from ssit.backbones.tokens import TOKENS, token_access
from ssit.backbones.vit import create_vit
from ssit.data.views import VIEW1, VIEW2, ViewAugmentation, ViewSpec, augmentation_with_overrides
from ssit.methods.base import Method, Pictures, check_views
from ssit.methods.config import MethodConfig, SSiTConfig
from ssit.methods.contrastive import contrastive_loss, saliency_segmentation_loss
from ssit.methods.heads import build_mlp, build_saliency_segmentor
from ssit.methods.schedules import ema_momentum, segmentation_weight
from ssit.methods.selection import (
    PoolMode,
    num_kept_patches,
    pool_saliency,
    select_patches,
)


class SSiT(Method):
    """Saliency-guided self-supervised image transformer.

    ``model([x1, x2], [m1, m2])`` takes two augmented views ``(B, 3, S, S)`` and their saliency
    maps ``(B, 1, S, S)`` in [0, 1] and returns ``{"cl": ctr(q1, k2) + ctr(q2, k1),
    "ss": bce(x1) + bce(x2)}``. The momentum encoder moves towards the query encoder by EMA in
    :meth:`before_step` (or :meth:`update_momentum_encoder`), before the keys are computed.

    ``pool=None`` lets the key encoder see every patch (MoCo v3); ``segmentation=False`` drops
    the segmentor and its loss. The maps may be ``None`` when neither uses them.

    ``backbone`` is a ready token backbone (e.g. the MsSSL hybrid); without it a timm ViT is
    built from ``arch``, ``img_size``, ``pretrained`` and ``encoder_kwargs``.
    ``mask_cnn_pixels`` blanks the dropped patches' pixels for a CNN branch;
    ``segment_from`` names the backbone's dense map the segmentation head reads.
    ``view_augmentations`` are the two views' recipes (the paper's by default).
    """

    def __init__(
        self,
        arch: str = "vit_small_patch16_224",
        img_size: int = 224,
        mask_ratio: float = 0.25,
        temperature: float = 0.2,
        saliency_threshold: float = 0.5,
        pool: PoolMode | None = "max",
        proj_dim: int = 256,
        mlp_dim: int = 4096,
        segmentation: bool = True,
        pretrained: bool = False,
        encoder_kwargs: Mapping[str, Any] | None = None,
        momentum: float = 0.99,
        w_cl: float = 1.0,
        w_ss: float = 10.0,
        ss_decay: bool = False,
        backbone: nn.Module | None = None,
        mask_cnn_pixels: bool = False,
        segment_from: str = TOKENS,
        view_augmentations: tuple[ViewAugmentation, ViewAugmentation] = (VIEW1, VIEW2),
    ) -> None:
        super().__init__()
        if pool not in ("max", "avg", None):
            raise ValueError(f"pool must be 'max', 'avg' or None, got {pool!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if not 0 <= saliency_threshold <= 1:
            raise ValueError(f"saliency_threshold must lie in [0, 1], got {saliency_threshold}")
        self.arch = arch
        self.mask_ratio = mask_ratio
        self.temperature = temperature
        self.saliency_threshold = saliency_threshold
        self.pool = pool
        self.base_momentum = momentum
        self.w_cl = w_cl
        self.w_ss = w_ss
        self.ss_decay = ss_decay
        self.mask_cnn_pixels = mask_cnn_pixels
        self.segment_from = segment_from

        if backbone is None:
            backbone = create_vit(arch, img_size, pretrained, encoder_kwargs)
        self.backbone_access = token_access(backbone)
        self.backbone_access.check(backbone)
        self.base_encoder = backbone
        self.img_size: int = self.backbone_access.img_size(backbone)
        self.patch_size: int = self.backbone_access.patch_size(backbone)
        self.grid_size: tuple[int, int] = self.backbone_access.grid_size(backbone)
        if mask_cnn_pixels and not self.backbone_access.can_blank_pixels(backbone):
            raise ValueError("mask_cnn_pixels needs a backbone with a CNN branch")
        if mask_cnn_pixels and pool is None:
            raise ValueError("mask_cnn_pixels needs key selection (pool 'max' or 'avg')")
        segment_shape = self.backbone_access.dense_shape(backbone, segment_from)
        num_patches = self.grid_size[0] * self.grid_size[1]
        self.num_kept: int = (
            num_patches if pool is None else num_kept_patches(num_patches, mask_ratio)
        )

        feature_dim = int(backbone.num_features)
        self.base_encoder.head = build_mlp(3, feature_dim, mlp_dim, proj_dim)
        self.momentum_encoder: nn.Module = copy.deepcopy(self.base_encoder)
        self.momentum_encoder.requires_grad_(False)
        self.predictor = build_mlp(2, proj_dim, mlp_dim, proj_dim)
        self.saliency_segmentor = (
            build_saliency_segmentor(*segment_shape) if segmentation else None
        )
        with_map = pool is not None or segmentation
        self.views: tuple[ViewSpec, ...] = tuple(
            ViewSpec(augmentation, with_map=with_map) for augmentation in view_augmentations
        )
        if len(self.views) != 2:
            raise ValueError(f"SSiT takes two views, got {len(self.views)} augmentations")
        self.loss_names = ("cl", "ss") if segmentation else ("cl",)

    @property
    def segmentation(self) -> bool:
        """Whether the saliency-segmentation head and loss are in use."""
        return self.saliency_segmentor is not None

    @torch.no_grad()
    def update_momentum_encoder(self, momentum: float) -> None:
        """EMA step ``p_m = m * p_m + (1 - m) * p_q`` over backbone and projector parameters."""
        if not 0 <= momentum <= 1:
            raise ValueError(f"momentum must lie in [0, 1], got {momentum}")
        key_params = list(self.momentum_encoder.parameters())
        query_params = [p.detach() for p in self.base_encoder.parameters()]
        torch._foreach_mul_(key_params, momentum)
        torch._foreach_add_(key_params, query_params, alpha=1 - momentum)

    def before_step(self, epoch: float, total_epochs: float) -> dict[str, float]:
        """EMA step of the momentum encoder with the cosine momentum schedule at ``epoch``."""
        momentum = ema_momentum(epoch, self.base_momentum, total_epochs)
        self.update_momentum_encoder(momentum)
        return {"momentum": momentum}

    def loss_weights(self, epoch: float, total_epochs: float) -> dict[str, float]:
        """``w_cl`` and the (optionally cosine-decayed) segmentation weight ``w_ss``."""
        weights = {"cl": self.w_cl}
        if self.segmentation:
            weights["ss"] = segmentation_weight(epoch, self.w_ss, total_epochs, self.ss_decay)
        return weights

    def forward(
        self, images: list[torch.Tensor], maps: list[torch.Tensor | None]
    ) -> dict[str, torch.Tensor]:
        """The contrastive loss ``cl`` and, with segmentation, the segmentation loss ``ss``."""
        self._check_inputs(images, maps)
        batch = torch.cat(images)
        m1, m2 = maps
        both_maps = torch.cat([m1, m2]) if m1 is not None and m2 is not None else None

        # Both views go through each encoder in one batch; the BatchNorm heads see one view at a
        # time, as they would with one encoder call per view.
        features, dense = self.backbone_access.query(
            self.base_encoder, batch, self.segment_from if self.segmentation else None
        )
        q1, q2 = (self.predictor(self.base_encoder.head(f)) for f in features.chunk(2))

        with torch.no_grad():
            key_features = self.key_features(batch, both_maps)
            k1, k2 = (self.momentum_encoder.head(f) for f in key_features.chunk(2))

        losses = {"cl": contrastive_loss(q1, k2, self.temperature)
                  + contrastive_loss(q2, k1, self.temperature)}
        if self.saliency_segmentor is None:
            return losses
        logits = self.saliency_segmentor(dense)
        losses["ss"] = sum(
            saliency_segmentation_loss(view_logits, view_maps, self.saliency_threshold)
            for view_logits, view_maps in zip(logits.chunk(2), both_maps.chunk(2), strict=True)
        )
        return losses

    def saliency_picture(self, image: torch.Tensor, saliency: torch.Tensor) -> Pictures | None:
        """Up to four images, their thresholded maps and the predicted saliency."""
        if self.saliency_segmentor is None:
            return None
        count = min(4, image.shape[0])
        logits = self.segment(image[:count])
        target = (saliency[:count] > self.saliency_threshold).float()
        return image[:count], target, torch.sigmoid(logits.float())

    def segment(self, x: torch.Tensor) -> torch.Tensor:
        """Saliency-segmentation logits ``(B, 1, H, W)`` of the query encoder for images ``x``."""
        if self.saliency_segmentor is None:
            raise RuntimeError("this SSiT model was built without a segmentation head")
        self._check_images(x, "x")
        _, dense = self.backbone_access.query(self.base_encoder, x, self.segment_from)
        return self.saliency_segmentor(dense)

    def key_features(self, images: torch.Tensor, maps: torch.Tensor | None) -> torch.Tensor:
        """Pooled features ``(B, D)`` of the momentum encoder before its projector.

        With saliency pooling the encoder's transformer sees only the patches chosen from
        ``maps`` (see :mod:`ssit.methods.selection`); with ``pool=None`` it sees every patch.
        """
        encoder = self.momentum_encoder
        if self.pool is not None and maps is None:
            raise ValueError("saliency maps are needed to select the key patches")
        if self.pool is None:
            return self.backbone_access.keys(encoder, images, None)
        scores = pool_saliency(maps.float(), self.patch_size, self.pool)
        kept = select_patches(scores, self.num_kept)
        return self.backbone_access.keys(encoder, images, kept, self.mask_cnn_pixels)

    def _check_images(self, x: torch.Tensor, name: str) -> None:
        expected = (3, self.img_size, self.img_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"{name} must have shape (B, {', '.join(map(str, expected))}), got {tuple(x.shape)}"
            )

    def _check_inputs(
        self, images: list[torch.Tensor], maps: list[torch.Tensor | None]
    ) -> None:
        if len(images) != 2 or len(maps) != 2:
            raise ValueError(f"SSiT needs two views, got {len(images)} images and "
                             f"{len(maps)} maps")
        for index, image in enumerate(images, start=1):
            self._check_images(image, f"x{index}")
        if images[0].shape != images[1].shape:
            raise ValueError(f"views differ in shape: {tuple(images[0].shape)} and "
                             f"{tuple(images[1].shape)}")
        if (maps[0] is None) != (maps[1] is None):
            raise ValueError("give saliency maps for both views or for neither")
        if maps[0] is None and (self.pool is not None or self.segmentation):
            raise ValueError("saliency maps are needed for key selection and segmentation")
        check_views(self, images, maps)

    def extra_repr(self) -> str:
        return (
            f"arch={self.arch}, img_size={self.img_size}, pool={self.pool}, "
            f"kept_patches={self.num_kept}, temperature={self.temperature}, "
            f"saliency_threshold={self.saliency_threshold}, segment_from={self.segment_from}, "
            f"mask_cnn_pixels={self.mask_cnn_pixels}"
        )


def build_ssit(method: MethodConfig, backbone: BackboneConfig) -> SSiT:
    """The SSiT (or MoCo v3) method of a ``method: ssit`` section on a token backbone."""
    if not isinstance(method, SSiTConfig) or not backbone.uses_tokens:
        raise ValueError("method ssit needs an SSiTConfig and a token backbone (vit, "
                         "msssl_hybrid)")
    return SSiT(
        arch=describe_backbone(backbone) if isinstance(backbone, ViTConfig) else backbone.name,
        img_size=backbone.img_size,
        mask_ratio=method.mask_ratio,
        temperature=method.temperature,
        saliency_threshold=method.saliency_threshold,
        pool=method.pool,
        proj_dim=method.proj_dim,
        mlp_dim=method.mlp_dim,
        segmentation=method.segmentation,
        momentum=method.momentum,
        w_cl=method.w_cl,
        w_ss=method.w_ss,
        ss_decay=method.ss_decay,
        backbone=create_backbone(backbone),
        mask_cnn_pixels=method.mask_cnn_pixels,
        segment_from=method.segment_from,
        view_augmentations=(
            augmentation_with_overrides(VIEW1, method.view1_augmentation),
            augmentation_with_overrides(VIEW2, method.view2_augmentation),
        ),
    )
