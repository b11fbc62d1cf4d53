from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from ssit.config import load_config
from ssit.evaluate.config import EncoderConfig, GradeConfig, TrainConfig
from ssit.evaluate.encoder import GradingModel, create_encoder
from ssit.evaluate.finetune import TrainingError, fit_regression, parameter_groups
from ssit.evaluate.job import run_grading

from .conftest import fundus, save

# A 2-block ViT with 8-pixel patches at input 64: 64 tokens of width 48.
TINY_VIT = "encoder.model_kwargs={depth: 2, embed_dim: 48, num_heads: 3, patch_size: 8}"
# Flips keep the grade and the lesions pixel-exact; rotations, crops and colour jitter blur
# 3-pixel lesions away at this size.
FLIPS_ONLY = ["augment.rotation=0", "augment.translate=0", "augment.crop_scale=[1,1]",
              "augment.crop_ratio=[1,1]", "augment.brightness=0", "augment.contrast=0",
              "augment.saturation=0", "augment.hue=0"]
SPLIT_SIZES = {"train": 60, "val": 15, "test": 25}  # images per grade


@pytest.fixture(scope="module")
def healthy_or_proliferative(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder-layout dataset of grade-0 discs and grade-4 discs covered in dark lesions.

    The lesions of ``ssit.prepare.synth`` shrink to 1-2 pixels at input 64, too faint for a
    ViT trained from scratch on a hundred images; these 3-pixel spots are not.
    """
    root = tmp_path_factory.mktemp("grade0_vs_grade4")
    number = 0
    for split, per_grade in SPLIT_SIZES.items():
        for grade in (0, 4):
            for index in range(per_grade):
                save(fundus(grade, number), root / split / str(grade) / f"{index}.png")
                number += 1
    return root


def grading_config(data: Path, cache: Path, protocol: str, *overrides: str) -> GradeConfig:
    return load_config(GradeConfig, "grade_tiny_cpu", [
        TINY_VIT, "data.dataset=folder", f"data.path={data}", f"data.cache_dir={cache}",
        f"train.protocol={protocol}", *overrides,
    ])


def test_finetuning_beats_the_random_encoder_knn_floor(
    healthy_or_proliferative, crop_cache, tmp_path
):
    floor_config = grading_config(healthy_or_proliferative, crop_cache, "knn")
    floor = run_grading(floor_config, tmp_path / "knn")
    tuned_config = grading_config(
        healthy_or_proliferative, crop_cache, "finetune", *FLIPS_ONLY,
        "train.epochs=40", "train.batch_size=16", "train.lr=2e-4", "train.head_lr_scale=50",
    )
    tuned = run_grading(tuned_config, tmp_path / "finetune")
    assert (tmp_path / "finetune" / "split.csv").read_text() == (
        tmp_path / "knn" / "split.csv").read_text()
    floor_kappa = floor["test"][floor["selected"]]["kappa"]
    tuned_kappa = tuned["test"][tuned["selected"]]["kappa"]
    assert tuned_kappa > floor_kappa + 0.3, (tuned_kappa, floor_kappa)
    assert tuned_kappa > 0.8
    assert tuned["history"][-1]["train_loss"] < 0.5 * tuned["history"][0]["train_loss"]


def tiny_model(freeze_backbone: bool) -> GradingModel:
    torch.manual_seed(0)
    encoder = create_encoder(EncoderConfig(arch="vit_tiny_patch16_224", img_size=32,
                                           model_kwargs={"depth": 1, "embed_dim": 24,
                                                         "num_heads": 2, "patch_size": 8}))
    return GradingModel(encoder, freeze_backbone=freeze_backbone)


def test_parameter_groups_scale_only_the_head():
    model = tiny_model(freeze_backbone=False)
    backbone, head = parameter_groups(model, head_lr_scale=50.0)
    assert backbone["lr_scale"] == 1.0 and head["lr_scale"] == 50.0
    assert {id(p) for p in head["params"]} == {id(p) for p in model.head.parameters()}
    assert len(backbone["params"]) == len(list(model.backbone.parameters()))
    (only_head,) = parameter_groups(tiny_model(freeze_backbone=True), head_lr_scale=3.0)
    assert only_head["lr_scale"] == 3.0 and len(only_head["params"]) == 2


def test_fit_applies_the_head_learning_rate_scale(tmp_path):
    model = tiny_model(freeze_backbone=False)
    images = torch.randn(8, 3, 32, 32)
    grades = torch.tensor([0, 4] * 4)
    loader = DataLoader(TensorDataset(images, grades), batch_size=4)
    config = TrainConfig(epochs=1, lr=1e-3, head_lr_scale=10.0, device="cpu")
    before = {name: value.clone() for name, value in model.state_dict().items()}
    fit_regression(model, loader, loader, config, tmp_path, torch.device("cpu"), "fp32")
    saved = torch.load(tmp_path / "last.pt", weights_only=True)["optimizer"]
    # the head group follows the schedule at scale times the backbone rate
    assert [group["lr_scale"] for group in saved["param_groups"]] == [1.0, 10.0]
    assert saved["param_groups"][1]["lr"] == pytest.approx(10 * saved["param_groups"][0]["lr"])
    assert not torch.equal(before["head.weight"], model.state_dict()["head.weight"])


def _fit(model: GradingModel, out: Path, epochs: int) -> list[dict]:
    images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    loader = DataLoader(TensorDataset(images, torch.tensor([0, 4] * 4)), batch_size=4)
    config = TrainConfig(epochs=epochs, lr=1e-3, device="cpu")
    return fit_regression(model, loader, loader, config, out, torch.device("cpu"), "fp32").history


def test_last_checkpoint_leaves_out_a_frozen_backbone_and_resumes_from_it(tmp_path):
    first = _fit(tiny_model(freeze_backbone=True), tmp_path / "probe", 1)
    saved = torch.load(tmp_path / "probe" / "last.pt", weights_only=True)
    assert set(saved["model"]) == {"head.weight", "head.bias"}
    # best.pt stays the whole model, usable without the encoder checkpoint
    assert "backbone.cls_token" in torch.load(tmp_path / "probe" / "best.pt", weights_only=True)
    # a last.pt that holds the whole model (as written before) resumes to the same numbers
    shutil.copytree(tmp_path / "probe", tmp_path / "whole")
    trained = tiny_model(freeze_backbone=True)
    trained.load_state_dict(torch.load(tmp_path / "probe" / "best.pt", weights_only=True))
    torch.save({**saved, "model": trained.state_dict()}, tmp_path / "whole" / "last.pt")
    resumed = _fit(tiny_model(freeze_backbone=True), tmp_path / "probe", 2)
    from_whole = _fit(tiny_model(freeze_backbone=True), tmp_path / "whole", 2)
    assert [h["epoch"] for h in resumed] == [1, 2] and resumed[0] == first[0]
    assert resumed[1]["train_loss"] == pytest.approx(from_whole[1]["train_loss"], rel=1e-6)
    # a fine-tuned backbone changes, so it is kept
    _fit(tiny_model(freeze_backbone=False), tmp_path / "tuned", 1)
    tuned = torch.load(tmp_path / "tuned" / "last.pt", weights_only=True)["model"]
    assert "backbone.cls_token" in tuned and "head.weight" in tuned


def test_resume_refuses_a_last_checkpoint_of_another_model(tmp_path):
    _fit(tiny_model(freeze_backbone=True), tmp_path, 1)
    # a fine-tuning run cannot continue from a probe's last.pt: its backbone was left out
    with pytest.raises(TrainingError, match=r"does not match this model.*new output folder"):
        _fit(tiny_model(freeze_backbone=False), tmp_path, 2)


def test_head_lr_scale_must_be_positive():
    with pytest.raises(ValueError, match="head_lr_scale"):
        TrainConfig(head_lr_scale=0.0)
