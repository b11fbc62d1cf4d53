"""Learning-rate schedules as pure functions of the (fractional) epoch.

Every schedule is evaluated once per optimisation step with ``epoch = step / steps_per_epoch``,
so values change smoothly within an epoch. Epochs past the end of training are clamped to the
end value; negative epochs and inconsistent lengths raise ``ValueError``.
"""

from __future__ import annotations

from ssit.methods.schedules import check_epoch, half_cosine


def learning_rate(
    epoch: float, base_lr: float, warmup_epochs: float, total_epochs: float, min_lr: float = 0.0
) -> float:
    """Linear warm-up from 0 to ``base_lr`` over ``warmup_epochs``, then half-cosine to ``min_lr``.

    ``min_lr + (base_lr - min_lr) * 0.5 * (1 + cos(pi * t))`` with ``t`` the fraction of the
    cosine part done (DINO ends at ``min_lr`` 1e-6; 0 elsewhere).
    """
    epoch = check_epoch(epoch, total_epochs)
    if not 0 <= min_lr <= base_lr:
        raise ValueError(f"min_lr must lie in [0, base_lr={base_lr}], got {min_lr}")
    if not 0 <= warmup_epochs <= total_epochs:
        raise ValueError(
            f"warmup_epochs must lie in [0, total_epochs={total_epochs}], got {warmup_epochs}"
        )
    if epoch < warmup_epochs:
        return base_lr * epoch / warmup_epochs
    if total_epochs == warmup_epochs:
        return base_lr
    progress = (epoch - warmup_epochs) / (total_epochs - warmup_epochs)
    return min_lr + (base_lr - min_lr) * half_cosine(progress)


def scaled_learning_rate(base_lr: float, global_batch: int, reference_batch: int = 512) -> float:
    """Scale ``base_lr`` (tuned for ``reference_batch``) linearly to ``global_batch``."""
    if global_batch <= 0 or reference_batch <= 0:
        raise ValueError(
            f"batch sizes must be positive, got global_batch={global_batch}, "
            f"reference_batch={reference_batch}"
        )
    return base_lr * global_batch / reference_batch
