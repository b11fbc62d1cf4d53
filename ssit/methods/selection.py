"""Saliency-guided choice of the patches the key (momentum) encoder sees.

Each view's saliency map is pooled to the patch grid (kernel = stride = patch size), patches are
ranked by their pooled value and the top ``int((1 - mask_ratio) * num_patches)`` are kept, as in
the authors' implementation (147 of 196 patches for ViT-S/16 at 224 with mask ratio 0.25).

Order of the kept tokens: the prefix tokens (class token first) keep their places, then the
kept patches follow in descending pooled saliency; patches of equal saliency are ordered by
patch index (row-major over the grid), lowest first. An all-zero map therefore keeps the first
patches in index order. The order does not change the key encoder's class-token output (the
blocks are permutation-equivariant once position embeddings are added), but it is fixed so that
runs are reproducible.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

PoolMode = Literal["max", "avg"]


def num_kept_patches(num_patches: int, mask_ratio: float) -> int:
    """Number of patches the key encoder keeps: ``int((1 - mask_ratio) * num_patches)``."""
    if not 0 <= mask_ratio < 1:
        raise ValueError(f"mask_ratio must lie in [0, 1), got {mask_ratio}")
    kept = int((1 - mask_ratio) * num_patches)
    if kept < 1:
        raise ValueError(
            f"mask_ratio {mask_ratio} keeps no patch of {num_patches}; lower the mask ratio"
        )
    return kept


def pool_saliency(saliency: torch.Tensor, patch_size: int, mode: PoolMode) -> torch.Tensor:
    """Pool ``(B, 1, H, W)`` saliency maps to one score per patch: ``(B, H/p * W/p)``."""
    if saliency.dim() != 4 or saliency.shape[1] != 1:
        raise ValueError(f"saliency maps must have shape (B, 1, H, W), got {tuple(saliency.shape)}")
    height, width = saliency.shape[-2:]
    if height % patch_size or width % patch_size:
        raise ValueError(
            f"saliency map size {height}x{width} is not divisible by the patch size {patch_size}"
        )
    if mode == "max":
        pooled = F.max_pool2d(saliency, kernel_size=patch_size, stride=patch_size)
    elif mode == "avg":
        pooled = F.avg_pool2d(saliency, kernel_size=patch_size, stride=patch_size)
    else:
        raise ValueError(f"saliency pooling must be 'max' or 'avg', got {mode!r}")
    return pooled.flatten(1)


def select_patches(scores: torch.Tensor, num_keep: int) -> torch.Tensor:
    """Indices ``(B, num_keep)`` of the highest-scoring patches, in descending score order.

    Ties are broken by patch index (lowest first), so the result is deterministic.
    """
    if scores.dim() != 2:
        raise ValueError(f"patch scores must have shape (B, N), got {tuple(scores.shape)}")
    if not 1 <= num_keep <= scores.shape[1]:
        raise ValueError(f"cannot keep {num_keep} of {scores.shape[1]} patches")
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    return order[:, :num_keep]
