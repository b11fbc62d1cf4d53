"""Contrastive and segmentation losses against hand-worked values."""

from __future__ import annotations

import math

import pytest
import torch

from ssit.methods.contrastive import contrastive_loss, saliency_segmentation_loss


def test_contrastive_loss_on_a_hand_worked_3x3_example() -> None:
    # T = 0.5, so the factor 2T is 1 and logits are cosine similarities times 2.
    # Keys normalise to the identity: k_hat = [e1, e2, e3].
    q = torch.tensor([[3.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, -2.0]], requires_grad=True)
    k = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 0.5]])
    # Row 0: q_hat = e1, logits [2, 0, 0], positive column 0:
    #   CE = -log(e^2 / (e^2 + 2)) = log(1 + 2 e^-2) = 0.2395447662
    # Row 1: q_hat = (e1 + e2)/sqrt2, cosines [1/sqrt2, 1/sqrt2, 0], logits [a, a, 0] with
    #   a = (1/sqrt2)/0.5 = sqrt2, positive column 1:
    #   CE = log(2 e^a + 1) - a = log(2 + e^-a) = log(2.2431167344) = 0.8078662981
    # Row 2: q_hat = -e3, logits [0, 0, -2], positive column 2:
    #   CE = log(1 + 1 + e^-2) + 2 = 0.7586236757 + 2 = 2.7586236757
    # Mean = (0.2395447662 + 0.8078662981 + 2.7586236757) / 3 = 1.2686782467; times 2T = 1.
    expected = (
        math.log(1 + 2 * math.exp(-2))
        + math.log(2 + math.exp(-math.sqrt(2)))
        + math.log(2 + math.exp(-2))
        + 2
    ) / 3
    assert expected == pytest.approx(1.2686782467, abs=1e-9)
    loss = contrastive_loss(q, k, temperature=0.5)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_contrastive_loss_scales_by_two_temperatures() -> None:
    # Identical unit queries and keys, T = 0.2: logits diag 5, off-diagonal 0.
    # CE = log(1 + 2 e^-5) per row; loss = 0.4 * log(1 + 2 e^-5) = 0.0053533.
    eye = torch.eye(3)
    loss = contrastive_loss(eye, eye, temperature=0.2)
    assert loss.item() == pytest.approx(0.4 * math.log(1 + 2 * math.exp(-5)), abs=1e-7)


def test_contrastive_loss_sends_no_gradient_to_keys() -> None:
    q = torch.randn(4, 8, requires_grad=True)
    k = torch.randn(4, 8, requires_grad=True)
    contrastive_loss(q, k, 0.2).backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert k.grad is None


def test_contrastive_loss_is_float32_under_low_precision_inputs() -> None:
    q, k = torch.randn(4, 8).bfloat16(), torch.randn(4, 8).bfloat16()
    loss = contrastive_loss(q, k, 0.2)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(contrastive_loss(q.float(), k.float(), 0.2).item())


def test_contrastive_loss_is_exact_float32_under_autocast() -> None:
    generator = torch.Generator().manual_seed(0)
    q, k = torch.randn(64, 256, generator=generator), torch.randn(64, 256, generator=generator)
    expected = contrastive_loss(q, k, 0.2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = contrastive_loss(q, k, 0.2)
    assert loss.dtype == torch.float32
    assert loss.item() == expected.item()


def test_contrastive_loss_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="N, C"):
        contrastive_loss(torch.randn(4, 8), torch.randn(3, 8), 0.2)
    with pytest.raises(ValueError, match="N, C"):
        contrastive_loss(torch.randn(4), torch.randn(4), 0.2)
    with pytest.raises(ValueError, match="temperature"):
        contrastive_loss(torch.randn(4, 8), torch.randn(4, 8), 0.0)


def test_segmentation_loss_on_hand_worked_pixels() -> None:
    # Threshold 0.5: saliency [0.2, 0.7, 0.5] gives targets [0, 1, 0] (0.5 is not above).
    # BCE with logits [0, 2, -1]: log 2 = 0.6931472, log(1 + e^-2) = 0.1269280,
    # log(1 + e^-1) = 0.3132617; mean = 1.1333369 / 3 = 0.3777790.
    logits = torch.tensor([0.0, 2.0, -1.0]).view(1, 1, 1, 3)
    saliency = torch.tensor([0.2, 0.7, 0.5]).view(1, 1, 1, 3)
    loss = saliency_segmentation_loss(logits, saliency, threshold=0.5)
    assert loss.item() == pytest.approx(0.3777790, abs=1e-6)
    # A lower threshold turns the 0.5 pixel positive: log(1 + e^1) replaces log(1 + e^-1).
    lower = saliency_segmentation_loss(logits, saliency, threshold=0.4)
    expected = (math.log(2) + math.log(1 + math.exp(-2)) + math.log(1 + math.e)) / 3
    assert lower.item() == pytest.approx(expected, abs=1e-6)


def test_segmentation_loss_rejects_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="shape"):
        saliency_segmentation_loss(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5), 0.5)
