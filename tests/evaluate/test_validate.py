"""Grading values refused before a job: the config sections' ranges and the checks against the
dataset (labelled subset, student architecture) made by ``validate_grading_config``."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ssit.config import ConfigError, load_config
from ssit.evaluate.config import GradeConfig
from ssit.evaluate.validate import check_encoder_builds, validate_grading_config

TINY = ["encoder.model_kwargs={depth: 2, embed_dim: 48, num_heads: 2}", "train.epochs=1"]


def config(path: Path, protocol: str, *overrides: str) -> GradeConfig:
    return load_config(GradeConfig, "grade_tiny_cpu", [
        *TINY, "data.dataset=folder", f"data.path={path}", f"train.protocol={protocol}",
        *overrides,
    ])


def refused(cfg: GradeConfig) -> str:
    with pytest.raises(ConfigError) as info:
        validate_grading_config(cfg, build=False)
    assert "\n" not in str(info.value)
    return str(info.value)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.head_init_std=-0.01", "train.head_init_std must be a finite number >= 0"),
        ("augment.brightness=-0.2", "augment.brightness must be a finite number >= 0"),
        ("augment.contrast=-1", "augment.contrast must be a finite number >= 0"),
        ("augment.saturation=-0.1", "augment.saturation must be a finite number >= 0"),
        ("augment.hue=0.6", "augment.hue must be in [0, 0.5], got 0.6"),
        ("augment.hue=-0.01", "augment.hue must be in [0, 0.5]"),
        ("augment.rotation=abc", "config key 'augment.rotation' must be a float, got 'abc'"),
        ("augment.rotation=.nan", "augment.rotation must be in [0, 180], got nan"),
        ("augment.rotation=360", "augment.rotation must be in [0, 180], got 360"),
        ("augment.crop_scale=[0.8]", "augment.crop_scale must be [low, high]"),
        ("augment.crop_ratio=[1.3, 0.7]", "augment.crop_ratio must be [low, high] with low <="),
        ("augment.hflip=1.5", "augment.hflip must be in [0, 1], got 1.5"),
        ("train.lr=1e-300", "train.lr must be in [1e-09, 10], got 1e-300"),
        ("train.lr=1e308", "train.lr must be in [1e-09, 10], got 1e+308"),
        ("knn.temperature=1e-9", "knn.temperature must be in [0.0001, 100], got 1e-09"),
        ("knn.temperature=0", "knn.temperature must be in [0.0001, 100], got 0"),
        ("semisup.teacher={lr: 1e-300}", "semisup stage lr must be in [1e-09, 10]"),
    ],
)
def test_out_of_range_sections_are_refused_when_loaded(layouts, override, expected):
    with pytest.raises(ConfigError) as info:
        config(layouts["folder"], "finetune", override)
    assert expected in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "override",
    ["train.head_init_std=0", "augment.brightness=1.5", "augment.hue=0.5", "augment.rotation=0",
     "knn.temperature=1e-4", "train.lr=10"],
)
def test_edges_of_the_ranges_are_accepted(layouts, override):
    config(layouts["folder"], "finetune", override)


def test_student_architecture_must_be_known_to_timm(layouts):
    assert refused(config(layouts["folder"], "semisup", "semisup.student_arch=densenet_999")) == (
        "config key 'semisup.student_arch' must be a timm architecture name (see "
        "timm.list_models()), got 'densenet_999'")
    assert "'semisup.student_kwargs.in_chans' must be 3" in refused(config(
        layouts["folder"], "semisup", "semisup.student_kwargs={in_chans: 1}"))
    validate_grading_config(config(layouts["folder"], "semisup", "semisup.student_arch=resnet18",
                                   "semisup.labelled_size=4"), build=False)


def test_encoder_options_the_job_cannot_use_are_refused(layouts):
    path = layouts["folder"]
    assert "'encoder.model_kwargs.in_chans' must be 3" in refused(config(
        path, "knn", "knn.ks=[3]", "encoder.model_kwargs={depth: 2, in_chans: 4}"))
    assert "'encoder.model_kwargs.global_pool' must be a pooling name" in refused(config(
        path, "knn", "knn.ks=[3]", "encoder.model_kwargs={depth: 2, global_pool: ''}"))
    assert "'encoder.arch' must be a timm architecture name" in refused(config(
        path, "knn", "knn.ks=[3]", "encoder.arch=vit_imaginary"))


def test_labelled_subset_must_fit_the_training_split(layouts):
    # The folder layout's training split: 8 non-referable (grades 0-1), 12 referable images.
    message = refused(config(layouts["folder"], "semisup", "semisup.labelled_size=40"))
    assert message.startswith("semisup.labelled_size/labelled_fraction: the labelled subset "
                              "needs 20 non-referable training images, the training split has")
    validate_grading_config(config(layouts["folder"], "semisup", "semisup.labelled_size=10"),
                            build=False)


def test_labels_of_one_class_are_refused_for_semisup(layouts, tmp_path):
    one_class = tmp_path / "folder"
    for split in ("train", "val", "test"):
        shutil.copytree(layouts["folder"] / split / "0", one_class / split / "0")
    message = refused(config(one_class, "semisup", "semisup.labelled_size=4"))
    assert "needs 2 referable training images, the training split has 0" in message


def test_random_encoder_is_built_only_where_a_job_is_submitted(layouts):
    cfg = config(layouts["folder"], "knn", "knn.ks=[3]", "encoder.img_size=72")
    validate_grading_config(cfg, build=False)
    with pytest.raises(ConfigError, match="72"):
        check_encoder_builds(cfg)
