"""SSiT pre-training: configuration, the distributed loop, checkpoints and schedules.

A launcher needs three calls::

    cfg = load_config(PretrainConfig, "ssit_vits16_eyepacs", overrides)
    validate_pretrain_config(cfg, world_size)          # before submitting
    pretrain_main(cfg, run_dir, should_stop=flag.is_set)  # in every rank of the job
"""

from __future__ import annotations

from typing import Any

from ssit.train.checkpoint import (
    CheckpointError,
    list_checkpoints,
    load_checkpoint,
    load_latest_checkpoint,
    save_checkpoint,
)
from ssit.train.config import (
    CheckpointConfig,
    DataConfig,
    LogConfig,
    OptimConfig,
    PretrainConfig,
    resolve_precision,
    validate_pretrain_config,
)
from ssit.train.distributed import (
    DistributedContext,
    DistributedSetupError,
    destroy_distributed,
    init_distributed,
)

# The loop pulls in the model (timm) and the data pipeline (DALI); it is imported on first use so
# that configuration and checkpoint helpers stay light for launchers.
_ENGINE_NAMES = frozenset({"PretrainOutcome", "build_model", "never", "pretrain", "pretrain_main"})


def __getattr__(name: str) -> Any:
    if name in _ENGINE_NAMES:
        from ssit.train import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'ssit.train' has no attribute '{name}'")

__all__ = [
    "CheckpointConfig",
    "CheckpointError",
    "DataConfig",
    "DistributedContext",
    "DistributedSetupError",
    "LogConfig",
    "OptimConfig",
    "PretrainConfig",
    "PretrainOutcome",
    "build_model",
    "destroy_distributed",
    "init_distributed",
    "list_checkpoints",
    "load_checkpoint",
    "load_latest_checkpoint",
    "never",
    "pretrain",
    "pretrain_main",
    "resolve_precision",
    "save_checkpoint",
    "validate_pretrain_config",
]
