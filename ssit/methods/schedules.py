"""Schedules of the methods' own coefficients, as pure functions of the (fractional) epoch.

Evaluated once per optimisation step with ``epoch = step / steps_per_epoch``. Epochs past the end
of training are clamped to the end value; negative epochs and inconsistent lengths raise
``ValueError``.
"""

from __future__ import annotations

import math


def check_epoch(epoch: float, total_epochs: float) -> float:
    """``epoch`` clamped to ``total_epochs``; raises ``ValueError`` for impossible values."""
    if total_epochs <= 0:
        raise ValueError(f"total_epochs must be positive, got {total_epochs}")
    if epoch < 0:
        raise ValueError(f"epoch must not be negative, got {epoch}")
    return min(float(epoch), float(total_epochs))


def half_cosine(progress: float) -> float:
    """1 at progress 0, falling along half a cosine period to 0 at progress 1."""
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def ema_momentum(epoch: float, base_momentum: float, total_epochs: float) -> float:
    """Momentum-encoder EMA coefficient rising from ``base_momentum`` to 1 along a half-cosine.

    ``m(t) = 1 - 0.5 * (1 + cos(pi * t / T)) * (1 - m0)``.
    """
    epoch = check_epoch(epoch, total_epochs)
    if not 0 <= base_momentum <= 1:
        raise ValueError(f"base_momentum must lie in [0, 1], got {base_momentum}")
    return 1.0 - half_cosine(epoch / total_epochs) * (1.0 - base_momentum)


def segmentation_weight(
    epoch: float, base_weight: float, total_epochs: float, decay: bool
) -> float:
    """Weight of the saliency-segmentation loss: constant, or half-cosine from its value to 0."""
    epoch = check_epoch(epoch, total_epochs)
    if not decay:
        return base_weight
    return base_weight * half_cosine(epoch / total_epochs)
