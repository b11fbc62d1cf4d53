"""Pre-training input: DALI reads the shards and produces the views a method asks for.

The view recipe (`ViewSpec`, `ViewAugmentation`, `SSIT_VIEWS`, `ViewBatch`) lives in
`ssit.data.views` and imports without DALI; everything else here loads DALI on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ssit.data.views import (
    SSIT_VIEWS,
    VIEW1,
    VIEW2,
    AugmentationConfigError,
    ViewAugmentation,
    ViewBatch,
    ViewSpec,
)

if TYPE_CHECKING:
    from ssit.data.graph import rank_seed
    from ssit.data.pipeline import (
        PipelineRunError,
        PipelineStateError,
        PretrainPipeline,
        SampleDecodeError,
        epoch_batches,
    )
    from ssit.data.shard_index import (
        IndexMismatchError,
        MissingIndexError,
        MissingSaliencyError,
        NoShardsError,
        ShardError,
        TooFewSamplesError,
        UndecodableShardError,
        load_shard_set,
    )
    from ssit.prepare.statistics import EYEPACS_MEAN, EYEPACS_STD

_LAZY = {
    "EYEPACS_MEAN": "ssit.prepare.statistics",
    "EYEPACS_STD": "ssit.prepare.statistics",
    "rank_seed": "ssit.data.graph",
    "PipelineRunError": "ssit.data.pipeline",
    "PipelineStateError": "ssit.data.pipeline",
    "PretrainPipeline": "ssit.data.pipeline",
    "SampleDecodeError": "ssit.data.pipeline",
    "epoch_batches": "ssit.data.pipeline",
    "IndexMismatchError": "ssit.data.shard_index",
    "MissingIndexError": "ssit.data.shard_index",
    "MissingSaliencyError": "ssit.data.shard_index",
    "NoShardsError": "ssit.data.shard_index",
    "ShardError": "ssit.data.shard_index",
    "TooFewSamplesError": "ssit.data.shard_index",
    "UndecodableShardError": "ssit.data.shard_index",
    "load_shard_set": "ssit.data.shard_index",
}


def __getattr__(name: str) -> object:
    """Import the DALI-dependent parts only when one of their names is asked for."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)


__all__ = [
    "EYEPACS_MEAN",
    "EYEPACS_STD",
    "SSIT_VIEWS",
    "VIEW1",
    "VIEW2",
    "AugmentationConfigError",
    "IndexMismatchError",
    "MissingIndexError",
    "MissingSaliencyError",
    "NoShardsError",
    "PipelineRunError",
    "PipelineStateError",
    "PretrainPipeline",
    "SampleDecodeError",
    "ShardError",
    "TooFewSamplesError",
    "UndecodableShardError",
    "ViewAugmentation",
    "ViewBatch",
    "ViewSpec",
    "epoch_batches",
    "load_shard_set",
    "rank_seed",
]
