"""SSiT: MoCo v3 with saliency-guided key selection and saliency segmentation.

Parameter names follow the authors' release: ``base_encoder.*`` (query ViT in timm names with
the projector as ``base_encoder.head.*``), ``momentum_encoder.*`` (its EMA copy),
``predictor.*`` and ``saliency_segmentor.*``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ssit.model.backbone import create_vit
from ssit.model.heads import build_mlp, build_saliency_segmentor, tokens_to_grid
from ssit.model.losses import contrastive_loss, saliency_segmentation_loss
from ssit.model.selection import (
    PoolMode,
    gather_tokens,
    num_kept_patches,
    pool_saliency,
    select_patches,
)


class SSiT(nn.Module):
    """Saliency-guided self-supervised image transformer.

    ``loss_cl, loss_ss = model(x1, x2, m1, m2, momentum)`` takes two augmented views
    ``(B, 3, S, S)`` and their saliency maps ``(B, 1, S, S)`` in [0, 1]. It first moves the
    momentum encoder towards the query encoder by EMA, then returns the symmetric contrastive
    loss ``ctr(q1, k2) + ctr(q2, k1)`` and the segmentation loss ``bce(x1) + bce(x2)``.

    ``pool=None`` lets the key encoder see every patch (MoCo v3); ``segmentation=False`` drops
    the segmentor and returns a zero ``loss_ss``. The maps may be ``None`` when neither uses them.
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
    ) -> None:
        super().__init__()
        if pool not in ("max", "avg", None):
            raise ValueError(f"pool must be 'max', 'avg' or None, got {pool!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if not 0 <= saliency_threshold <= 1:
            raise ValueError(f"saliency_threshold must lie in [0, 1], got {saliency_threshold}")
        self.arch = arch
        self.img_size = img_size
        self.mask_ratio = mask_ratio
        self.temperature = temperature
        self.saliency_threshold = saliency_threshold
        self.pool = pool

        self.base_encoder = create_vit(arch, img_size, pretrained, encoder_kwargs)
        if self.base_encoder.dynamic_img_size:
            raise ValueError("SSiT needs a fixed input size (dynamic_img_size=False)")
        self.patch_size: int = self.base_encoder.patch_embed.patch_size[0]
        self.grid_size: tuple[int, int] = tuple(self.base_encoder.patch_embed.grid_size)
        num_patches = self.grid_size[0] * self.grid_size[1]
        self.num_kept: int = (
            num_patches if pool is None else num_kept_patches(num_patches, mask_ratio)
        )

        embed_dim = self.base_encoder.embed_dim
        self.base_encoder.head = build_mlp(3, embed_dim, mlp_dim, proj_dim)
        self.momentum_encoder: VisionTransformer = copy.deepcopy(self.base_encoder)
        self.momentum_encoder.requires_grad_(False)
        self.predictor = build_mlp(2, proj_dim, mlp_dim, proj_dim)
        self.saliency_segmentor = (
            build_saliency_segmentor(embed_dim, self.patch_size) if segmentation else None
        )

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

    def forward(
        self,
        x1: torch.Tensor,
        x2: torch.Tensor,
        m1: torch.Tensor | None,
        m2: torch.Tensor | None,
        momentum: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Update the momentum encoder, then return ``(loss_cl, loss_ss)`` for the two views."""
        self._check_inputs(x1, x2, m1, m2)
        images = torch.cat([x1, x2])
        maps = torch.cat([m1, m2]) if m1 is not None and m2 is not None else None

        # Both views go through each encoder in one batch; the BatchNorm heads see one view at a
        # time, as they would with one encoder call per view.
        tokens = self.base_encoder.forward_features(images)
        features = self.base_encoder.forward_head(tokens, pre_logits=True)
        q1, q2 = (self.predictor(self.base_encoder.head(f)) for f in features.chunk(2))

        with torch.no_grad():
            self.update_momentum_encoder(momentum)
            key_features = self.key_features(images, maps)
            k1, k2 = (self.momentum_encoder.head(f) for f in key_features.chunk(2))

        loss_cl = contrastive_loss(q1, k2, self.temperature) + contrastive_loss(
            q2, k1, self.temperature
        )
        if self.saliency_segmentor is None or maps is None:
            return loss_cl, loss_cl.new_zeros(())
        logits = self._segment_tokens(tokens)
        loss_ss = sum(
            saliency_segmentation_loss(view_logits, view_maps, self.saliency_threshold)
            for view_logits, view_maps in zip(logits.chunk(2), maps.chunk(2), strict=True)
        )
        return loss_cl, loss_ss

    def segment(self, x: torch.Tensor) -> torch.Tensor:
        """Saliency-segmentation logits ``(B, 1, H, W)`` of the query encoder for images ``x``."""
        if self.saliency_segmentor is None:
            raise RuntimeError("this SSiT model was built without a segmentation head")
        self._check_images(x, "x")
        return self._segment_tokens(self.base_encoder.forward_features(x))

    def _segment_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        patch_tokens = tokens[:, self.base_encoder.num_prefix_tokens :]
        return self.saliency_segmentor(tokens_to_grid(patch_tokens, self.grid_size))

    def key_features(self, images: torch.Tensor, maps: torch.Tensor | None) -> torch.Tensor:
        """Class-token features ``(B, D)`` of the momentum encoder before its projector.

        With saliency pooling the encoder sees only the patches chosen from ``maps`` (see
        :mod:`ssit.model.selection`); with ``pool=None`` it sees every patch.
        """
        encoder = self.momentum_encoder
        if self.pool is not None and maps is None:
            raise ValueError("saliency maps are needed to select the key patches")
        if self.pool is None:
            return encoder.forward_head(encoder.forward_features(images), pre_logits=True)
        tokens = encoder._pos_embed(encoder.patch_embed(images))
        scores = pool_saliency(maps.float(), self.patch_size, self.pool)
        kept = select_patches(scores, self.num_kept)
        tokens = gather_tokens(tokens, kept, encoder.num_prefix_tokens)
        tokens = encoder.norm(encoder.blocks(encoder.norm_pre(tokens)))
        return encoder.forward_head(tokens, pre_logits=True)

    def _check_images(self, x: torch.Tensor, name: str) -> None:
        expected = (3, self.img_size, self.img_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"{name} must have shape (B, {', '.join(map(str, expected))}), got {tuple(x.shape)}"
            )

    def _check_inputs(
        self,
        x1: torch.Tensor,
        x2: torch.Tensor,
        m1: torch.Tensor | None,
        m2: torch.Tensor | None,
    ) -> None:
        self._check_images(x1, "x1")
        self._check_images(x2, "x2")
        if x1.shape != x2.shape:
            raise ValueError(f"views differ in shape: {tuple(x1.shape)} and {tuple(x2.shape)}")
        if (m1 is None) != (m2 is None):
            raise ValueError("give saliency maps for both views or for neither")
        if m1 is None:
            if self.pool is not None or self.segmentation:
                raise ValueError("saliency maps are needed for key selection and segmentation")
            return
        expected = (x1.shape[0], 1, self.img_size, self.img_size)
        for name, saliency in (("m1", m1), ("m2", m2)):
            if tuple(saliency.shape) != expected:
                raise ValueError(f"{name} must have shape {expected}, got {tuple(saliency.shape)}")

    def extra_repr(self) -> str:
        return (
            f"arch={self.arch}, img_size={self.img_size}, pool={self.pool}, "
            f"kept_patches={self.num_kept}, temperature={self.temperature}, "
            f"saliency_threshold={self.saliency_threshold}"
        )
