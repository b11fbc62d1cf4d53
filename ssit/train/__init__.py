"""SSiT pre-training: configuration, the distributed loop, checkpoints and schedules.

A launcher needs three calls::

    cfg = load_config(PretrainConfig, "ssit_vits16_eyepacs", overrides)
    validate_pretrain_config(cfg, world_size)          # before submitting
    pretrain_main(cfg, run_dir, should_stop=flag.is_set)  # in every rank of the job
"""

from __future__ import annotations

import importlib
from typing import Any

from ssit.train.config import (
    CheckpointConfig,
    DataConfig,
    LogConfig,
    OptimConfig,
    PretrainConfig,
    resolve_precision,
    validate_pretrain_config,
)

# Checkpoints, the process group and the loop pull in torch, the model (timm) and the data
# pipeline (DALI); they are imported on first use so that configuration checks stay light.
_LAZY = {
    **dict.fromkeys(("CheckpointError", "list_checkpoints", "load_checkpoint",
                     "load_latest_checkpoint", "save_checkpoint"), "ssit.train.checkpoint"),
    **dict.fromkeys(("DistributedContext", "DistributedSetupError", "destroy_distributed",
                     "init_distributed"), "ssit.train.distributed"),
    **dict.fromkeys(("PretrainOutcome", "build_model", "never", "pretrain", "pretrain_main"),
                    "ssit.train.engine"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
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
