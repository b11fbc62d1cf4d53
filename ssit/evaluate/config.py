"""GradeConfig: every setting of a grading job, with the paper's values as defaults.

Protocol-dependent optimiser settings (learning rate, weight decay) default to ``None``, which
means "the protocol's own value": fine-tuning Adam lr 2e-5 with weight decay
1e-5, linear probe lr 2e-3 without decay.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ssit.backbones.config import BACKBONE_CONFIGS
from ssit.config import non_finite_values
from ssit.evaluate.metrics import REGRESSION_THRESHOLDS
from ssit.prepare.statistics import EYEPACS_MEAN, EYEPACS_STD
from ssit.validators import (
    RangeCheck,
    first_failure,
    learning_rate,
    non_negative,
    number_pair,
    positive,
    probability,
    temperature,
    within,
)

DATASETS = ("eyepacs", "aptos2019", "messidor2", "ddr", "folder", "shards")
PROTOCOLS = ("finetune", "linear", "knn", "semisup")
SPLIT_METHODS = ("random", "voets")
SEED_LIMIT = 2**63

Dataset = Literal["eyepacs", "aptos2019", "messidor2", "ddr", "folder", "shards"]
Protocol = Literal["finetune", "linear", "knn", "semisup"]


def refuse_failing(checks: list[RangeCheck]) -> None:
    """Raise ValueError (one line) for the first failing check of a section."""
    failure = first_failure(checks)
    if failure is not None:
        raise ValueError(failure)


RANDOM_ENCODER = "random"
AUTO_BACKBONE = "auto"


@dataclass
class EncoderConfig:
    """Which backbone to grade and at what input size.

    ``backbone: auto`` takes the kind, ``arch`` and ``model_kwargs`` recorded in the checkpoint
    or exported file (the values here are defaults, see :mod:`ssit.evaluate.architecture`);
    ``vit`` or ``cnn`` uses ``arch`` and ``model_kwargs`` exactly as given.
    """

    checkpoint: str = RANDOM_ENCODER  # training checkpoint, exported .safetensors, or "random"
    backbone: str = AUTO_BACKBONE  # auto, or a backbone kind: vit, cnn
    arch: str = "vit_small_patch16_224"
    branch: Literal["auto", "query", "momentum"] = "auto"  # auto: the method's own
    img_size: int = 384
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # extra timm create_model kwargs
    # timm:<name>=<file> weights that do not fill the model: load what fits, log what stays random
    allow_partial_load: bool = False
    # Before grading, re-estimate the encoder's BatchNorm running statistics on the training
    # split's images (no augmentation, no gradient, weights unchanged): a random CNN's floor
    # then gets the same calibration as a pre-trained one. Nothing to do for a ViT.
    refresh_batchnorm: bool = False

    def __post_init__(self) -> None:
        if not self.checkpoint:
            raise ValueError("encoder.checkpoint is empty (give a checkpoint path or 'random')")
        if self.img_size < 16:
            raise ValueError(f"encoder.img_size must be at least 16, got {self.img_size}")
        kinds = (AUTO_BACKBONE, *BACKBONE_CONFIGS)
        if self.backbone not in kinds:
            raise ValueError(f"encoder.backbone must be one of {', '.join(kinds)}, "
                             f"got {self.backbone!r}")


@dataclass
class DataConfig:
    """Where the labelled images are and how they are split."""

    dataset: Dataset = "shards"
    path: str = ""
    cache_dir: str = ""  # crop cache for raw datasets; empty: ~/.cache/ssit/crops
    split_seed: int = 0
    split_fractions: list[float] = field(default_factory=lambda: [0.7, 0.1, 0.2])
    split_file: str = ""  # reuse a split.csv written by an earlier run
    # random: per grade by split_fractions and split_seed; voets: Voets et al.'s referable-DR
    # partition of all labelled images (see ssit.evaluate.subsets), drawn with split_seed 42
    split: Literal["random", "voets"] = "random"
    # external test sets, dataset name -> folder: the selected model is also tested on each
    test_sets: dict[str, str] = field(default_factory=dict)
    num_workers: int = 4
    mean: list[float] = field(default_factory=lambda: list(EYEPACS_MEAN))
    std: list[float] = field(default_factory=lambda: list(EYEPACS_STD))

    def __post_init__(self) -> None:
        fractions = self.split_fractions
        if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
            raise ValueError(
                f"data.split_fractions must be three non-negative numbers summing to 1, "
                f"got {fractions}"
            )
        if min(fractions[0], fractions[2]) <= 0:
            raise ValueError("data.split_fractions needs a non-empty train and test part")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("data.mean and data.std need three values each, std positive")
        if self.num_workers < 0:
            raise ValueError("data.num_workers must be >= 0")
        if not 0 <= self.split_seed < SEED_LIMIT:
            raise ValueError(f"data.split_seed must be in [0, 2**63), got {self.split_seed}")
        for name, path in self.test_sets.items():
            if name not in DATASETS:
                raise ValueError(f"data.test_sets: {name!r} is not one of {', '.join(DATASETS)}")
            if not path:
                raise ValueError(f"data.test_sets.{name} has no folder")


@dataclass
class AugmentConfig:
    """Light augmentation for fine-tuning and linear probing."""

    crop_scale: list[float] = field(default_factory=lambda: [0.8, 1.0])
    crop_ratio: list[float] = field(default_factory=lambda: [0.75, 1.3333])
    hflip: float = 0.5
    vflip: float = 0.5
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.1
    hue: float = 0.02
    rotation: float = 180.0  # degrees, uniform in [-rotation, rotation]
    translate: float = 0.05  # fraction of the image side

    def __post_init__(self) -> None:
        refuse_failing([
            number_pair("augment.crop_scale", self.crop_scale, 0, 1, open_low=True),
            number_pair("augment.crop_ratio", self.crop_ratio, 0, 10, open_low=True),
            probability("augment.hflip", self.hflip),
            probability("augment.vflip", self.vflip),
            # torchvision's ColorJitter ranges: factors >= 0, hue a fraction of the circle
            non_negative("augment.brightness", self.brightness),
            non_negative("augment.contrast", self.contrast),
            non_negative("augment.saturation", self.saturation),
            within("augment.hue", self.hue, 0, 0.5),
            within("augment.rotation", self.rotation, 0, 180),
            within("augment.translate", self.translate, 0, 0.5, open_high=True),
        ])


@dataclass
class TrainConfig:
    """Optimisation of the fine-tuning and linear-probe protocols."""

    protocol: Protocol = "finetune"
    epochs: int = 25
    batch_size: int = 16
    eval_batch_size: int = 64
    lr: float | None = None  # None: 2e-5 fine-tune, 2e-3 linear probe
    weight_decay: float | None = None  # None: 1e-5 fine-tune, 0 linear probe
    warmup_epochs: float = 0.0
    head_init_std: float = 0.01
    # The regression head learns at lr * head_lr_scale (1: one rate for all, as in the paper).
    # A larger scale lets a freshly initialised head keep up with a backbone trained slowly.
    head_lr_scale: float = 1.0
    thresholds: list[float] = field(default_factory=lambda: list(REGRESSION_THRESHOLDS))
    device: str = "auto"  # auto (cuda when available), cuda, cpu
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 on cuda, fp32 on cpu
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError("train.epochs, batch_size and eval_batch_size must be >= 1")
        refuse_failing([
            *([learning_rate("train.lr", self.lr)] if self.lr is not None else []),
            non_negative("train.head_init_std", self.head_init_std),
            positive("train.head_lr_scale", self.head_lr_scale),
        ])
        if self.weight_decay is not None and self.weight_decay < 0:
            raise ValueError(f"train.weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError("train.warmup_epochs must be in [0, train.epochs)")
        steps = [b - a for a, b in zip(self.thresholds, self.thresholds[1:], strict=False)]
        if not self.thresholds or min(steps, default=1.0) <= 0:
            raise ValueError(f"train.thresholds must increase strictly, got {self.thresholds}")
        if not 0 <= self.seed < SEED_LIMIT:
            raise ValueError(f"train.seed must be in [0, 2**63), got {self.seed}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"train.device must be auto, cpu or cuda[:N], got {self.device!r}")

    @property
    def base_lr(self) -> float:
        """The learning rate: ``lr`` if given, else the protocol's default."""
        if self.lr is not None:
            return self.lr
        return 2e-3 if self.protocol == "linear" else 2e-5

    @property
    def decay(self) -> float:
        """The weight decay: ``weight_decay`` if given, else the protocol's default."""
        if self.weight_decay is not None:
            return self.weight_decay
        return 0.0 if self.protocol == "linear" else 1e-5


