"""Training schedules as pure functions of the (fractional) epoch.

Every schedule is evaluated once per optimisation step with ``epoch = step / steps_per_epoch``,
so values change smoothly within an epoch. Epochs past the end of training are clamped to the
end value; negative epochs and inconsistent lengths raise ``ValueError``.
"""

from __future__ import annotations

import math


def _check_epoch(epoch: float, total_epochs: float) -> float:
    if total_epochs <= 0:
        raise ValueError(f"total_epochs must be positive, got {total_epochs}")
    if epoch < 0:
        raise ValueError(f"epoch must not be negative, got {epoch}")
    return min(float(epoch), float(total_epochs))


def _half_cosine(progress: float) -> float:
    """1 at progress 0, falling along half a cosine period to 0 at progress 1."""
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def learning_rate(epoch: float, base_lr: float, warmup_epochs: float, total_epochs: float) -> float:
    """Linear warm-up from 0 to ``base_lr`` over ``warmup_epochs``, then half-cosine to 0."""
    epoch = _check_epoch(epoch, total_epochs)
    if not 0 <= warmup_epochs <= total_epochs:
        raise ValueError(
            f"warmup_epochs must lie in [0, total_epochs={total_epochs}], got {warmup_epochs}"
        )
    if epoch < warmup_epochs:
        return base_lr * epoch / warmup_epochs
    if total_epochs == warmup_epochs:
        return base_lr
    return base_lr * _half_cosine((epoch - warmup_epochs) / (total_epochs - warmup_epochs))


def ema_momentum(epoch: float, base_momentum: float, total_epochs: float) -> float:
    """Momentum-encoder EMA coefficient rising from ``base_momentum`` to 1 along a half-cosine.

    ``m(t) = 1 - 0.5 * (1 + cos(pi * t / T)) * (1 - m0)``.
    """
    epoch = _check_epoch(epoch, total_epochs)
    if not 0 <= base_momentum <= 1:
        raise ValueError(f"base_momentum must lie in [0, 1], got {base_momentum}")
    return 1.0 - _half_cosine(epoch / total_epochs) * (1.0 - base_momentum)


def segmentation_weight(
    epoch: float, base_weight: float, total_epochs: float, decay: bool
) -> float:
    """Weight of the saliency-segmentation loss: constant, or half-cosine from its value to 0."""
    epoch = _check_epoch(epoch, total_epochs)
    if not decay:
        return base_weight
    return base_weight * _half_cosine(epoch / total_epochs)


def scaled_learning_rate(base_lr: float, global_batch: int, reference_batch: int = 512) -> float:
    """Scale ``base_lr`` (tuned for ``reference_batch``) linearly to ``global_batch``."""
    if global_batch <= 0 or reference_batch <= 0:
        raise ValueError(
            f"batch sizes must be positive, got global_batch={global_batch}, "
            f"reference_batch={reference_batch}"
        )
    return base_lr * global_batch / reference_batch
