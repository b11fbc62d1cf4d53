"""Our losses against the ``lightly`` package's, an implementation written independently of ours.

Values and gradients must agree on random inputs, in one process and across two real gloo ranks
(where lightly gathers negatives from every rank as we do).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightly import loss as lightly_loss

from ssit.methods.simclr import nt_xent_loss
from tests.gloo_ranks import run_on_ranks

BATCH, DIM = 6, 16


def _projections(seed: int, batch: int = BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, DIM, generator=generator),
            torch.randn(batch, DIM, generator=generator))


def _loss_and_gradients(loss_fn, z1: torch.Tensor, z2: torch.Tensor):
    z1 = z1.clone().requires_grad_(True)
    z2 = z2.clone().requires_grad_(True)
    loss = loss_fn(z1, z2)
    loss.backward()
    return loss.detach(), z1.grad, z2.grad


@pytest.mark.parametrize("temperature", [0.07, 0.1, 0.5])
@pytest.mark.parametrize("seed", [0, 1])
def test_nt_xent_equals_lightly(temperature: float, seed: int) -> None:
    z1, z2 = _projections(seed)
    peer = lightly_loss.NTXentLoss(temperature=temperature)
    ours = _loss_and_gradients(lambda a, b: nt_xent_loss(a, b, temperature), z1, z2)
    theirs = _loss_and_gradients(peer, z1, z2)
    for mine, other in zip(ours, theirs, strict=True):
        torch.testing.assert_close(mine, other, rtol=1e-5, atol=1e-6)


def test_nt_xent_differs_from_lightly_at_another_temperature() -> None:
    """The comparison can fail: a wrong temperature is seen."""
    z1, z2 = _projections(0)
    ours = nt_xent_loss(z1, z2, 0.1)
    theirs = lightly_loss.NTXentLoss(temperature=0.2)(z1, z2)
    assert abs(float(ours) - float(theirs)) > 1e-2


def _both_losses_on_rank(rank: int) -> dict[str, torch.Tensor]:
    """This rank's half of one global batch through our loss and lightly's gathering one."""
    z1, z2 = _projections(seed=7, batch=2 * BATCH)
    rows = slice(rank * BATCH, (rank + 1) * BATCH)
    peer = lightly_loss.NTXentLoss(temperature=0.1, gather_distributed=True)
    ours = _loss_and_gradients(lambda a, b: nt_xent_loss(a, b, 0.1), z1[rows], z2[rows])
    theirs = _loss_and_gradients(peer, z1[rows], z2[rows])
    return {"ours": torch.stack([ours[0]]), "ours_grad1": ours[1], "ours_grad2": ours[2],
            "theirs": torch.stack([theirs[0]]), "theirs_grad1": theirs[1],
            "theirs_grad2": theirs[2]}


@pytest.mark.ddp
def test_nt_xent_equals_lightly_across_two_ranks(tmp_path: Path) -> None:
    results = run_on_ranks(_both_losses_on_rank, tmp_path)
    for rank in results:
        torch.testing.assert_close(rank["ours"], rank["theirs"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(rank["ours_grad1"], rank["theirs_grad1"],
                                   rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(rank["ours_grad2"], rank["theirs_grad2"],
                                   rtol=1e-5, atol=1e-6)
    z1, z2 = _projections(seed=7, batch=2 * BATCH)
    whole = nt_xent_loss(z1, z2, 0.1)
    mean_over_ranks = torch.cat([rank["ours"] for rank in results]).mean()
    torch.testing.assert_close(mean_over_ranks, whole, rtol=1e-5, atol=1e-6)
