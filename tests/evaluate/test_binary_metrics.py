from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from ssit.evaluate.binary_metrics import (
    binary_metrics,
    operating_point,
    roc_curve,
    youden_threshold,
)
from ssit.evaluate.roc_plot import draw_roc_curves


def test_hand_worked_example() -> None:
    labels = [0, 0, 1, 1, 0, 1]
    scores = [0.1, 0.6, 0.4, 0.8, 0.3, 0.9]
    # thresholds 0.9 0.8 0.6 0.4 0.3 0.1 -> (fpr, tpr): (0,1/3) (0,2/3) (1/3,2/3) (1/3,1) ...
    fpr, tpr, thresholds = roc_curve(labels, scores)
    assert np.allclose(fpr, [0, 0, 0, 1 / 3, 1 / 3, 2 / 3, 1])
    assert np.allclose(tpr, [0, 1 / 3, 2 / 3, 2 / 3, 1, 1, 1])
    assert thresholds.tolist() == [np.inf, 0.9, 0.8, 0.6, 0.4, 0.3, 0.1]
    assert youden_threshold(labels, scores) == 0.4
    point = operating_point(labels, scores, 0.5)
    assert point == {"threshold": 0.5, "sensitivity": 2 / 3, "specificity": 2 / 3,
                     "accuracy": 4 / 6}
    metrics = binary_metrics(labels, scores)
    assert metrics["auc"] == pytest.approx(8 / 9)
    assert metrics["at_youden"]["sensitivity"] == 1.0
    assert metrics["num_referable"] == 3


@pytest.mark.parametrize("seed", range(5))
def test_against_scikit_learn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.random(300) * 0.6 + labels * 0.3, 2)  # ties included
    fpr, tpr, thresholds = roc_curve(labels, scores)
    sk_fpr, sk_tpr, sk_thresholds = sk_roc_curve(labels, scores, drop_intermediate=False)
    assert np.allclose(fpr, sk_fpr) and np.allclose(tpr, sk_tpr)
    assert np.allclose(thresholds[1:], sk_thresholds[1:])
    assert binary_metrics(labels, scores)["auc"] == pytest.approx(roc_auc_score(labels, scores))
    best = int(np.argmax(sk_tpr - sk_fpr))
    assert youden_threshold(labels, scores) == pytest.approx(sk_thresholds[best])


def test_bad_input_and_one_class() -> None:
    with pytest.raises(ValueError, match="0 or 1"):
        binary_metrics([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="equal length"):
        binary_metrics([0, 1], [0.1])
    with pytest.raises(ValueError, match="NaN"):
        binary_metrics([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError, match="no samples"):
        binary_metrics([], [])
    only_negatives = binary_metrics([0, 0, 0], [0.2, 0.7, 0.1])
    assert np.isnan(only_negatives["auc"]) and np.isnan(only_negatives["at_0.5"]["sensitivity"])
    assert only_negatives["at_0.5"]["specificity"] == pytest.approx(2 / 3)


def test_roc_png(tmp_path) -> None:
    labels = np.array([0, 1, 0, 1, 1, 0])
    path = draw_roc_curves(labels, {"teacher": labels * 0.5 + 0.2, "student": np.linspace(0, 1, 6)},
                           tmp_path / "roc.png", "test")
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape[1] > 300
    assert ((image == (31, 119, 180)).all(axis=2)).sum() > 100  # the first curve is drawn
    with pytest.raises(ValueError, match="score arrays"):
        draw_roc_curves(labels, {}, tmp_path / "none.png")
