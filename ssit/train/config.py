"""The pre-training configuration: a nested dataclass schema with the paper's defaults.

Load it with ``ssit.config.load_config(PretrainConfig, name_or_path, overrides)`` and check it
with :func:`validate_pretrain_config` before anything is submitted or started.

Learning rate: ``optim.lr`` is the rate for a global batch of ``REFERENCE_BATCH_SIZE`` (512, the
paper's setting). With ``optim.scale_lr`` on (the default) the peak rate used for training scales
linearly with the global batch, ``lr * batch_size / 512`` (so the paper's run uses 1e-3 exactly);
with it off, ``optim.lr`` is used as given whatever the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ssit.config import ConfigError, non_finite_values

REFERENCE_BATCH_SIZE = 512
# Seeds are stored as signed 64-bit integers by the pipeline and torch.
SEED_LIMIT = 2**63
POOL_MODES = ("max", "avg", None)
# The packaged configuration of the paper's run, used when a launcher is given none.
DEFAULT_CONFIG = "ssit_vits16_eyepacs"

Device = Literal["auto", "cuda", "cpu"]
Precision = Literal["auto", "bf16", "fp16", "fp32"]


@dataclass
class ModelConfig:
    """The SSiT model: backbone, key selection, heads and contrastive temperature."""

    arch: str = "vit_small_patch16_224"
    img_size: int = 224
    mask_ratio: float = 0.25
    temperature: float = 0.2
    saliency_threshold: float = 0.5
    pool: str | None = "max"
    proj_dim: int = 256
    mlp_dim: int = 4096
    segmentation: bool = True
    momentum: float = 0.99
    encoder_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    """Where the shards are and how many CPU threads each rank's pipeline uses."""

    shards: str = "shards/eyepacs"
    num_threads: int = 4


@dataclass
class OptimConfig:
    """AdamW with linear warm-up then half-cosine decay, evaluated every step."""

    epochs: int = 300
    warmup_epochs: float = 40.0
    batch_size: int = 512
    lr: float = 1e-3
    scale_lr: bool = True
    weight_decay: float = 0.1
    clip_grad: float | None = 1.0


@dataclass
class LossConfig:
    """Weights of the contrastive and saliency-segmentation losses."""

    w_cl: float = 1.0
    w_ss: float = 10.0
    ss_decay: bool = False


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
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
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


def resolve_precision(precision: str, device_type: str) -> str:
    """Turn ``auto`` into bf16 on GPU and fp32 on CPU; refuse fp16 without a GPU."""
    if precision == "auto":
        return "bf16" if device_type == "cuda" else "fp32"
    if precision == "fp16" and device_type != "cuda":
        raise ConfigError("precision=fp16 needs a GPU (use fp32 or bf16 on CPU)")
    return precision


def validate_pretrain_config(cfg: PretrainConfig, world_size: int) -> None:
    """Check everything that can be checked before a job starts; raise ConfigError (one line).

    Covers value ranges, the batch split over ``world_size`` ranks, the architecture (known to
    timm, a ViT whose patch size divides the image size) and the shards (present on disk and
    enough samples for at least one step per rank).
    """
    if world_size < 1:
        raise ConfigError(f"world size must be at least 1, got {world_size}")
    _check_ranges(cfg)
    if cfg.device == "cpu":
        resolve_precision(cfg.precision, "cpu")
    per_rank = cfg.batch_size_per_rank(world_size)
    _check_arch(cfg.model)
    _check_shards(cfg.data.shards, per_rank, world_size)


