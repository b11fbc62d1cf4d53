"""One grading job: dataset + encoder + protocol -> metrics, written to an output folder.

``run_grading(cfg, out_dir)`` is what the launcher submits (wrapped in :class:`GradingJob` so
that a preempted job requeues itself and resumes from its last finished epoch). The folder
receives ``config.yaml``, ``split.csv``, ``grade.log``, ``results.json``, ``predictions.csv``,
``confusion.png`` and, for the trained protocols, ``best.pt`` and ``last.pt``.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import logging
import random
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import submitit
import torch
from torch.utils.data import DataLoader, TensorDataset

from ssit.config import save_config
from ssit.evaluate.architecture import resolve_encoder
from ssit.evaluate.batchnorm import batchnorm_layers, refresh_batchnorm
from ssit.evaluate.config import GradeConfig
from ssit.evaluate.datasets import GradingDataset, class_counts, load_grading_data
from ssit.evaluate.encoder import (
    Encoder,
    FeatureProbe,
    GradingModel,
    create_encoder,
    describe_encoder,
)
from ssit.evaluate.finetune import fit_regression, predict_scores, regression_metrics
from ssit.evaluate.inference import collect_outputs
from ssit.evaluate.knn import extract_pooled_features, knn_grade
from ssit.evaluate.layouts import SPLITS, GradedImage
from ssit.evaluate.metrics import grades_from_scores
from ssit.evaluate.precision import autocast, resolve_device
from ssit.evaluate.report import draw_confusion_matrix, json_ready, result_table, write_json
from ssit.evaluate.semisup import run_semisup
from ssit.evaluate.subsets import write_voets_split
from ssit.evaluate.summary import RESULTS_FILE, semisup_table
from ssit.evaluate.test_sets import (
    load_test_sets,
    read_encoder_source,
)
from ssit.evaluate.transforms import eval_transform, train_transform
from ssit.train.config import resolve_precision
from ssit.train.run_owner import hold_run_folder

LOGGER = logging.getLogger(__name__)


def run_grading(cfg: GradeConfig, out_dir: str | Path) -> dict[str, Any]:
    """Grade ``cfg.encoder`` on ``cfg.data`` with ``cfg.train.protocol``; return the results.

    A folder that already holds ``results.json`` is not graded again.
    """
    out_dir = Path(out_dir)
    done = out_dir / RESULTS_FILE
    if done.is_file():
        LOGGER.info("%s exists; returning the finished results", done)
        return json.loads(done.read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    with _log_to(out_dir / "grade.log"):
        started = time.time()
        _seed_everything(cfg.train.seed)
        device = resolve_device(cfg.train.device)
        precision = resolve_precision(cfg.train.precision, device.type)
        LOGGER.info("grading %s with %s on %s (%s, %s)", cfg.data.dataset, cfg.train.protocol,
                    cfg.encoder.checkpoint, device, precision)
        write_voets_split(cfg.data, out_dir)
        splits = load_grading_data(cfg.data, out_dir)
        test_sets = load_test_sets(cfg.data)
        source = read_encoder_source(cfg.encoder.checkpoint, cfg.encoder)
        cfg = dataclasses.replace(cfg, encoder=resolve_encoder(cfg.encoder, source))
        save_config(cfg, out_dir / "config.yaml")
        backbone = create_encoder(cfg.encoder, source).to(device)
        del source
        refreshed = (_refresh_batchnorm(cfg, backbone, splits["train"], device, precision)
                     if cfg.encoder.refresh_batchnorm else 0)
        if cfg.train.protocol == "semisup":
            def make_loader(items, transform, batch_size, shuffle):
                return _loader(items, transform, batch_size, shuffle, cfg, device)

            outcome = run_semisup(cfg, backbone, splits, test_sets, make_loader, device,
                                  precision, out_dir)
        elif cfg.train.protocol == "knn":
            outcome = _run_knn(cfg, backbone, {**splits, **test_sets}, device, precision,
                               out_dir)
        else:
            outcome = _run_regression(cfg, backbone, {**splits, **test_sets}, device,
                                      precision, out_dir)
        result = {
            "dataset": cfg.data.dataset,
            "protocol": cfg.train.protocol,
            "encoder": describe_encoder(cfg.encoder),
            "backbone": cfg.encoder.backbone,
            "arch": cfg.encoder.arch,
            "img_size": cfg.encoder.img_size,
            "batchnorm_refreshed": refreshed,
            "data": cfg.data.path,
            "class_counts": {name: class_counts(items)
                             for name, items in {**splits, **test_sets}.items()},
            **outcome,
            "elapsed_s": round(time.time() - started, 1),
            "out_dir": str(out_dir),
        }
        if cfg.train.protocol == "semisup":
            write_json(result, done)
            LOGGER.info("results in %s\n%s", done, semisup_table(result))
            return json_ready(result)
        for name in ("test", *result["test_sets"]):
            selected = result[name][result["selected"]]
            draw_confusion_matrix(
                selected["confusion_matrix"],
                out_dir / ("confusion.png" if name == "test" else f"confusion_{name}.png"),
                f"{name}: {result['dataset']} {result['protocol']} {result['encoder']} "
                f"(kappa {selected['kappa']:.3f})",
            )
        write_json(result, done)
        LOGGER.info("results in %s\n%s", done, result_table(result))
    return json_ready(result)


class GradingJob(submitit.helpers.Checkpointable):
    """The submitted callable: runs :func:`run_grading`; on preemption it requeues itself."""

    def __init__(self, cfg: GradeConfig, out_dir: str | Path) -> None:
        self.cfg = cfg
        self.out_dir = Path(out_dir)

    def __call__(self) -> dict[str, Any]:
        logging.basicConfig(level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        # The job owns its folder while it runs: a second job into it is refused.
        with hold_run_folder(self.out_dir):
            return run_grading(self.cfg, self.out_dir)


def _refresh_batchnorm(
    cfg: GradeConfig, backbone: Encoder, train: Sequence[GradedImage], device: torch.device,
    precision: str,
) -> int:
    """Refresh the encoder's BatchNorm statistics on the un-augmented training images, in
    shuffled batches of ``train.eval_batch_size``; the number of layers refreshed."""
    layers = len(batchnorm_layers(backbone.model))
    if layers == 0:
        LOGGER.info("encoder.refresh_batchnorm: the %s encoder has no BatchNorm layer, nothing "
                    "to refresh", cfg.encoder.backbone)
        return 0
    plain = eval_transform(cfg.encoder.img_size, cfg.data.mean, cfg.data.std)
    loader = _loader(train, plain, cfg.train.eval_batch_size, True, cfg, device)

    def forward(batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        with autocast(device, precision):
            return backbone.kind.grading_features(backbone.model,
                                                  batch[0].to(device, non_blocking=True))

    batches = refresh_batchnorm(backbone.model, loader, forward)
    LOGGER.info("encoder.refresh_batchnorm: running statistics of %d BatchNorm layers "
                "re-estimated on %d training batches", layers, batches)
    return layers


def _run_regression(
    cfg: GradeConfig, backbone: Encoder, splits: dict[str, list[GradedImage]],
    device: torch.device, precision: str, out_dir: Path,
) -> dict[str, Any]:
    data, train = cfg.data, cfg.train
    linear = train.protocol == "linear"
    norm = linear and cfg.linear.feature_norm
    if linear and cfg.linear.cache_features:
        model: GradingModel = FeatureProbe(backbone, train.head_init_std, norm)
    else:
        model = GradingModel(backbone, freeze_backbone=linear,
                             head_init_std=train.head_init_std, feature_norm=norm)
    model.to(device)
    plain = eval_transform(cfg.encoder.img_size, data.mean, data.std)
    external = [name for name in splits if name not in SPLITS]
    loaders = {name: _loader(splits[name], plain, train.eval_batch_size, False, cfg, device)
               for name in ("val", "test", *external)}
    if isinstance(model, FeatureProbe):
        loaders = {name: _feature_loader(model, loader, train.eval_batch_size, False, cfg,
                                         device, precision, name)
                   for name, loader in loaders.items()}
        train_loader = _feature_loader(
            model, _loader(splits["train"], plain, train.eval_batch_size, False, cfg, device),
            train.batch_size, True, cfg, device, precision, "train")
    else:
        augment = train_transform(cfg.augment, cfg.encoder.img_size, data.mean, data.std)
        train_loader = _loader(splits["train"], augment, train.batch_size, True, cfg, device)
    fit = fit_regression(model, train_loader, loaders["val"], train, out_dir, device, precision)
    setting = f"epoch {fit.best_epoch}"
    metrics = {}
    for name, loader in loaders.items():
        scores, grades = predict_scores(model, loader, device, precision, desc=name)
        metrics[name] = {setting: regression_metrics(scores, grades, train.thresholds)}
        if name != "val":
            predicted = grades_from_scores(scores, train.thresholds)
            _write_predictions(_predictions_path(out_dir, name), splits[name],
                               ("score", "predicted"), zip(scores, predicted, strict=True))
    return {**metrics, "selected": setting, "history": fit.history, "test_sets": external}


def _run_knn(
    cfg: GradeConfig, backbone: Encoder, splits: dict[str, list[GradedImage]],
    device: torch.device, precision: str, out_dir: Path,
) -> dict[str, Any]:
    plain = eval_transform(cfg.encoder.img_size, cfg.data.mean, cfg.data.std)
    features = {
        name: extract_pooled_features(
            backbone, _loader(items, plain, cfg.train.eval_batch_size, False, cfg, device),
            device, precision, desc=f"{name} features")
        for name, items in splits.items()
    }
    external = [name for name in splits if name not in SPLITS]
    outcome: dict[str, Any] = {"temperature": cfg.knn.temperature, "test_sets": external}
    for name in ("test", *external):
        graded = knn_grade(features["train"], features["val"], features[name], cfg.knn.ks,
                           cfg.knn.temperature)
        predicted, probs = graded.test_predicted, graded.test_probs
        _write_predictions(_predictions_path(out_dir, name), splits[name],
                           ("predicted", *(f"p{g}" for g in range(probs.shape[1]))),
                           ((int(p), *row) for p, row in zip(predicted.tolist(), probs.tolist(),
                                                             strict=True)))
        outcome["val"] = {f"k={k}": metrics for k, metrics in graded.val.items()}
        outcome[name] = {f"k={k}": metrics for k, metrics in graded.test.items()}
        outcome["selected"] = f"k={graded.selected_k}"
    return outcome


def _feature_loader(
    model: FeatureProbe, images: DataLoader, batch_size: int, shuffle: bool, cfg: GradeConfig,
    device: torch.device, precision: str, name: str,
) -> DataLoader:
    """The frozen model's features of every image of ``images``, computed once, with grades."""
    features, grades = collect_outputs(model, images, device, precision, forward=model.encode,
                                       desc=f"{name} features", leave=False)
    LOGGER.info("cached %d %s features of size %d", len(grades), name, features.shape[1])
    return DataLoader(
        TensorDataset(features, grades),
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=shuffle and len(grades) > batch_size,
        generator=torch.Generator().manual_seed(cfg.train.seed) if shuffle else None,
    )


def _predictions_path(out_dir: Path, name: str) -> Path:
    return out_dir / ("predictions.csv" if name == "test" else f"predictions_{name}.csv")


def _loader(
    items: Sequence[GradedImage], transform: Any, batch_size: int, shuffle: bool,
    cfg: GradeConfig, device: torch.device,
) -> DataLoader:
    workers = cfg.data.num_workers
    return DataLoader(
        GradingDataset(items, transform, min_side=cfg.encoder.img_size),
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=shuffle and len(items) > batch_size,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        generator=torch.Generator().manual_seed(cfg.train.seed) if shuffle else None,
    )


def _write_predictions(
    path: Path, items: Sequence[GradedImage], columns: Sequence[str], rows: Iterator | Any
) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["key", "grade", *columns])
        for item, values in zip(items, rows, strict=True):
            writer.writerow([item.key, item.grade,
                             *(f"{v:.6g}" if isinstance(v, float) else v for v in values)])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def _log_to(path: Path) -> Iterator[None]:
    """Copy the ``ssit`` loggers' INFO records into ``path`` while grading."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("ssit")
    previous = logger.level
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
        handler.close()
