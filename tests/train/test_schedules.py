"""Schedules against hand-worked values at warm-up start, warm-up end, middle and end."""

from __future__ import annotations

import math

import pytest

from ssit.methods.schedules import ema_momentum, segmentation_weight
from ssit.train.schedules import learning_rate, scaled_learning_rate

# Paper setting: base lr 1e-3, 40 warm-up epochs, 300 epochs in all.
LR, WARMUP, TOTAL = 1e-3, 40, 300


@pytest.mark.parametrize(
    ("epoch", "expected"),
    [
        (0, 0.0),  # warm-up starts at 0
        (10, 2.5e-4),  # a quarter of the warm-up: 1e-3 * 10 / 40
        (0.5, 1.25e-5),  # fractional epoch inside warm-up: 1e-3 * 0.5 / 40
        (40, 1e-3),  # warm-up end: cosine at progress 0 gives the base value
        (170, 5e-4),  # middle of the cosine: (170 - 40) / 260 = 1/2, 0.5 * (1 + cos(pi/2))
        (105, 1e-3 * 0.5 * (1 + math.cos(math.pi / 4))),  # a quarter: 8.5355e-4
        (300, 0.0),  # end
        (350, 0.0),  # past the end: clamped
    ],
)
def test_learning_rate(epoch: float, expected: float) -> None:
    assert learning_rate(epoch, LR, WARMUP, TOTAL) == pytest.approx(expected, abs=1e-15)


def test_learning_rate_is_continuous_at_warmup_end() -> None:
    before = learning_rate(40 - 1e-9, LR, WARMUP, TOTAL)
    after = learning_rate(40 + 1e-9, LR, WARMUP, TOTAL)
    assert before == pytest.approx(after, rel=1e-9)


@pytest.mark.parametrize(
    ("epoch", "expected"),
    [
        (5, 2.5e-4),  # warm-up is unchanged: 5e-4 * 5 / 10
        (10, 5e-4),  # warm-up end: the peak
        (55, 1e-6 + (5e-4 - 1e-6) * 0.5),  # cosine middle: (55 - 10) / 90 = 1/2
        (100, 1e-6),  # end: min_lr, DINO's 1e-6
        (120, 1e-6),  # clamped
    ],
)
def test_learning_rate_ends_at_min_lr(epoch: float, expected: float) -> None:
    assert learning_rate(epoch, 5e-4, 10, 100, min_lr=1e-6) == pytest.approx(expected, abs=1e-15)


@pytest.mark.parametrize("min_lr", [-1e-6, 2e-3])
def test_min_lr_outside_zero_to_base_is_refused(min_lr: float) -> None:
    with pytest.raises(ValueError, match="min_lr must lie in"):
        learning_rate(50, LR, WARMUP, TOTAL, min_lr=min_lr)


def test_learning_rate_without_warmup_starts_at_base() -> None:
    assert learning_rate(0, LR, 0, TOTAL) == LR
    assert learning_rate(TOTAL, LR, 0, TOTAL) == pytest.approx(0.0, abs=1e-18)


@pytest.mark.parametrize(
    ("epoch", "expected"),
    [
        (0, 0.99),  # m0
        (75, 1 - 0.5 * (1 + math.cos(math.pi / 4)) * 0.01),  # 0.99146447
        (150, 0.995),  # middle: 1 - 0.5 * 0.01
        (300, 1.0),  # end
        (301.5, 1.0),  # clamped
    ],
)
def test_ema_momentum(epoch: float, expected: float) -> None:
    assert ema_momentum(epoch, 0.99, TOTAL) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    ("epoch", "decay", "expected"),
    [
        (0, True, 10.0),
        (150, True, 5.0),  # middle: 10 * 0.5 * (1 + cos(pi/2))
        (300, True, 0.0),
        (150, False, 10.0),
        (300, False, 10.0),
    ],
)
def test_segmentation_weight(epoch: float, decay: bool, expected: float) -> None:
    assert segmentation_weight(epoch, 10.0, TOTAL, decay) == pytest.approx(expected, abs=1e-12)


def test_scaled_learning_rate() -> None:
    assert scaled_learning_rate(1e-3, 512) == pytest.approx(1e-3)
    assert scaled_learning_rate(1e-3, 128) == pytest.approx(2.5e-4)
    assert scaled_learning_rate(1.5e-4, 4096, reference_batch=256) == pytest.approx(2.4e-3)


@pytest.mark.parametrize(
    "call",
    [
        lambda: learning_rate(-0.1, LR, WARMUP, TOTAL),
        lambda: learning_rate(1, LR, 400, TOTAL),
        lambda: learning_rate(1, LR, -1, TOTAL),
        lambda: learning_rate(1, LR, 0, 0),
        lambda: ema_momentum(1, 1.5, TOTAL),
        lambda: ema_momentum(-1, 0.99, TOTAL),
        lambda: segmentation_weight(1, 10.0, -5, True),
        lambda: scaled_learning_rate(1e-3, 0),
    ],
)
def test_bad_arguments_raise(call) -> None:
    with pytest.raises(ValueError):
        call()