def _check_ranges(cfg: PretrainConfig) -> None:
    for key, value in non_finite_values(cfg).items():
        raise ConfigError(f"config key '{key}' must be a finite number, got {value!r}")
    checks = [
        ("seed", cfg.seed, 0 <= cfg.seed < SEED_LIMIT, "in [0, 2**63)"),
        ("model.pool", cfg.model.pool, cfg.model.pool in POOL_MODES, "'max', 'avg' or null"),
        ("model.img_size", cfg.model.img_size, cfg.model.img_size > 0, "> 0"),
        ("model.mask_ratio", cfg.model.mask_ratio, 0 <= cfg.model.mask_ratio < 1, "in [0, 1)"),
        ("model.temperature", cfg.model.temperature, cfg.model.temperature > 0, "> 0"),
        ("model.saliency_threshold", cfg.model.saliency_threshold,
         0 <= cfg.model.saliency_threshold <= 1, "in [0, 1]"),
        ("model.proj_dim", cfg.model.proj_dim, cfg.model.proj_dim > 0, "> 0"),
        ("model.mlp_dim", cfg.model.mlp_dim, cfg.model.mlp_dim > 0, "> 0"),
        ("model.momentum", cfg.model.momentum, 0 <= cfg.model.momentum <= 1, "in [0, 1]"),
        ("data.num_threads", cfg.data.num_threads, cfg.data.num_threads > 0, "> 0"),
        ("optim.epochs", cfg.optim.epochs, cfg.optim.epochs > 0, "> 0"),
        ("optim.warmup_epochs", cfg.optim.warmup_epochs,
         0 <= cfg.optim.warmup_epochs <= cfg.optim.epochs, "in [0, optim.epochs]"),
        ("optim.batch_size", cfg.optim.batch_size, cfg.optim.batch_size > 0, "> 0"),
        ("optim.lr", cfg.optim.lr, cfg.optim.lr > 0, "> 0"),
        ("optim.weight_decay", cfg.optim.weight_decay, cfg.optim.weight_decay >= 0, ">= 0"),
        ("optim.clip_grad", cfg.optim.clip_grad,
         cfg.optim.clip_grad is None or cfg.optim.clip_grad > 0, "> 0 or null"),
        ("loss.w_cl", cfg.loss.w_cl, cfg.loss.w_cl >= 0, ">= 0"),
        ("loss.w_ss", cfg.loss.w_ss, cfg.loss.w_ss >= 0, ">= 0"),
        ("checkpoint.every_minutes", cfg.checkpoint.every_minutes,
         cfg.checkpoint.every_minutes is None or cfg.checkpoint.every_minutes >= 0, ">= 0 or null"),
        ("checkpoint.every_epochs", cfg.checkpoint.every_epochs,
         cfg.checkpoint.every_epochs is None or cfg.checkpoint.every_epochs >= 0, ">= 0 or null"),
        ("checkpoint.keep", cfg.checkpoint.keep, cfg.checkpoint.keep >= 1, ">= 1"),
        ("log.every_steps", cfg.log.every_steps, cfg.log.every_steps >= 1, ">= 1"),
        ("log.image_every_steps", cfg.log.image_every_steps,
         cfg.log.image_every_steps is None or cfg.log.image_every_steps >= 0, ">= 0 or null"),
    ]
    for key, value, ok, expected in checks:
        if not ok:
            raise ConfigError(f"config key '{key}' must be {expected}, got {value!r}")
    if cfg.model.segmentation is False and cfg.loss.w_ss > 0:
        raise ConfigError("loss.w_ss must be 0 when model.segmentation is false")


def _check_arch(model: ModelConfig) -> None:
    import torch

    from ssit.model import create_vit

    try:
        with torch.device("meta"):
            create_vit(model.arch, model.img_size, encoder_kwargs=model.encoder_kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError) as error:
        text = str(error).strip().splitlines()
        raise ConfigError(
            f"model.arch '{model.arch}' (img_size {model.img_size}) cannot be used: "
            f"{text[0] if text else type(error).__name__}"
        ) from None


def _check_shards(spec: str, per_rank: int, world_size: int) -> None:
    from ssit.data.shard_index import load_shard_set

    try:
        shard_set = load_shard_set(spec, validate=False)
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


# What a run's checkpoints hold depends on these settings, so a resumed run may not change them.
RESUME_LOCKED_KEYS = ("seed", "model.", "optim.batch_size")


def resume_locked_fields(differing: Sequence[str]) -> list[str]:
    """Those of the dotted keys ``differing`` that a resumed run may not change."""
    return [key for key in differing if key.startswith(RESUME_LOCKED_KEYS)]


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
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "PretrainConfig",
    "config_fields_differing",
    "resolve_precision",
    "resume_locked_fields",
    "validate_pretrain_config",
]
