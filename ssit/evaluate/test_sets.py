"""External test sets and encoder sources given by name rather than by file.

``data.test_sets`` maps a dataset name to its folder; every image of such a dataset, whatever
its own split, is a test image (e.g. train on EyePACS, test on all of Messidor-2).
``--checkpoint timm:<name>[=<file>]`` names a timm model (see :mod:`ssit.backbones.foreign`).
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from ssit.backbones.checkpoint_error import CheckpointError
from ssit.backbones.names import TIMM_PREFIX
from ssit.evaluate.architecture import (
    EncoderError,
    EncoderSource,
    load_encoder_source,
    timm_model_kwargs,
)
from ssit.evaluate.config import DataConfig, EncoderConfig
from ssit.evaluate.crops import default_cache_dir
from ssit.evaluate.datasets import crop_items, log_class_counts
from ssit.evaluate.layouts import LAYOUTS, DatasetError, GradedImage


def is_timm_source(checkpoint: str) -> bool:
    """Whether ``checkpoint`` names a timm model (``timm:<name>[=<file>]``)."""
    return checkpoint.startswith(TIMM_PREFIX)


def read_encoder_source(checkpoint: str, encoder: EncoderConfig | None = None,
                        explicit: Collection[str] | None = None) -> EncoderSource | None:
    """Like :func:`load_encoder_source`, also for ``timm:<name>[=<file>]``.

    A timm model is built with the model_kwargs of ``encoder`` (only those in ``explicit``
    where given, see :func:`ssit.evaluate.architecture.timm_model_kwargs`) and honours its
    ``allow_partial_load``.
    """
    if not is_timm_source(checkpoint):
        return load_encoder_source(checkpoint)
    from ssit.backbones.extract import saved_backbone_config
    from ssit.backbones.foreign import timm_checkpoint

    try:
        contents = timm_checkpoint(
            checkpoint, timm_model_kwargs(encoder, explicit),
            allow_partial=encoder is not None and encoder.allow_partial_load)
        return EncoderSource(Path(checkpoint), contents, saved_backbone_config(contents))
    except (CheckpointError, ValueError) as error:
        raise EncoderError(str(error)) from None


def check_test_sets(cfg: DataConfig) -> None:
    """Each external test set's folder exists and has its dataset's layout (DatasetError)."""
    for name, folder in cfg.test_sets.items():
        root = Path(folder).expanduser()
        if not root.exists():
            raise DatasetError(f"test set {name}: {root} does not exist")
        LAYOUTS[name](root)


def load_test_sets(cfg: DataConfig) -> dict[str, list[GradedImage]]:
    """Every image of each external test set (raw photographs replaced by their crops)."""
    sets: dict[str, list[GradedImage]] = {}
    cache_dir = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()
    for name, folder in cfg.test_sets.items():
        layout = LAYOUTS[name](Path(folder).expanduser())
        items = [item for part in layout.values() for item in part]
        if not items:
            raise DatasetError(f"test set {name}: {folder} holds no images")
        log_class_counts(name, "external test", items)
        sets[name] = items if name == "shards" else crop_items(items, cache_dir, cfg.num_workers)
    return sets
