"""Pre-training input: DALI reads the shards and produces both SSiT views with their maps."""

from __future__ import annotations

from ssit.data.augment import (
    EYEPACS_MEAN,
    EYEPACS_STD,
    VIEW1,
    VIEW2,
    AugmentationConfigError,
    ViewAugmentation,
)
from ssit.data.pipeline import (
    PipelineRunError,
    PipelineStateError,
    PretrainPipeline,
    SampleDecodeError,
    epoch_batches,
    rank_seed,
)
from ssit.data.shard_index import (
    MissingIndexError,
    MissingSaliencyError,
    NoShardsError,
    ShardError,
    TooFewSamplesError,
    UndecodableShardError,
    load_shard_set,
)

__all__ = [
    "EYEPACS_MEAN",
    "EYEPACS_STD",
    "VIEW1",
    "VIEW2",
    "AugmentationConfigError",
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
    "epoch_batches",
    "load_shard_set",
    "rank_seed",
]