@dataclass
class LinearConfig:
    """Settings of the linear probe only (its optimisation is in :class:`TrainConfig`)."""

    # Standardise the frozen features with a parameter-free BatchNorm before the head (MAE's
    # linear probe); off in the paper's protocol.
    feature_norm: bool = False
    # Encode every image once, without augmentation, and train the head on those stored
    # features: about epochs-times less encoder work, for small CPU runs. Off in the paper's
    # protocol, which trains the head on freshly augmented images every epoch.
    cache_features: bool = False


@dataclass
class KnnConfig:
    """Cosine-similarity kNN on class-token features."""

    ks: list[int] = field(default_factory=lambda: [5, 10, 20])
    temperature: float = 0.07

    def __post_init__(self) -> None:
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"knn.ks must be positive integers, got {self.ks}")
        refuse_failing([temperature("knn.temperature", self.temperature)])


@dataclass
class StageConfig:
    """SGD training of one stage of the semi-supervised protocol (constant learning rate)."""

    epochs: int = 30
    lr: float = 1e-4
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("semisup stage epochs and batch_size must be >= 1")
        refuse_failing([learning_rate("semisup stage lr", self.lr)])
        if self.lr <= 0 or self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise ValueError("semisup stage needs lr > 0, weight_decay >= 0, momentum in [0, 1)")
        if self.nesterov and self.momentum == 0:
            raise ValueError("semisup stage: nesterov needs a positive momentum")


