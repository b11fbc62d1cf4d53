from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from ssit.evaluate.metrics import (
    accuracy,
    average_ranks,
    confusion_matrix,
    grades_from_scores,
    grading_metrics,
    kappa_from_confusion,
    per_grade_recall,
    quadratic_weighted_kappa,
    referable_auc,
    roc_auc,
)


def test_kappa_two_grades_by_hand():
    # rows true, cols predicted; N=50, chance disagreement 10 + 15 = 25, observed 5 + 10 = 15
    assert kappa_from_confusion([[20, 5], [10, 15]]) == pytest.approx(1 - 15 / 25)


def test_kappa_three_grades_by_hand():
    # weights 0, 1/4, 1; observed 0.25 + 0.25 + 1 = 1.5; chance 0.25 * 4.2 + 2.4 = 3.45
    matrix = [[2, 1, 0], [0, 2, 1], [1, 0, 3]]
    assert kappa_from_confusion(matrix) == pytest.approx(13 / 23)
    true = [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
    pred = [0, 0, 1, 1, 1, 2, 0, 2, 2, 2]
    assert quadratic_weighted_kappa(true, pred, num_classes=3) == pytest.approx(13 / 23)


def test_kappa_extremes():
    assert quadratic_weighted_kappa([0, 1, 2, 3, 4], [0, 1, 2, 3, 4]) == 1.0
    assert quadratic_weighted_kappa([0, 4], [4, 0]) == pytest.approx(-1.0)
    assert np.isnan(quadratic_weighted_kappa([2, 2, 2], [2, 2, 2]))


def test_kappa_weights_variants():
    matrix = [[2, 1, 0], [0, 2, 1], [1, 0, 3]]
    assert kappa_from_confusion(matrix, "none") == pytest.approx(
        cohen_kappa_score([0, 0, 0, 1, 1, 1, 2, 2, 2, 2], [0, 0, 1, 1, 1, 2, 0, 2, 2, 2])
    )
    assert kappa_from_confusion(matrix, "linear") == pytest.approx(
        cohen_kappa_score(
            [0, 0, 0, 1, 1, 1, 2, 2, 2, 2], [0, 0, 1, 1, 1, 2, 0, 2, 2, 2], weights="linear"
        )
    )
    with pytest.raises(ValueError, match="unknown kappa weights"):
        kappa_from_confusion(matrix, "cubic")


@pytest.mark.parametrize("seed", range(5))
def test_kappa_matches_sklearn_on_random_labels(seed):
    rng = np.random.default_rng(seed)
    true = rng.integers(0, 5, size=200)
    noisy = np.clip(true + rng.integers(-2, 3, size=200), 0, 4)
    for pred in (noisy, rng.integers(0, 5, size=200)):
        expected = cohen_kappa_score(true, pred, weights="quadratic", labels=range(5))
        assert quadratic_weighted_kappa(true, pred) == pytest.approx(expected, abs=1e-12)


def test_regression_thresholds():
    scores = [-3.0, -0.5, 0.49, 0.5, 1.49, 1.5, 2.5, 3.49, 3.5, 10.0]
    assert grades_from_scores(scores).tolist() == [0, 0, 0, 1, 1, 2, 3, 3, 4, 4]
    assert grades_from_scores([0.2, 0.7], thresholds=[0.0, 0.6]).tolist() == [0, 1]
    with pytest.raises(ValueError, match="strictly increasing"):
        grades_from_scores([1.0], thresholds=[0.5, 0.5])
    with pytest.raises(ValueError, match="NaN"):
        grades_from_scores([float("nan")])


def test_confusion_accuracy_recall():
    true = [0, 0, 1, 2, 2, 2]
    pred = [0, 1, 1, 2, 2, 0]
    matrix = confusion_matrix(true, pred, num_classes=3)
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    assert accuracy(true, pred) == pytest.approx(4 / 6)
    recall = per_grade_recall(true, pred, num_classes=5)
    assert recall[:3].tolist() == pytest.approx([0.5, 1.0, 2 / 3])
    assert np.isnan(recall[3:]).all()


def test_bad_grades_are_rejected():
    with pytest.raises(ValueError, match="differ in length"):
        confusion_matrix([0, 1], [0])
    with pytest.raises(ValueError, match=r"must lie in 0\.\.4"):
        confusion_matrix([0, 5], [0, 1])
    with pytest.raises(ValueError, match="integer grades"):
        accuracy([0.5], [0])
    with pytest.raises(ValueError, match="no samples"):
        quadratic_weighted_kappa([], [])
    with pytest.raises(ValueError, match="one-dimensional"):
        accuracy([[0, 1]], [[0, 1]])


def test_average_ranks_share_ties():
    assert average_ranks([3.0, 1.0, 3.0, 2.0]).tolist() == [3.5, 1.0, 3.5, 2.0]


def test_auc_by_hand_with_ties():
    # positive/negative pairs: 1 + 1 + 0.5 (tie) + 1 out of 4
    assert roc_auc([1, 1, 0, 0], [0.8, 0.5, 0.5, 0.2]) == pytest.approx(0.875)
    assert np.isnan(roc_auc([1, 1], [0.1, 0.2]))
    with pytest.raises(ValueError, match="equal length"):
        roc_auc([1, 0], [0.1])


@pytest.mark.parametrize("seed", range(3))
def test_referable_auc_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    grades = rng.integers(0, 5, size=300)
    # coarse scores force many ties
    scores = np.round(grades + rng.normal(0, 1.5, size=300))
    expected = roc_auc_score(grades >= 2, scores)
    assert referable_auc(grades, scores) == pytest.approx(expected, abs=1e-12)


def test_grading_metrics_dict():
    result = grading_metrics([0, 1, 2, 3, 4], [0, 1, 2, 3, 3], [0.0, 1.0, 2.0, 3.0, 3.4])
    assert result["num_samples"] == 5
    assert result["accuracy"] == pytest.approx(0.8)
    assert result["referable_auc"] == pytest.approx(1.0)
    assert result["confusion_matrix"][4][3] == 1
    assert 0.9 < result["kappa"] < 1.0
