"""Patch-token access: what a token-based method (SSiT) asks of its backbone.

A token backbone cuts the image into square patches on a fixed grid. A method may ask it for

- the patch size, the patch grid and the input size;
- the query pass: the pooled feature (what the projector reads) and, for a segmentation head,
  one of its dense maps with the factor that brings the map to pixel resolution;
- the key pass on a subset of patches: the pooled feature when only the patches at
  ``patch_indices`` are fed to the transformer (after the position embedding is added).

The access objects hold no state; the network is passed to every call, so they survive
deep copies, SyncBatchNorm conversion and DDP wrapping of the model that owns the network.
:data:`VIT_TOKENS` serves timm Vision Transformers; the MsSSL hybrid brings its own
(:mod:`ssit.backbones.msssl`). :func:`token_access` finds the one that fits a network.
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

TOKENS = "tokens"
"""The dense source made of the transformer's final patch tokens on the patch grid."""


def keep_patch_tokens(
    tokens: torch.Tensor, patch_indices: torch.Tensor, num_prefix_tokens: int
) -> torch.Tensor:
    """The prefix tokens followed by the patch tokens at ``patch_indices`` ``(B, K)``."""
    if patch_indices.shape[0] != tokens.shape[0]:
        raise ValueError(
            f"{patch_indices.shape[0]} index rows for a batch of {tokens.shape[0]} token sequences"
        )
    prefix, patches = tokens[:, :num_prefix_tokens], tokens[:, num_prefix_tokens:]
    index = patch_indices.unsqueeze(-1).expand(-1, -1, tokens.shape[-1])
    return torch.cat([prefix, torch.gather(patches, 1, index)], dim=1)


def patch_map(patch_tokens: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
    """Patch tokens ``(B, h*w, D)`` in row-major order as a feature map ``(B, D, h, w)``."""
    batch, length, dim = patch_tokens.shape
    height, width = grid_size
    if length != height * width:
        raise ValueError(f"{length} patch tokens do not fill a {height}x{width} grid")
    return patch_tokens.transpose(1, 2).reshape(batch, dim, height, width)


def vit_tokens(
    vit: VisionTransformer, images: torch.Tensor, patch_indices: torch.Tensor | None = None
) -> torch.Tensor:
    """Final (normed) tokens of ``vit``; with ``patch_indices`` only those patches go in."""
    if patch_indices is None:
        return vit.forward_features(images)
    tokens = vit._pos_embed(vit.patch_embed(images))
    tokens = keep_patch_tokens(tokens, patch_indices, vit.num_prefix_tokens)
    return vit.norm(vit.blocks(vit.norm_pre(tokens)))


class TokenAccess:
    """How a token-based method reads one family of backbones (see the module docstring)."""

    def check(self, model: nn.Module) -> None:
        """Raise ``ValueError`` when ``model`` cannot serve a token-based method."""

    def patch_size(self, model: nn.Module) -> int:
        raise NotImplementedError

    def grid_size(self, model: nn.Module) -> tuple[int, int]:
        raise NotImplementedError

    def img_size(self, model: nn.Module) -> int:
        return self.patch_size(model) * self.grid_size(model)[0]

    def dense_sources(self, model: nn.Module) -> tuple[str, ...]:
        """Names of the dense maps a segmentation head may read."""
        return (TOKENS,)

    def dense_shape(self, model: nn.Module, source: str) -> tuple[int, int]:
        """``(channels, factor)`` of a dense map: ``factor`` times its side is the input side."""
        raise NotImplementedError

    def can_blank_pixels(self, model: nn.Module) -> bool:
        """Whether the key pass can also blank the dropped patches' pixels (a CNN branch)."""
        return False

    def query(
        self, model: nn.Module, images: torch.Tensor, source: str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The pooled feature ``(B, D)`` and the dense map ``source`` (None when not asked)."""
        raise NotImplementedError

    def keys(
        self,
        model: nn.Module,
        images: torch.Tensor,
        patch_indices: torch.Tensor | None,
        blank_pixels: bool = False,
    ) -> torch.Tensor:
        """The pooled feature when only ``patch_indices`` (None: every patch) are seen."""
        raise NotImplementedError

    def _check_source(self, model: nn.Module, source: str) -> None:
        if source not in self.dense_sources(model):
            raise ValueError(f"{type(model).__name__} has no dense map {source!r} "
                             f"(it has: {', '.join(self.dense_sources(model))})")


class ViTTokenAccess(TokenAccess):
    """timm ViTs: class-token feature; the dense map is the final patch tokens on the grid."""

    def check(self, model: nn.Module) -> None:
        if model.dynamic_img_size:
            raise ValueError("SSiT needs a fixed input size (dynamic_img_size=False)")

    def patch_size(self, model: nn.Module) -> int:
        return int(model.patch_embed.patch_size[0])

    def grid_size(self, model: nn.Module) -> tuple[int, int]:
        height, width = model.patch_embed.grid_size
        return int(height), int(width)

    def dense_shape(self, model: nn.Module, source: str) -> tuple[int, int]:
        self._check_source(model, source)
        return int(model.embed_dim), self.patch_size(model)

    def query(
        self, model: nn.Module, images: torch.Tensor, source: str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        tokens = vit_tokens(model, images)
        pooled = model.forward_head(tokens, pre_logits=True)
        if source is None:
            return pooled, None
        self._check_source(model, source)
        return pooled, patch_map(tokens[:, model.num_prefix_tokens :], self.grid_size(model))

    def keys(
        self,
        model: nn.Module,
        images: torch.Tensor,
        patch_indices: torch.Tensor | None,
        blank_pixels: bool = False,
    ) -> torch.Tensor:
        if blank_pixels:
            raise ValueError("a plain ViT has no CNN branch whose pixels could be blanked")
        return model.forward_head(vit_tokens(model, images, patch_indices), pre_logits=True)


VIT_TOKENS = ViTTokenAccess()


def token_access(model: nn.Module) -> TokenAccess:
    """The access that fits ``model``; ``ValueError`` for backbones without patch tokens."""
    if isinstance(model, VisionTransformer):
        return VIT_TOKENS
    access = getattr(type(model), "token_access", None)
    if isinstance(access, TokenAccess):
        return access
    raise ValueError(f"{type(model).__name__} gives no patch tokens; token-based methods need "
                     "a ViT or the MsSSL hybrid")
