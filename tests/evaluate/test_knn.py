from __future__ import annotations

import math

import pytest
import torch

from ssit.evaluate.knn import knn_classify, knn_evaluate, knn_grade, select_k
from ssit.evaluate.metrics import quadratic_weighted_kappa


def clustered(num_per_grade: int, dims: int, seed: int, spread: float = 0.05):
    """One tight cluster of features per grade around orthogonal directions."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.eye(5, dims) * 3.0
    labels = torch.arange(5).repeat_interleave(num_per_grade)
    features = centres[labels] + spread * torch.randn(len(labels), dims, generator=generator)
    return features, labels


def test_weighted_vote_by_hand():
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[1.0, 0.0]])
    predicted, probs = knn_classify(bank, labels, query, k=2, temperature=0.5, num_classes=3)
    # neighbours: bank[0] (cos 1, grade 0) and bank[2] (cos 1/sqrt 2, grade 1)
    w0, w1 = math.exp(1 / 0.5), math.exp((1 / math.sqrt(2)) / 0.5)
    assert probs[0].tolist() == pytest.approx([w0 / (w0 + w1), w1 / (w0 + w1), 0.0])
    assert predicted.tolist() == [0]


def test_separable_features_are_graded_perfectly():
    train, train_labels = clustered(20, 16, seed=0)
    test, test_labels = clustered(10, 16, seed=1)
    for k in (5, 10, 20):
        predicted, probs = knn_classify(train, train_labels, test, k, 0.07, chunk_size=7)
        assert predicted.tolist() == test_labels.tolist()
        assert torch.allclose(probs.sum(dim=1), torch.ones(len(test)))
    results, predictions = knn_evaluate((train, train_labels), (test, test_labels), [5, 10, 20],
                                        0.07)
    assert all(result["kappa"] == 1.0 and result["referable_auc"] == 1.0
               for result in results.values())
    assert all(predicted.tolist() == test_labels.tolist()
               for predicted, _ in predictions.values())


def test_shuffled_labels_grade_near_chance():
    train, _ = clustered(100, 16, seed=0, spread=1.0)
    generator = torch.Generator().manual_seed(2)
    random_labels = torch.randint(0, 5, (len(train),), generator=generator)
    test, _ = clustered(60, 16, seed=1, spread=1.0)
    test_labels = torch.randint(0, 5, (len(test),), generator=generator)
    kappas = [
        quadratic_weighted_kappa(test_labels, knn_classify(train, random_labels, test, k, 0.07)[0])
        for k in (5, 10, 20)
    ]
    assert all(abs(kappa) < 0.2 for kappa in kappas), kappas


def test_k_larger_than_the_bank_is_reduced():
    bank, labels = clustered(1, 8, seed=0)
    predicted, _ = knn_classify(bank, labels, bank, k=20, temperature=0.07)
    assert predicted.tolist() == labels.tolist()


def test_bad_inputs():
    bank, labels = clustered(2, 8, seed=0)
    with pytest.raises(ValueError, match="feature sizes differ"):
        knn_classify(bank, labels, torch.zeros(1, 4), 5, 0.07)
    with pytest.raises(ValueError, match="one label per training feature"):
        knn_classify(bank, labels[:-1], bank, 5, 0.07)
    with pytest.raises(ValueError, match="k must be >= 1"):
        knn_classify(bank, labels, bank, 0, 0.07)
    with pytest.raises(ValueError, match="2-D"):
        knn_classify(bank[0], labels, bank, 5, 0.07)


def test_select_k_prefers_best_then_smallest():
    results = {5: {"kappa": 0.5}, 10: {"kappa": 0.7}, 20: {"kappa": 0.7}}
    assert select_k(results) == 10
    assert select_k({5: {"kappa": float("nan")}, 10: {"kappa": -0.1}}) == 10


@pytest.mark.parametrize("ks", [(1, 3), (3, 1)])
def test_grading_reports_the_test_predictions_of_the_k_chosen_on_validation(ks):
    # grade 0 along x, grade 4 twice along y; temperature 1
    train = (torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 2.0]]), torch.tensor([0, 4, 4]))
    leaning_x, leaning_y, on_x = [1.0, 0.5], [0.5, 1.0], [1.0, 0.0]
    # leaning_x: cos 2/sqrt(5) to the grade-0 image, 1/sqrt(5) to both grade-4 images, so k=1
    # votes grade 0 and k=3 grade 4 (e^0.894 = 2.45 < 2 e^0.447 = 2.93); leaning_y is grade 4
    # for both k; on_x is grade 0 for both k (e^1 = 2.72 > 2 e^0 = 2).
    val = (torch.tensor([leaning_x, leaning_y]), torch.tensor([0, 4]))
    test = (torch.tensor([leaning_x, leaning_y, on_x]), torch.tensor([4, 4, 0]))
    graded = knn_grade(train, val, test, ks, temperature=1.0)
    # validation: k=1 grades [0, 4] (kappa 1), k=3 grades [4, 4] (kappa 0); on test k=3 is the
    # better one (grades [4, 4, 0], all right) but k is chosen on validation
    assert graded.val[1]["kappa"] == 1.0 and graded.val[3]["kappa"] == 0.0
    assert graded.test[1]["accuracy"] == pytest.approx(2 / 3) and graded.test[3]["accuracy"] == 1.0
    assert graded.selected_k == 1
    assert graded.test_predicted.tolist() == [0, 4, 0]
    one_hot = {0: [1.0, 0.0, 0.0, 0.0, 0.0], 4: [0.0, 0.0, 0.0, 0.0, 1.0]}
    assert graded.test_probs.tolist() == [one_hot[0], one_hot[4], one_hot[0]]
