"""Checks of a grading job before it is submitted, without building a network.

:func:`validate_grading_config` reads the dataset's layout and labels, the external test sets
and the checkpoint (when one is given: reading it loads torch) and raises ConfigError with one
line. Networks are built on the meta device only where a checkpoint was read or a job is about
to be submitted (:func:`check_encoder_builds`), so a dry run answers without torch or timm.
"""

from __future__ import annotations

from pathlib import Path

from ssit.backbones.config import timm_kwargs_checks
from ssit.backbones.names import timm_architecture
from ssit.config import ConfigError
from ssit.evaluate.architecture import (
    EncoderError,
    EncoderSource,
    backbone_config,
    check_encoder,
    resolve_encoder,
)
from ssit.evaluate.config import RANDOM_ENCODER, GradeConfig
from ssit.evaluate.datasets import split_layout
from ssit.evaluate.layouts import LAYOUTS, DatasetError
from ssit.evaluate.subsets import VOETS_SEED, labelled_subset, voets_split
from ssit.evaluate.test_sets import check_test_sets, is_timm_source, read_encoder_source
from ssit.validators import refuse_first_failure


def validate_grading_config(
    cfg: GradeConfig, source: EncoderSource | None = None, *, build: bool = True
) -> None:
    """Check all that can be checked before submission: the dataset's layout (labels and
    images present), kNN's largest k and the semi-supervised labelled subset against the
    training split, the checkpoint (read once, by the same path as the job), and that the
    encoder can be built and its weights fit.

    ``source`` is ``cfg.encoder.checkpoint`` already read (read here when not given). With
    ``build`` false a random encoder is not built (no torch); one with weights always is.
    Raises ConfigError with one line.
    """
    _check_names(cfg)
    if not cfg.data.path:
        raise ConfigError(f"data.path is empty: give the {cfg.data.dataset} folder")
    if not Path(cfg.data.path).expanduser().exists():
        raise ConfigError(f"data.path {cfg.data.path} does not exist")
    if cfg.data.split_file and not Path(cfg.data.split_file).expanduser().is_file():
        raise ConfigError(f"data.split_file {cfg.data.split_file} does not exist")
    try:
        _check_training_split(cfg)
        check_test_sets(cfg.data)
    except DatasetError as error:
        raise ConfigError(str(error)) from None
    semi = cfg.semisup
    if (cfg.train.protocol == "semisup" and semi.student_weights not in ("imagenet", "random")
            and not Path(semi.student_weights).expanduser().is_file()):
        raise ConfigError(f"semisup.student_weights {semi.student_weights} does not exist "
                          "(or use imagenet or random)")
    checkpoint = cfg.encoder.checkpoint
    if (checkpoint != RANDOM_ENCODER and not is_timm_source(checkpoint)
            and not Path(checkpoint).expanduser().is_file()):
        raise ConfigError(f"encoder.checkpoint {checkpoint} does not exist (or use 'random' "
                          "or timm:<name>)")
    try:
        if source is None:
            source = read_encoder_source(checkpoint, cfg.encoder)
        if build or source is not None:
            check_encoder(cfg.encoder, source)
        else:
            backbone_config(resolve_encoder(cfg.encoder, None))
    except EncoderError as error:
        raise ConfigError(str(error)) from None


def check_encoder_builds(cfg: GradeConfig) -> None:
    """Build a random encoder of ``cfg`` on the meta device (loads torch and timm); raise
    ConfigError (one line) when timm refuses the architecture or its options."""
    if cfg.encoder.checkpoint != RANDOM_ENCODER:
        return
    try:
        check_encoder(cfg.encoder, None)
    except EncoderError as error:
        raise ConfigError(str(error)) from None


def _check_names(cfg: GradeConfig) -> None:
    """The timm names and create_model options the job would hand to timm."""
    checks = [*timm_kwargs_checks("encoder.model_kwargs", cfg.encoder.model_kwargs)]
    if cfg.encoder.checkpoint == RANDOM_ENCODER:
        checks.append(timm_architecture("encoder.arch", cfg.encoder.arch))
    if cfg.train.protocol == "semisup":
        checks.append(timm_architecture("semisup.student_arch", cfg.semisup.student_arch))
        checks += timm_kwargs_checks("semisup.student_kwargs", cfg.semisup.student_kwargs)
    refuse_first_failure(checks)


def _check_training_split(cfg: GradeConfig) -> None:
    """kNN's largest k and the labelled subset against the training split (DatasetError)."""
    if cfg.train.protocol not in ("knn", "semisup"):
        LAYOUTS[cfg.data.dataset](Path(cfg.data.path).expanduser())
        return
    layout = LAYOUTS[cfg.data.dataset](Path(cfg.data.path).expanduser())
    split_file = Path(cfg.data.split_file).expanduser() if cfg.data.split_file else None
    if cfg.data.split == "voets" and split_file is None:
        train = voets_split([item for items in layout.values() for item in items],
                            VOETS_SEED)["train"]
    else:
        train = split_layout(layout, cfg.data, split_file)["train"]
    if cfg.train.protocol == "knn" and max(cfg.knn.ks) > len(train):
        raise ConfigError(f"knn.ks {cfg.knn.ks}: k={max(cfg.knn.ks)} exceeds the {len(train)} "
                          f"training images of {cfg.data.dataset} {cfg.data.path}")
    if cfg.train.protocol == "semisup":
        semi = cfg.semisup
        try:
            labelled_subset(train, semi.labelled_size, semi.labelled_fraction, semi.subset_seed)
        except ValueError as error:
            raise ConfigError(f"semisup.labelled_size/labelled_fraction: {error} "
                              f"({cfg.data.dataset} {cfg.data.path})") from None