@dataclass
class SemisupConfig:
    """Semi-supervised referable-DR grading with distillation (teacher -> student).

    The labelled subset holds ``labelled_size`` training images (or ``labelled_fraction`` of
    them; set the other to null), half referable. ``student_weights``: ``imagenet`` (timm's,
    where this machine can load them), ``random``, or a local weight file for ``student_arch``.
    """

    labelled_size: int | None = 1000
    labelled_fraction: float | None = None
    subset_seed: int = 42
    head_hidden: int = 512
    teacher: StageConfig = field(default_factory=lambda: StageConfig(
        epochs=30, lr=0.05, nesterov=False, weight_decay=1e-4))
    pseudo_labels: Literal["hard", "soft"] = "hard"
    pseudo_threshold: float = 0.5
    teacher_bn: Literal["eval", "train"] = "eval"
    student_arch: str = "densenet161"
    student_weights: str = "imagenet"
    student_kwargs: dict[str, Any] = field(default_factory=dict)
    student: StageConfig = field(default_factory=lambda: StageConfig(epochs=30))
    student_finetune: StageConfig = field(default_factory=lambda: StageConfig(epochs=99))

    def __post_init__(self) -> None:
        if (self.labelled_size is None) == (self.labelled_fraction is None):
            raise ValueError("semisup: set exactly one of labelled_size and labelled_fraction")
        if self.labelled_size is not None and self.labelled_size < 2:
            raise ValueError("semisup.labelled_size must be at least 2")
        if self.labelled_fraction is not None and not 0 < self.labelled_fraction < 1:
            raise ValueError("semisup.labelled_fraction must be in (0, 1)")
        if not 0 < self.pseudo_threshold < 1:
            raise ValueError("semisup.pseudo_threshold must be in (0, 1)")
        if self.head_hidden < 1:
            raise ValueError("semisup.head_hidden must be >= 1")
        if not self.student_arch or not self.student_weights:
            raise ValueError("semisup.student_arch and student_weights must not be empty")


@dataclass
class GradeConfig:
    """A grading job: encoder, data, augmentation, optimisation, linear probe, kNN and semisup
    settings."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    linear: LinearConfig = field(default_factory=LinearConfig)
    knn: KnnConfig = field(default_factory=KnnConfig)
    semisup: SemisupConfig = field(default_factory=SemisupConfig)

    def __post_init__(self) -> None:
        for key, value in non_finite_values(self).items():
            raise ValueError(f"config key '{key}' must be a finite number, got {value!r}")
