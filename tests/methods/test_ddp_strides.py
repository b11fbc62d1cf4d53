"""Gradients laid out like their parameters, so DDP's buckets take them without a stride warning.

The saliency segmentor reads a feature map made from transposed patch tokens, which is
channels-last in memory; a plain 1x1 convolution then returns a channels-last weight gradient
and DDP warns "Grad strides do not match bucket view strides" on every run.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ssit.methods.heads import PointwiseConv2d, build_saliency_segmentor
from tests.gloo_ranks import run_on_ranks
from tests.methods.conftest import run_ssit, tiny_ssit, views

WORLD = 2
STRIDE_WARNING = "Grad strides do not match bucket view strides"


def token_map(batch: int = 3, grid: int = 4, dim: int = 6) -> torch.Tensor:
    """A feature map laid out as the segmentor receives it: transposed tokens after a prefix."""
    tokens = torch.randn(batch, 1 + grid * grid, dim, generator=torch.Generator().manual_seed(3))
    return tokens[:, 1:].transpose(1, 2).reshape(batch, dim, grid, grid)


@pytest.mark.parametrize("layout", ["tokens", "contiguous"])
def test_pointwise_conv_equals_a_1x1_convolution(layout: str) -> None:
    x = token_map()
    if layout == "contiguous":
        x = x.contiguous()
    torch.manual_seed(0)
    pointwise = PointwiseConv2d(6, 16)
    conv = nn.Conv2d(6, 16, kernel_size=1)
    conv.load_state_dict(pointwise.state_dict())
    assert {k: v.shape for k, v in pointwise.state_dict().items()} == {
        "weight": (16, 6, 1, 1), "bias": (16,)}
    torch.testing.assert_close(pointwise(x), conv(x))
    pointwise(x).square().sum().backward()
    conv(x).square().sum().backward()
    torch.testing.assert_close(pointwise.weight.grad, conv.weight.grad)
    torch.testing.assert_close(pointwise.bias.grad, conv.bias.grad)
    assert pointwise.weight.grad.stride() == pointwise.weight.stride()


def test_pointwise_conv_rejects_a_flat_input() -> None:
    with pytest.raises(ValueError, match=r"feature map \(B, C, H, W\)"):
        PointwiseConv2d(6, 4)(torch.zeros(2, 6))


def test_segmentor_keeps_the_released_parameter_names() -> None:
    shapes = {k: tuple(v.shape) for k, v in build_saliency_segmentor(48, 16).state_dict().items()}
    assert shapes == {"0.weight": (256, 48, 1, 1), "0.bias": (256,)}


def test_every_gradient_of_the_model_is_laid_out_like_its_parameter() -> None:
    torch.manual_seed(0)
    model = tiny_ssit()
    loss_cl, loss_ss = run_ssit(model, *views(batch=8, size=64, seed=5), momentum=0.9)
    (loss_cl + loss_ss).backward()
    mismatched = {name: (p.stride(), p.grad.stride()) for name, p in model.named_parameters()
                  if p.grad is not None and p.grad.stride() != p.stride()}
    assert not mismatched


def rank_work(rank: int) -> str:
    """Two DDP steps of a tiny SSiT; the warnings they raised, one per line."""
    torch.manual_seed(0)
    model = DistributedDataParallel(tiny_ssit())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(2):
            loss_cl, loss_ss = run_ssit(
                model, *views(batch=8, size=64, seed=10 * rank + step), momentum=0.9
            )
            optimizer.zero_grad(set_to_none=True)
            (loss_cl + loss_ss).backward()
            optimizer.step()
    return "\n".join(str(w.message) for w in caught)


@pytest.mark.slow
@pytest.mark.ddp
@pytest.mark.timeout(300)
def test_two_rank_ddp_run_shows_no_stride_warning(tmp_path: Path) -> None:
    # Two intra-op threads: with one, the CPU convolution happens to return a contiguous
    # gradient and the old layout would go unnoticed.
    for rank, messages in enumerate(run_on_ranks(rank_work, tmp_path, WORLD, threads=2)):
        assert STRIDE_WARNING not in messages, f"rank {rank}: {messages}"
