"""Semi-supervised referable-DR grading with distillation (Arrieta Ramos et al., SIPAIM 2022).

Stages, each in its own folder of the job's output folder and each resumable:

1. ``labelled.csv``: a class-balanced labelled subset of the training split (the rest of the
   training split is the unlabelled pool; its labels are never read by the stages);
2. ``teacher/``: the encoder under evaluation with the head Linear(d, 512)-Linear(512, 1),
   trained with BCE on the subset;
3. pseudo-labels: while the student trains, the teacher labels each batch of the whole training
   split on the very augmented view the student sees (hard at the threshold, or soft), its
   BatchNorm in eval mode (or train mode, as the reference code);
4. ``student/``: a timm model trained with BCE on those pseudo-labels;
5. ``student_finetune/``: the student trained again on the labelled subset.

Teacher and student are then evaluated side by side on validation, test and every external
test set (ROC AUC, sensitivity and specificity at 0.5 and at the Youden point, accuracy).
One input normalisation and input size serve all stages.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ssit.evaluate.binary_metrics import binary_metrics
from ssit.evaluate.binary_training import (
    EncoderClassifier,
    TimmClassifier,
    fit_binary,
    is_finished,
    load_final,
    predict_probabilities,
    referable_targets,
)
from ssit.evaluate.config import GradeConfig, SemisupConfig
from ssit.evaluate.encoder import Encoder
from ssit.evaluate.finetune import TrainingError
from ssit.evaluate.layouts import GradedImage
from ssit.evaluate.metrics import REFERABLE_GRADE
from ssit.evaluate.roc_plot import draw_roc_curves
from ssit.evaluate.subsets import LABELLED_FILE, labelled_subset, read_labelled, write_labelled
from ssit.evaluate.transforms import eval_transform, train_transform

LOGGER = logging.getLogger(__name__)
ROLES = ("teacher", "student")
Loader = Callable[[Sequence[GradedImage], Any, int, bool], DataLoader]


def pseudo_labels(probabilities: torch.Tensor, mode: str, threshold: float = 0.5) -> torch.Tensor:
    """Targets from teacher probabilities: 1 above ``threshold`` (hard) or the probability."""
    if mode == "hard":
        return (probabilities > threshold).float()
    if mode == "soft":
        return probabilities.float()
    raise ValueError(f"pseudo-labels must be hard or soft, got {mode!r}")


def teacher_targets(
    teacher: nn.Module, mode: str, threshold: float, batchnorm: str
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Per-batch pseudo-labels of ``teacher`` (grades ignored), without gradients."""
    def targets(images: torch.Tensor, grades: torch.Tensor) -> torch.Tensor:
        teacher.train(batchnorm == "train")
        with torch.no_grad():
            return pseudo_labels(torch.sigmoid(teacher(images).float()), mode, threshold)

    return targets


def create_student(cfg: SemisupConfig) -> tuple[nn.Module, str]:
    """The student network with one output, and how its weights were initialised."""
    import timm

    options: dict[str, Any] = {"num_classes": 1, **cfg.student_kwargs}
    weights = cfg.student_weights
    if weights == "random":
        described = "random initialisation"
    elif weights == "imagenet":
        options["pretrained"], described = True, "ImageNet (timm)"
    else:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise TrainingError(f"semisup.student_weights {weights} does not exist")
        options.update(pretrained=True, pretrained_cfg_overlay={"file": str(path)})
        described = f"pre-trained weights from {path}"
    try:
        model = timm.create_model(cfg.student_arch, **options)
    except Exception as error:  # hub, network and file errors come in many types
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise TrainingError(f"cannot create the student {cfg.student_arch} with {weights} "
                            f"weights: {reason}; set semisup.student_weights to a local file "
                            f"or to random") from None
    return TimmClassifier(model), described


