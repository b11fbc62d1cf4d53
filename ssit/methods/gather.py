"""All-gather with gradients: embeddings of every rank, for losses whose negatives span ranks.

SimCLR's NT-Xent and GraVIS's Smooth-AP rank each local query against the embeddings of the
whole global batch, and the gradient of every rank's loss must reach the embeddings where they
were computed. :func:`gather_with_gradients` concatenates a tensor from all ranks in rank order;
its backward pass sums the incoming gradients over ranks (all-reduce) and hands each rank the
rows it contributed. With DDP averaging parameter gradients over ranks, the mean over ranks of
the per-rank losses then has the gradients of one process on the concatenated batch.

(``torch.distributed.nn.functional.all_gather`` does the same but is deprecated; the all-reduce
backward here works on every backend, gloo included.)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def distributed() -> bool:
    """Whether a process group with more than one rank is in use."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _GatherRows(torch.autograd.Function):
    """Forward: concatenation over ranks along dim 0; backward: summed gradient, local rows."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor)
        ctx.rows = tensor.shape[0]
        ctx.offset = tensor.shape[0] * dist.get_rank()
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.offset : ctx.offset + ctx.rows]


def gather_with_gradients(tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``(rows of every rank concatenated in rank order, index of this rank's first row)``.

    Every rank must pass a tensor of the same shape. Gradients flow back to each rank's own
    rows, summed over the losses of all ranks. Without a process group (or with one rank) the
    tensor itself comes back with offset 0.
    """
    if not distributed():
        return tensor, 0
    return _GatherRows.apply(tensor), tensor.shape[0] * dist.get_rank()
