"""Grading metrics as pure numpy functions.

Grades are integers 0-4 (no DR, mild, moderate, severe NPDR, proliferative DR). The headline
metric is the quadratic weighted Cohen's kappa; accuracy, the confusion matrix, per-grade recall
and the AUC for referable DR (grade >= 2) are reported beside it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

NUM_GRADES = 5
REGRESSION_THRESHOLDS = (-0.5, 0.5, 1.5, 2.5, 3.5)
REFERABLE_GRADE = 2


def _as_grades(values: ArrayLike, num_classes: int, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.equal(np.mod(array, 1), 0)):
            raise ValueError(f"{name} must hold integer grades")
        array = array.astype(np.int64)
    if array.size and (array.min() < 0 or array.max() >= num_classes):
        raise ValueError(
            f"{name} must lie in 0..{num_classes - 1}, found {array.min()}..{array.max()}"
        )
    return array.astype(np.int64)


def _paired_grades(
    y_true: ArrayLike, y_pred: ArrayLike, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    true = _as_grades(y_true, num_classes, "y_true")
    pred = _as_grades(y_pred, num_classes, "y_pred")
    if true.shape != pred.shape:
        raise ValueError(f"y_true and y_pred differ in length: {true.size} vs {pred.size}")
    if true.size == 0:
        raise ValueError("no samples to score")
    return true, pred


def grades_from_scores(
    scores: ArrayLike, thresholds: Sequence[float] = REGRESSION_THRESHOLDS
) -> np.ndarray:
    """Turn regression outputs into grades: grade i when thresholds[i] <= score < thresholds[i+1].

    Scores below the first threshold map to grade 0 and scores at or above the last to the last
    grade, so the default thresholds amount to rounding (halves go up) clipped to 0..4.
    """
    values = np.asarray(scores, dtype=np.float64)
    edges = np.asarray(thresholds, dtype=np.float64)
    if edges.ndim != 1 or edges.size == 0 or np.any(np.diff(edges) <= 0):
        raise ValueError(f"thresholds must be strictly increasing, got {list(thresholds)}")
    if np.isnan(values).any():
        raise ValueError("scores contain NaN")
    above = np.searchsorted(edges, values, side="right")
    return np.maximum(above - 1, 0).astype(np.int64)


def confusion_matrix(
    y_true: ArrayLike, y_pred: ArrayLike, num_classes: int = NUM_GRADES
) -> np.ndarray:
    """Counts with true grades as rows and predicted grades as columns."""
    true, pred = _paired_grades(y_true, y_pred, num_classes)
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (true, pred), 1)
    return matrix


def kappa_from_confusion(matrix: ArrayLike, weights: str = "quadratic") -> float:
    """Cohen's kappa of a confusion matrix; NaN when chance disagreement is zero.

    weights: "quadratic" ((i-j)^2 / (K-1)^2), "linear" (|i-j| / (K-1)) or "none" (0/1).
    """
    observed = np.asarray(matrix, dtype=np.float64)
    if observed.ndim != 2 or observed.shape[0] != observed.shape[1] or observed.shape[0] < 2:
        raise ValueError(f"confusion matrix must be square with K >= 2, got {observed.shape}")
    size = observed.shape[0]
    i, j = np.indices((size, size))
    if weights == "quadratic":
        penalty = (i - j) ** 2 / (size - 1) ** 2
    elif weights == "linear":
        penalty = np.abs(i - j) / (size - 1)
    elif weights == "none":
        penalty = (i != j).astype(np.float64)
    else:
        raise ValueError(f"unknown kappa weights {weights!r}; use quadratic, linear or none")
    total = observed.sum()
    if total <= 0:
        raise ValueError("confusion matrix is empty")
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / total
    chance = float((penalty * expected).sum())
    if chance == 0.0:
        return float("nan")
    return 1.0 - float((penalty * observed).sum()) / chance


def quadratic_weighted_kappa(
    y_true: ArrayLike, y_pred: ArrayLike, num_classes: int = NUM_GRADES
) -> float:
    """Quadratic weighted Cohen's kappa between true and predicted grades."""
    return kappa_from_confusion(confusion_matrix(y_true, y_pred, num_classes), "quadratic")


def accuracy(y_true: ArrayLike, y_pred: ArrayLike, num_classes: int = NUM_GRADES) -> float:
    """Fraction of exactly right grades."""
    true, pred = _paired_grades(y_true, y_pred, num_classes)
    return float(np.mean(true == pred))


def per_grade_recall(
    y_true: ArrayLike, y_pred: ArrayLike, num_classes: int = NUM_GRADES
) -> np.ndarray:
    """Recall of each grade (diagonal over row sums); NaN for grades absent from y_true."""
    matrix = confusion_matrix(y_true, y_pred, num_classes).astype(np.float64)
    support = matrix.sum(axis=1)
    recall = np.full(num_classes, np.nan)
    present = support > 0
    recall[present] = np.diag(matrix)[present] / support[present]
    return recall


def average_ranks(values: ArrayLike) -> np.ndarray:
    """1-based ranks of values, tied values sharing the mean of the ranks they span."""
    array = np.asarray(values, dtype=np.float64)
    _, inverse, counts = np.unique(array, return_inverse=True, return_counts=True)
    last_rank = np.cumsum(counts)
    mean_rank = last_rank - (counts - 1) / 2.0
    return mean_rank[inverse.reshape(-1)]


def roc_auc(positive: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve from ranks (Mann-Whitney U); NaN if one class is missing."""
    labels = np.asarray(positive).astype(bool)
    values = np.asarray(scores, dtype=np.float64)
    if labels.ndim != 1 or labels.shape != values.shape:
        raise ValueError(f"labels and scores must be 1-D of equal length: {labels.shape} vs "
                         f"{values.shape}")
    if np.isnan(values).any():
        raise ValueError("scores contain NaN")
    num_pos = int(labels.sum())
    num_neg = labels.size - num_pos
    if num_pos == 0 or num_neg == 0:
        return float("nan")
    ranks = average_ranks(values)
    u_statistic = ranks[labels].sum() - num_pos * (num_pos + 1) / 2.0
    return float(u_statistic / (num_pos * num_neg))


def referable_auc(
    y_true: ArrayLike, scores: ArrayLike, referable_grade: int = REFERABLE_GRADE
) -> float:
    """AUC of continuous scores for referable DR (true grade >= referable_grade)."""
    true = _as_grades(y_true, NUM_GRADES, "y_true")
    return roc_auc(true >= referable_grade, scores)


def grading_metrics(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    referable_scores: ArrayLike,
    num_classes: int = NUM_GRADES,
) -> dict:
    """All grading metrics as a JSON-ready dict (NaN where a metric is undefined)."""
    matrix = confusion_matrix(y_true, y_pred, num_classes)
    return {
        "kappa": kappa_from_confusion(matrix, "quadratic"),
        "accuracy": float(np.trace(matrix) / matrix.sum()),
        "referable_auc": referable_auc(y_true, referable_scores),
        "per_grade_recall": per_grade_recall(y_true, y_pred, num_classes).tolist(),
        "confusion_matrix": matrix.tolist(),
        "num_samples": int(matrix.sum()),
    }
