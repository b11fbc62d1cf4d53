"""Losses of the SSiT objective: MoCo v3 contrastive loss and saliency segmentation BCE."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_from_all_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every rank along dim 0, in rank order (no gradient).

    Returns the tensor unchanged (detached) when torch.distributed is not in use.
    """
    tensor = tensor.detach()
    if not _distributed():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def contrastive_loss(q: torch.Tensor, k: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo v3 InfoNCE loss of local queries against the keys of all ranks, times ``2T``.

    ``q`` and ``k`` are ``(N, C)``; both are L2-normalised, ``k`` is gathered from all ranks
    without gradient, and the positive of local row ``n`` is global column ``n + N * rank``.
    Computed in float32 whatever the autocast dtype.
    """
    if q.dim() != 2 or q.shape != k.shape:
        raise ValueError(
            f"queries and keys must both be (N, C), got {tuple(q.shape)} and {tuple(k.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    with torch.autocast(q.device.type, enabled=False):
        q = F.normalize(q.float(), dim=1)
        k = gather_from_all_ranks(F.normalize(k.float(), dim=1))
        logits = q @ k.T / temperature
        rank = dist.get_rank() if _distributed() else 0
        labels = torch.arange(q.shape[0], device=q.device) + q.shape[0] * rank
        return F.cross_entropy(logits, labels) * (2 * temperature)


def saliency_segmentation_loss(
    logits: torch.Tensor, saliency: torch.Tensor, threshold: float
) -> torch.Tensor:
    """Binary cross-entropy of per-pixel logits against the mask ``saliency > threshold``.

    ``logits`` and ``saliency`` are ``(B, 1, H, W)``; saliency lies in [0, 1]. Mean over pixels.
    """
    if logits.shape != saliency.shape:
        raise ValueError(
            f"segmentation logits {tuple(logits.shape)} and saliency maps "
            f"{tuple(saliency.shape)} differ in shape"
        )
    target = (saliency > threshold).to(torch.float32)
    return F.binary_cross_entropy_with_logits(logits.float(), target)
