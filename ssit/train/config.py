"""The pre-training configuration: a nested dataclass schema with the paper's defaults.

Load it with ``ssit.config.load_config(PretrainConfig, name_or_path, overrides)`` and check it
with :func:`validate_pretrain_config` before anything is submitted or started. ``backbone`` and
``method`` are sections with variants: their ``name`` (``vit``/``cnn``, ``ssit``/``simclr``/
``gravis``) picks the options they accept. Configurations written before backbones and methods
were configurable (sections ``model`` and ``loss``) are read as ``backbone: vit`` and
``method: ssit`` with the same values.

Learning rate: ``optim.lr`` is the rate for a global batch of ``REFERENCE_BATCH_SIZE`` (512, the
paper's setting). With ``optim.scale_lr`` on (the default) the peak rate used for training scales
linearly with the global batch, ``lr * batch_size / 512`` (so the paper's run uses 1e-3 exactly);
with it off, ``optim.lr`` is used as given whatever the batch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ssit.backbones.config import BackboneConfig, ViTConfig
from ssit.config import ConfigError, non_finite_values
from ssit.error_text import first_line
from ssit.methods.config import MethodConfig, SSiTConfig
from ssit.validators import (
    is_number,
    learning_rate,
    refuse_first_failure,
    within,
)

REFERENCE_BATCH_SIZE = 512
# Seeds are stored as signed 64-bit integers by the pipeline and torch.
SEED_LIMIT = 2**63
# The packaged configuration of the paper's run, used when a launcher is given none.
DEFAULT_CONFIG = "ssit_vits16_eyepacs"
# Seconds a rank waits for its peers before the job fails (see ssit.train.distributed).
DEFAULT_TIMEOUT_S = 120.0
# DALI threads per rank: far more than any node's cores only adds contention, and a typing slip
# (e.g. 4000) would ask the cluster for that many cores per task.
MAX_NUM_THREADS = 256
# One step's input tensor on a rank (images x views x 3 x side x side values) must stay below
# what a single tensor can index with 32-bit offsets, as many GPU kernels do.
MAX_STEP_INPUT_VALUES = 2**31 - 1

Device = Literal["auto", "cuda", "cpu"]
Precision = Literal["auto", "bf16", "fp16", "fp32"]


@dataclass
class DataConfig:
    """Where the shards are and how many CPU threads each rank's pipeline uses.

    ``allow_other_shards`` lets a run resume on shards other than those its checkpoint was
    trained on (refused by default).
    """

    shards: str = "shards/eyepacs"
    num_threads: int = 4
    allow_other_shards: bool = False


@dataclass
class OptimConfig:
    """AdamW (or SGD) with linear warm-up then half-cosine decay, evaluated every step.

    ``momentum`` and ``nesterov`` apply to SGD only, ``betas`` to AdamW only. The cosine ends at
    ``min_lr``. ``no_decay_1d`` exempts biases and parameters of at most one dimension (norm
    weights) from weight decay, as DINO and MAE do. ``clip_grad`` limits the global norm of
    all gradients (``clip_mode: global``) or each parameter's own (``per_parameter``, DINO).
    """

    optimizer: Literal["adamw", "sgd"] = "adamw"
    epochs: int = 300
    warmup_epochs: float = 40.0
    batch_size: int = 512
    lr: float = 1e-3
    scale_lr: bool = True
    weight_decay: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    clip_grad: float | None = 1.0
    betas: tuple[float, float] = (0.9, 0.999)
    no_decay_1d: bool = False
    min_lr: float = 0.0
    clip_mode: Literal["global", "per_parameter"] = "global"


@dataclass
class CheckpointConfig:
    """When checkpoints are written and how many are kept (0 or null disables a trigger)."""

    every_minutes: float | None = 30.0
    every_epochs: int | None = 10
    keep: int = 3


@dataclass
class LogConfig:
    """How often scalars and the saliency picture go to the log and TensorBoard."""

    every_steps: int = 50
    image_every_steps: int | None = 1000
    progress_bar: bool = True


@dataclass
class PretrainConfig:
    """Everything a pre-training run needs; defaults are the paper's SSiT ViT-S/16 run."""

    seed: int = 0
    device: Device = "auto"
    precision: Precision = "auto"
    backbone: BackboneConfig = field(default_factory=ViTConfig)
    method: MethodConfig = field(default_factory=SSiTConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def batch_size_per_rank(self, world_size: int) -> int:
        """The per-rank share of the global batch (the batch must divide evenly)."""
        if self.optim.batch_size % world_size:
            raise ConfigError(
                f"optim.batch_size={self.optim.batch_size} is not divisible by the "
                f"{world_size} ranks"
            )
        return self.optim.batch_size // world_size

    @classmethod
    def upgrade_config_values(cls, values: dict[str, Any]) -> dict[str, Any]:
        """Values of an older layout (``model`` and ``loss`` sections) in today's layout."""
        return upgrade_pretrain_values(values)


# Keys of the old ``model`` section that belong to the ViT backbone, with their new names.
_OLD_BACKBONE_KEYS = {"arch": "arch", "img_size": "img_size", "encoder_kwargs": "kwargs"}


def upgrade_pretrain_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """Move an old ``model``/``loss`` layout to ``backbone: vit`` + ``method: ssit``.

    Values already in today's layout are returned unchanged.
    """
    values = dict(values)
    model, loss = values.pop("model", None), values.pop("loss", None)
    if model is None and loss is None:
        return values
    if "backbone" in values or "method" in values:
        raise ConfigError("config mixes the old 'model'/'loss' sections with 'backbone'/'method'")
    model = dict(model or {}) if isinstance(model, Mapping) else model
    loss = dict(loss or {}) if isinstance(loss, Mapping) else loss
    if not isinstance(model, dict) or not isinstance(loss, dict):
        raise ConfigError("config sections 'model' and 'loss' must be mappings")
    backbone = {"name": "vit"}
    for old, new in _OLD_BACKBONE_KEYS.items():
        if old in model:
            backbone[new] = model.pop(old)
    values["backbone"] = backbone
    values["method"] = {"name": "ssit", **model, **loss}
    return values


def resolve_precision(precision: str, device_type: str) -> str:
    """Turn ``auto`` into bf16 on GPU and fp32 on CPU; refuse fp16 without a GPU."""
    if precision == "auto":
        return "bf16" if device_type == "cuda" else "fp32"
    if precision == "fp16" and device_type != "cuda":
        raise ConfigError("precision=fp16 needs a GPU (use fp32 or bf16 on CPU)")
    return precision


def validate_pretrain_config(cfg: PretrainConfig, world_size: int) -> None:
    """Check everything that can be checked before a job starts; raise ConfigError (one line).

    Covers value ranges, the batch split over ``world_size`` ranks and the size of one step,
    the method's options on its backbone (names and pairings, without building a network) and
    the shards (present on disk and enough samples for at least one step per rank). Imports
    neither torch nor timm: :func:`check_method_builds` builds the networks where a job runs.
    """
    if world_size < 1:
        raise ConfigError(f"world size must be at least 1, got {world_size}")
    _check_ranges(cfg)
    if cfg.device == "cpu":
        resolve_precision(cfg.precision, "cpu")
    per_rank = cfg.batch_size_per_rank(world_size)
    _check_step_size(cfg, per_rank)
    try:
        cfg.backbone.check()
        cfg.method.check(cfg.backbone)
    except ValueError as error:
        raise _unusable_method(cfg, error) from None
    _check_shards(cfg.data.shards, per_rank, world_size, cfg.method.needs_saliency_maps)


def _check_ranges(cfg: PretrainConfig) -> None:
    # The sections' own checks word non-finite values themselves; then any NaN or infinity
    # elsewhere, before the range checks that a NaN would pass or fail with a vague message.
    refuse_first_failure(cfg.method.range_checks())
    refuse_first_failure(cfg.backbone.range_checks())
    for key, value in non_finite_values(cfg).items():
        raise ConfigError(f"config key '{key}' must be a finite number, got {value!r}")
    checks = [
        ("seed", cfg.seed, 0 <= cfg.seed < SEED_LIMIT, "in [0, 2**63)"),
        ("optim.epochs", cfg.optim.epochs, cfg.optim.epochs > 0, "> 0"),
        ("optim.warmup_epochs", cfg.optim.warmup_epochs,
         0 <= cfg.optim.warmup_epochs <= cfg.optim.epochs, "in [0, optim.epochs]"),
        ("optim.batch_size", cfg.optim.batch_size, cfg.optim.batch_size > 0, "> 0"),
        learning_rate("optim.lr", cfg.optim.lr),
        within("optim.weight_decay", cfg.optim.weight_decay, 0, 10),
        ("optim.momentum", cfg.optim.momentum, 0 <= cfg.optim.momentum < 1, "in [0, 1)"),
        ("optim.clip_grad", cfg.optim.clip_grad,
         cfg.optim.clip_grad is None or cfg.optim.clip_grad > 0, "> 0 or null"),
        ("checkpoint.every_minutes", cfg.checkpoint.every_minutes,
         cfg.checkpoint.every_minutes is None or cfg.checkpoint.every_minutes >= 0, ">= 0 or null"),
        ("checkpoint.every_epochs", cfg.checkpoint.every_epochs,
         cfg.checkpoint.every_epochs is None or cfg.checkpoint.every_epochs >= 0, ">= 0 or null"),
        ("checkpoint.keep", cfg.checkpoint.keep, cfg.checkpoint.keep >= 1, ">= 1"),
        ("log.every_steps", cfg.log.every_steps, cfg.log.every_steps >= 1, ">= 1"),
        ("log.image_every_steps", cfg.log.image_every_steps,
         cfg.log.image_every_steps is None or cfg.log.image_every_steps >= 0, ">= 0 or null"),
    ]
    if not 1 <= cfg.data.num_threads <= MAX_NUM_THREADS:
        raise ConfigError(
            f"config key 'data.num_threads' must be an integer in [1, {MAX_NUM_THREADS}] (DALI "
            f"threads per rank; use about the CPU cores of one task, this machine has "
            f"{_usable_cores()}), got {cfg.data.num_threads}"
        )
    refuse_first_failure(checks)
    _check_optim_additions(cfg.optim)
    if cfg.optim.nesterov and cfg.optim.optimizer != "sgd":
        raise ConfigError("optim.nesterov applies to optim.optimizer=sgd only")
    if cfg.optim.nesterov and cfg.optim.momentum == 0:
        raise ConfigError("optim.nesterov=true needs optim.momentum > 0 (got 0); set a momentum "
                          "such as 0.9 or optim.nesterov=false")


def _usable_cores() -> int:
    """CPU cores this process may run on (all of the machine's where that is unknown)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _check_optim_additions(optim: OptimConfig) -> None:
    """Refuse AdamW betas outside [0, 1) and a cosine end above the peak learning rate."""
    betas = tuple(optim.betas) if isinstance(optim.betas, (list, tuple)) else (optim.betas,)
    if len(betas) != 2 or not all(is_number(beta) and 0 <= beta < 1 for beta in betas):
        raise ConfigError(f"config key 'optim.betas' must be two numbers in [0, 1), got "
                          f"{list(betas)!r}")
    if optim.optimizer != "adamw" and betas != OptimConfig.betas:
        raise ConfigError("optim.betas applies to optim.optimizer=adamw only")
    peak = (optim.lr * optim.batch_size / REFERENCE_BATCH_SIZE) if optim.scale_lr else optim.lr
    if not (is_number(optim.min_lr) and 0 <= optim.min_lr <= peak):
        raise ConfigError(f"config key 'optim.min_lr' must be in [0, peak lr {peak:.3g}], got "
                          f"{optim.min_lr!r}")


def _check_step_size(cfg: PretrainConfig, per_rank: int) -> None:
    """Refuse a step whose input tensor on one rank is too large to index (see the cap)."""
    views, side = cfg.method.views_per_step, cfg.backbone.img_size
    values = per_rank * views * 3 * side * side
    if values > MAX_STEP_INPUT_VALUES:
        raise ConfigError(
            f"one step on a rank holds {per_rank} images x {views} views x 3 x {side} x {side} "
            f"= {values} input values, over the {MAX_STEP_INPUT_VALUES} one tensor can index; "
            "lower optim.batch_size (or use more ranks), the views per image or backbone.img_size"
        )


def check_method_builds(cfg: PretrainConfig) -> None:
    """Build the method on its backbone on the meta device (no memory, no weights); raise
    ConfigError (one line) when timm or the method refuses the architecture or its options.

    Imports torch and timm: launchers call it just before submitting, not for a dry run.
    """
    import torch

    from ssit.methods import create_method

    try:
        with torch.device("meta"):
            create_method(cfg.method, cfg.backbone)
    except (TypeError, ValueError, AssertionError, RuntimeError) as error:
        raise _unusable_method(cfg, error) from None


def _unusable_method(cfg: PretrainConfig, error: BaseException) -> ConfigError:
    return ConfigError(
        f"method {cfg.method.name} on backbone {cfg.backbone.name} "
        f"'{getattr(cfg.backbone, 'arch', '')}' (img_size {cfg.backbone.img_size}) "
        f"cannot be used: {first_line(error)}"
    )


def _check_shards(spec: str, per_rank: int, world_size: int, with_maps: bool) -> None:
    from ssit.data.shard_index import load_shard_set

    try:
        shard_set = load_shard_set(spec, validate=False, with_maps=with_maps)
    except (OSError, ValueError) as error:
        text = str(error).strip().splitlines()
        raise ConfigError(f"data.shards '{spec}': {text[0] if text else 'unusable'}") from None
    try:
        num_samples = shard_set.num_samples
    finally:
        shard_set.cleanup()
    if num_samples // world_size < per_rank:
        raise ConfigError(
            f"data.shards '{spec}' holds {num_samples} samples: too few for one batch of "
            f"{per_rank} on each of {world_size} ranks"
        )


# What a run's checkpoints hold depends on these settings, so a resumed run may not change them;
# the loss weights are the exception.
RESUME_LOCKED_KEYS = ("seed", "backbone.", "method.", "optim.batch_size", "optim.optimizer",
                      "optim.no_decay_1d")
RESUME_FREE_KEYS = ("method.w_cl", "method.w_ss", "method.ss_decay")


def resume_locked_fields(differing: Sequence[str]) -> list[str]:
    """Those of the dotted keys ``differing`` that a resumed run may not change."""
    return [key for key in differing
            if key.startswith(RESUME_LOCKED_KEYS) and key not in RESUME_FREE_KEYS]


def config_fields_differing(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested config dicts."""
    keys = sorted(set(a) | set(b))
    differing: list[str] = []
    for key in keys:
        left, right = a.get(key), b.get(key)
        if isinstance(left, dict) and isinstance(right, dict):
            differing += config_fields_differing(left, right, f"{prefix}{key}.")
        elif left != right:
            differing.append(f"{prefix}{key}")
    return differing


__all__ = [
    "DEFAULT_CONFIG",
    "REFERENCE_BATCH_SIZE",
    "RESUME_LOCKED_KEYS",
    "CheckpointConfig",
    "DataConfig",
    "LogConfig",
    "OptimConfig",
    "PretrainConfig",
    "check_method_builds",
    "config_fields_differing",
    "resolve_precision",
    "resume_locked_fields",
    "upgrade_pretrain_values",
    "validate_pretrain_config",
]
