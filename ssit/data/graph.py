"""The DALI graph of the pre-training pipeline: read, decode, then every view of every image.

One graph serves any view recipe: the image (and the saliency map, when at least one view asks
for it) is read and decoded once per sample, then each view applies its own augmentation
(`ssit.data.augment`) to it. When no view needs a map, the `sal.png` component is not read.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from nvidia.dali import Pipeline, fn, pipeline_def, types

from ssit.data.augment import augment_view
from ssit.data.shard_index import IMAGE_EXT, SALIENCY_EXT, ShardSet
from ssit.data.views import ViewSpec

READER_NAME = "shards"


def rank_seed(seed: int, rank: int) -> int:
    """A 31-bit seed mixing the run seed and the global rank (distinct per rank)."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0] % (2**31 - 1))


def needs_maps(views: tuple[ViewSpec, ...]) -> bool:
    """Whether any view asks for its saliency map (and so the shards must hold them)."""
    return any(view.with_map for view in views)


def build_dali_pipeline(
    shard_set: ShardSet,
    batch_size: int,
    *,
    views: tuple[ViewSpec, ...],
    rank: int,
    world_size: int,
    device: Literal["cuda", "cpu"],
    device_id: int | None,
    seed: int,
    img_size: int,
    num_threads: int,
    prefetch: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    with_source: bool = False,
    checkpoint: bytes | None = None,
) -> Pipeline:
    """The DALI pipeline for `views` (+ each sample's source if asked).

    Outputs, all float32 CHW: the image of every view in view order, then the map of every
    view that has one, in view order, then (with `with_source`) each sample's source
    description (`<tar path>:<component>` bytes).
    """
    gpu = device == "cuda"
    # Reshuffling the order of the tars each epoch (same seed on every rank) gives each rank a
    # different part of the data every epoch; with one tar there is nothing to reorder.
    shard_order_shuffle = (
        {"shuffle_after_epoch": True, "shuffle_after_epoch_seed": seed}
        if len(shard_set.tar_paths) > 1
        else {}
    )
    reader = dict(
        paths=[str(p) for p in shard_set.tar_paths],
        index_paths=[str(p) for p in shard_set.index_paths],
        # A reader of one component returns one node, of two a list of both.
        ext=[IMAGE_EXT, SALIENCY_EXT] if needs_maps(views) else [IMAGE_EXT],
        missing_component_behavior="error",
        shard_id=rank,
        num_shards=world_size,
        random_shuffle=True,
        initial_fill=min(1024, max(batch_size, shard_set.num_samples // world_size)),
        pad_last_batch=True,
        **shard_order_shuffle,
        seed=rank_seed(seed + 1, rank),
        name=READER_NAME,
    )
    return _views_graph(
        reader,
        "mixed" if gpu else "cpu",
        views,
        img_size,
        mean,
        std,
        with_source,
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=device_id if gpu else None,
        seed=rank_seed(seed, rank),
        prefetch_queue_depth=prefetch,
        enable_checkpointing=True,
        checkpoint=checkpoint,
    )


@pipeline_def(enable_conditionals=True)
def _views_graph(
    reader: dict,
    decoder: str,
    views: tuple[ViewSpec, ...],
    img_size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    with_source: bool,
) -> tuple:
    components = fn.readers.webdataset(**reader)
    jpeg = components[0] if needs_maps(views) else components
    image_shape = fn.peek_image_shape(jpeg)
    image = fn.decoders.image(jpeg, device=decoder, output_type=types.RGB)
    saliency = (
        fn.decoders.image(components[1], device=decoder, output_type=types.GRAY)
        if needs_maps(views)
        else None
    )
    images, maps = [], []
    for view in views:
        x, m = augment_view(
            image,
            saliency if view.with_map else None,
            image_shape,
            view.augmentation,
            view.output_size(img_size),
            mean,
            std,
        )
        images.append(x)
        if m is not None:
            maps.append(m)
    outputs = [*images, *maps]
    if with_source:
        outputs.append(fn.get_property(jpeg, key="source_info"))
    return tuple(outputs)
