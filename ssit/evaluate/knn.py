"""Weighted k-nearest-neighbour grading on the encoder's pooled features (ViT: class token).

Each query votes over its k most cosine-similar training images, every neighbour weighing
``exp(similarity / T)`` for its grade; the prediction is the grade with the largest vote and the
vote shares serve as class probabilities (their grade >= 2 part is the referable-DR score).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader

from ssit.evaluate.encoder import Encoder
from ssit.evaluate.inference import collect_outputs
from ssit.evaluate.metrics import NUM_GRADES, REFERABLE_GRADE, grading_metrics

LOGGER = logging.getLogger(__name__)


def knn_classify(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    query_features: torch.Tensor,
    k: int,
    temperature: float,
    num_classes: int = NUM_GRADES,
    chunk_size: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted class and class probabilities of each query (cosine similarity, weighted vote).

    ``k`` larger than the training set is reduced to its size.
    """
    if train_features.ndim != 2 or query_features.ndim != 2:
        raise ValueError("features must be 2-D (samples, dims)")
    if train_features.shape[1] != query_features.shape[1]:
        raise ValueError(f"feature sizes differ: {train_features.shape[1]} vs "
                         f"{query_features.shape[1]}")
    if train_labels.shape != (train_features.shape[0],) or train_features.shape[0] == 0:
        raise ValueError("need one label per training feature and at least one of each")
    if k < 1 or temperature <= 0:
        raise ValueError(f"k must be >= 1 and temperature > 0, got k={k}, T={temperature}")
    k = min(k, train_features.shape[0])
    bank = torch.nn.functional.normalize(train_features.float(), dim=1)
    labels = train_labels.long()
    probabilities = []
    for start in range(0, query_features.shape[0], chunk_size):
        queries = torch.nn.functional.normalize(query_features[start:start + chunk_size].float(),
                                                dim=1)
        similarity, index = (queries @ bank.T).topk(k, dim=1)
        weights = (similarity / temperature).exp()
        votes = torch.zeros(queries.shape[0], num_classes, device=queries.device)
        votes.scatter_add_(1, labels[index], weights)
        probabilities.append(votes / votes.sum(dim=1, keepdim=True))
    probs = torch.cat(probabilities) if probabilities else torch.zeros(0, num_classes)
    return probs.argmax(dim=1), probs


def extract_pooled_features(
    encoder: Encoder, loader: DataLoader, device: torch.device, precision: str,
    desc: str = "features",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features (float32, on CPU) and grades of every image of ``loader``."""
    return collect_outputs(encoder.model, loader, device, precision, forward=encoder.pooled,
                           desc=desc)


def knn_evaluate(
    train: tuple[torch.Tensor, torch.Tensor],
    evaluated: tuple[torch.Tensor, torch.Tensor],
    ks: Sequence[int],
    temperature: float,
) -> tuple[dict[int, dict], dict[int, tuple[torch.Tensor, torch.Tensor]]]:
    """Grading metrics of the kNN classifier for each k on (features, grades) ``evaluated``,
    and each k's predictions (predicted grades, class probabilities)."""
    results, predictions = {}, {}
    for k in ks:
        predicted, probs = knn_classify(train[0], train[1], evaluated[0], k, temperature)
        referable = probs[:, REFERABLE_GRADE:].sum(dim=1)
        results[k] = grading_metrics(evaluated[1].numpy(), predicted.numpy(), referable.numpy())
        predictions[k] = predicted, probs
    return results, predictions


def select_k(val_results: dict[int, dict]) -> int:
    """The k with the highest validation kappa (the smallest k on ties; NaN counts as worst)."""
    def score(k: int) -> float:
        kappa = val_results[k]["kappa"]
        return -np.inf if np.isnan(kappa) else kappa

    return max(sorted(val_results), key=score)


@dataclass
class KnnGrading:
    """Metrics of every k on validation and test, the selected k and its test predictions."""

    val: dict[int, dict]
    test: dict[int, dict]
    selected_k: int
    test_predicted: torch.Tensor
    test_probs: torch.Tensor


def knn_grade(
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    ks: Sequence[int],
    temperature: float,
) -> KnnGrading:
    """kNN grading of ``test`` for every k, the k chosen by :func:`select_k` on ``val``.

    Each set is a (features, grades) pair; the test predictions are those of the chosen k.
    """
    val_results, _ = knn_evaluate(train, val, ks, temperature)
    test_results, test_predictions = knn_evaluate(train, test, ks, temperature)
    best = select_k(val_results)
    LOGGER.info("kNN: k=%d has the best validation kappa (%.4f)", best,
                val_results[best]["kappa"])
    return KnnGrading(val_results, test_results, best, *test_predictions[best])
