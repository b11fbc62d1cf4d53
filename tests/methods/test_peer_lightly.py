"""Our SimCLR and DINO losses against the ``lightly`` package's, written independently of ours.

Values and gradients must agree on random inputs, in one process and across two real gloo ranks
(where lightly gathers negatives from every rank as we do).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightly import loss as lightly_loss

from ssit.methods.dino import dino_loss, updated_center
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


CROPS, K = 4, 12


def _dino_outputs(seed: int, batch: int = BATCH) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Student rows ``(CROPS * B, K)`` crop by crop, teacher rows ``(2 * B, K)``, a centre."""
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(CROPS * batch, K, generator=generator),
            torch.randn(2 * batch, K, generator=generator),
            0.1 * torch.randn(1, K, generator=generator))


def _lightly_dino(center: torch.Tensor, teacher_temp: float) -> torch.nn.Module:
    peer = lightly_loss.DINOLoss(output_dim=K, teacher_temp=teacher_temp,
                                 warmup_teacher_temp=teacher_temp, student_temp=0.1,
                                 center_momentum=0.9)
    peer.center.copy_(center.reshape(1, 1, K))  # lightly keeps its centre as (1, 1, K)
    return peer


def _dino_both(student: torch.Tensor, teacher: torch.Tensor, center: torch.Tensor,
               teacher_temp: float, batch: int) -> dict[str, torch.Tensor]:
    """Loss, student gradient and next centre of ours and of lightly's on the same rows."""
    peer = _lightly_dino(center, teacher_temp)
    ours_in = student.clone().requires_grad_(True)
    ours = dino_loss(ours_in, teacher, center, CROPS, student_temp=0.1,
                     teacher_temp=teacher_temp)
    ours.backward()
    theirs_in = student.clone().requires_grad_(True)
    # lightly takes (teacher views, student views), each a list of (B, K) tensors
    theirs = peer(list(teacher.split(batch)), list(theirs_in.split(batch)))
    theirs.backward()
    return {"ours": ours.detach().reshape(1), "theirs": theirs.detach().reshape(1),
            "ours_grad": ours_in.grad, "theirs_grad": theirs_in.grad,
            "ours_center": updated_center(center, teacher, 0.9),
            "theirs_center": peer.center.reshape(1, K).clone()}


def _assert_dino_agrees(result: dict[str, torch.Tensor]) -> None:
    for name in ("", "_grad", "_center"):
        torch.testing.assert_close(result[f"ours{name}"], result[f"theirs{name}"],
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("teacher_temp", [0.04, 0.07])
@pytest.mark.parametrize("seed", [0, 1])
def test_dino_loss_and_centre_equal_lightly(teacher_temp: float, seed: int) -> None:
    _assert_dino_agrees(_dino_both(*_dino_outputs(seed), teacher_temp, BATCH))


def test_dino_loss_differs_from_lightly_with_another_centre() -> None:
    """The comparison can fail: a centre that is not subtracted is seen."""
    student, teacher, center = _dino_outputs(0)
    result = _dino_both(student, teacher, torch.zeros_like(center), 0.04, BATCH)
    ours = dino_loss(student, teacher, center, CROPS, student_temp=0.1, teacher_temp=0.04)
    assert abs(float(ours) - float(result["theirs"])) > 1e-3


def _rank_rows(rows: torch.Tensor, views: int, rank: int) -> torch.Tensor:
    """This rank's images of every view: rows are view by view, ``2 * BATCH`` images a view."""
    return torch.cat([view[rank * BATCH:(rank + 1) * BATCH] for view in rows.chunk(views)])


def _dino_on_rank(rank: int) -> dict[str, torch.Tensor]:
    """This rank's half of one global batch: its loss, gradient and the all-reduced centre."""
    student, teacher, center = _dino_outputs(seed=7, batch=2 * BATCH)
    return _dino_both(_rank_rows(student, CROPS, rank), _rank_rows(teacher, 2, rank), center,
                      0.04, BATCH)


@pytest.mark.ddp
def test_dino_equals_lightly_across_two_ranks(tmp_path: Path) -> None:
    results = run_on_ranks(_dino_on_rank, tmp_path)
    for result in results:
        _assert_dino_agrees(result)
    _, teacher, center = _dino_outputs(seed=7, batch=2 * BATCH)
    whole_center = updated_center(center, teacher, 0.9)
    for result in results:
        torch.testing.assert_close(result["ours_center"], whole_center, rtol=1e-5, atol=1e-6)