def run_semisup(
    cfg: GradeConfig, encoder: Encoder, splits: Mapping[str, list[GradedImage]],
    test_sets: Mapping[str, list[GradedImage]], make_loader: Loader, device: torch.device,
    precision: str, out_dir: Path,
) -> dict[str, Any]:
    """All stages of the protocol; the outcome part of ``results.json``."""
    semi, data = cfg.semisup, cfg.data
    augment = train_transform(cfg.augment, cfg.encoder.img_size, data.mean, data.std)
    plain = eval_transform(cfg.encoder.img_size, data.mean, data.std)
    labelled = labelled_split(semi, splits["train"], out_dir / LABELLED_FILE)
    seed = cfg.train.seed

    teacher = EncoderClassifier(encoder, semi.head_hidden).to(device)
    teacher_history = fit_binary(
        teacher, make_loader(labelled, augment, semi.teacher.batch_size, True),
        referable_targets, semi.teacher, out_dir / "teacher", device, precision, seed, "teacher")

    student, initialised = create_student(semi)
    student.to(device)
    if not is_finished(out_dir / "student_finetune"):
        teacher.requires_grad_(False)
        fit_binary(student, make_loader(splits["train"], augment, semi.student.batch_size, True),
                   teacher_targets(teacher, semi.pseudo_labels, semi.pseudo_threshold,
                                   semi.teacher_bn),
                   semi.student, out_dir / "student", device, precision, seed, "student")
        load_final(teacher, out_dir / "teacher")  # undo running-stat updates of train-mode BN
    finetune_history = fit_binary(
        student, make_loader(labelled, augment, semi.student_finetune.batch_size, True),
        referable_targets, semi.student_finetune, out_dir / "student_finetune", device,
        precision, seed, "student fine-tune")
    student_history = _history(out_dir / "student")

    sets = {"val": splits["val"], "test": splits["test"], **test_sets}
    models = {"teacher": teacher, "student": student}
    metrics: dict[str, dict[str, Any]] = {role: {} for role in ROLES}
    for name, items in sets.items():
        loader = make_loader(items, plain, cfg.train.eval_batch_size, False)
        probabilities = {}
        for role, model in models.items():
            probs, grades = predict_probabilities(model, loader, device, precision,
                                                  f"{role} {name}")
            probabilities[role] = probs
            metrics[role][name] = binary_metrics(grades >= REFERABLE_GRADE, probs)
        if name == "val":
            continue
        labels = np.asarray([item.grade >= REFERABLE_GRADE for item in items])
        draw_roc_curves(labels, probabilities, out_dir / f"roc_{name}.png",
                        f"{cfg.data.dataset} -> {name}: referable DR")
        _write_probabilities(out_dir / f"predictions_{name}.csv", items, probabilities)
    for name in sets:
        LOGGER.info("%s: AUC teacher %.4f, student %.4f", name, metrics["teacher"][name]["auc"],
                    metrics["student"][name]["auc"])
    return {
        **metrics,
        "test_sets": list(test_sets),
        "labelled": {"file": LABELLED_FILE, "size": len(labelled),
                     "referable": sum(i.grade >= REFERABLE_GRADE for i in labelled),
                     "unlabelled_pool": len(splits["train"]) - len(labelled)},
        "student_model": {"arch": semi.student_arch, "weights": initialised},
        "pseudo_labels": semi.pseudo_labels,
        "teacher_batchnorm": semi.teacher_bn,
        "history": {"teacher": teacher_history, "student": student_history,
                    "student_finetune": finetune_history},
    }


def labelled_split(
    cfg: SemisupConfig, train: Sequence[GradedImage], path: Path
) -> list[GradedImage]:
    """Stage 1: the labelled subset, drawn once and read back from ``labelled.csv`` after."""
    if path.is_file():
        LOGGER.info("labelled subset: reading %s", path)
        return read_labelled(path, train)
    subset = labelled_subset(train, cfg.labelled_size, cfg.labelled_fraction, cfg.subset_seed)
    write_labelled(subset, path)
    LOGGER.info("labelled subset: %d of %d training images (%d referable) in %s", len(subset),
                len(train), sum(i.grade >= REFERABLE_GRADE for i in subset), path)
    return subset


def _history(stage_dir: Path) -> list[dict]:
    path = stage_dir / "final.pt"
    if not path.is_file():
        return []
    return list(torch.load(path, map_location="cpu", weights_only=True)["history"])


def _write_probabilities(
    path: Path, items: Sequence[GradedImage], probabilities: Mapping[str, np.ndarray]
) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["key", "grade", "referable", *probabilities])
        for index, item in enumerate(items):
            writer.writerow([item.key, item.grade, int(item.grade >= REFERABLE_GRADE),
                             *(f"{probs[index]:.6g}" for probs in probabilities.values())])
