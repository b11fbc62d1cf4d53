"""Metrics of a binary referable-DR classifier as pure numpy functions.

Labels are 0/1 (1: referable, grade >= 2) and scores are the predicted probability of 1. The
headline is the ROC AUC; sensitivity, specificity and accuracy are given at the threshold 0.5
and at the Youden point (the threshold maximising sensitivity + specificity - 1).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from ssit.evaluate.metrics import roc_auc

DEFAULT_THRESHOLD = 0.5


def _checked(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    truth = np.asarray(labels)
    values = np.asarray(scores, dtype=np.float64)
    if truth.ndim != 1 or truth.shape != values.shape:
        raise ValueError(f"labels and scores must be 1-D of equal length: {truth.shape} vs "
                         f"{values.shape}")
    if truth.size == 0:
        raise ValueError("no samples to score")
    if not np.isin(truth, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    if np.isnan(values).any():
        raise ValueError("scores contain NaN")
    return truth.astype(bool), values


def roc_curve(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False- and true-positive rates at every distinct score, and those thresholds.

    Thresholds decrease; a sample is called positive when its score is >= the threshold. The
    curve starts at (0, 0) with threshold +inf. A rate whose class is absent is NaN.
    """
    truth, values = _checked(labels, scores)
    order = np.argsort(-values, kind="mergesort")
    truth, values = truth[order], values[order]
    last_of_run = np.r_[np.flatnonzero(np.diff(values)), values.size - 1]
    true_pos = np.cumsum(truth)[last_of_run]
    false_pos = (last_of_run + 1) - true_pos
    positives, negatives = truth.sum(), (~truth).sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = np.r_[0.0, true_pos / positives]
        fpr = np.r_[0.0, false_pos / negatives]
    return fpr, tpr, np.r_[np.inf, values[last_of_run]]


def youden_threshold(labels: ArrayLike, scores: ArrayLike) -> float:
    """The score threshold with the largest Youden index (the highest one on ties)."""
    fpr, tpr, thresholds = roc_curve(labels, scores)
    index = tpr - fpr
    if np.isnan(index).all():
        return DEFAULT_THRESHOLD
    return float(thresholds[int(np.nanargmax(index))])


def operating_point(labels: ArrayLike, scores: ArrayLike, threshold: float) -> dict[str, float]:
    """Sensitivity, specificity and accuracy when scores >= ``threshold`` are called positive."""
    truth, values = _checked(labels, scores)
    called = values >= threshold
    positives, negatives = truth.sum(), (~truth).sum()
    return {
        "threshold": float(threshold),
        "sensitivity": float((called & truth).sum() / positives) if positives else float("nan"),
        "specificity": float((~called & ~truth).sum() / negatives) if negatives else float("nan"),
        "accuracy": float(np.mean(called == truth)),
    }


def binary_metrics(labels: ArrayLike, scores: ArrayLike) -> dict:
    """AUC, the operating points at 0.5 and at the Youden point, and the class counts."""
    truth, values = _checked(labels, scores)
    youden = youden_threshold(truth, values)
    at_half = operating_point(truth, values, DEFAULT_THRESHOLD)
    return {
        "auc": roc_auc(truth, values),
        "accuracy": at_half["accuracy"],
        "at_0.5": at_half,
        "at_youden": operating_point(truth, values, youden),
        "num_samples": int(truth.size),
        "num_referable": int(truth.sum()),
    }
