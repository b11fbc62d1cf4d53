"""The SSiT pre-training input pipeline: shards -> DALI -> two views with their saliency maps.

`PretrainPipeline` reads the shards with `fn.readers.webdataset` (each rank its own contiguous
part of the shuffled sample order, `shard_id` = global rank), decodes on the GPU (`mixed`) or
the CPU, builds both SSiT views with DALI operators (`ssit.data.augment`) and hands out
`(x1, x2, m1, m2)` torch tensors.

Epochs. With `pad_last_batch` the reader gives every rank the same number of batches per
epoch, `ceil(ceil(N / world) / batch)`, padding the shorter parts with repeats of their last
sample. We hand out only the batches made of real samples on every rank,
`floor(floor(N / world) / batch)` (`len(pipe)`), and run the at most one remaining padded
batch through the pipeline without returning it, so each epoch starts at a reader epoch
boundary and every rank stops after the same number of batches.

State. `state_dict()` is a DALI pipeline checkpoint (reader position, shuffle buffer, random
generators of every operator) taken after the last batch handed out, plus our epoch and batch
counters; a pipeline built with `state=` continues exactly there.
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from nvidia.dali import Pipeline, fn, pipeline_def, types

from ssit.data.augment import (
    EYEPACS_MEAN,
    EYEPACS_STD,
    VIEW1,
    VIEW2,
    ViewAugmentation,
    augment_view,
)
from ssit.data.shard_index import (
    IMAGE_EXT,
    SALIENCY_EXT,
    ShardSet,
    TooFewSamplesError,
    load_shard_set,
)
from ssit.error_text import first_line

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]

_STATE_FORMAT = 1
_READER = "shards"


class PipelineStateError(ValueError):
    """A saved pipeline state does not belong to this pipeline or is damaged."""


class PipelineRunError(RuntimeError):
    """DALI failed while producing a batch."""


class SampleDecodeError(PipelineRunError):
    """DALI failed to decode, yet every sample decodes on its own (nothing left to replace)."""


def rank_seed(seed: int, rank: int) -> int:
    """A 31-bit seed mixing the run seed and the global rank (distinct per rank)."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0] % (2**31 - 1))


def epoch_batches(num_samples: int, world_size: int, batch_size: int) -> int:
    """Full batches per epoch that every rank can fill with real samples."""
    return (num_samples // world_size) // batch_size


def reader_epoch_batches(num_samples: int, world_size: int, batch_size: int) -> int:
    """Batches the padded reader produces per epoch on every rank."""
    per_rank = -(-num_samples // world_size)
    return -(-per_rank // batch_size)


def build_dali_pipeline(
    shard_set: ShardSet,
    batch_size: int,
    *,
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
    view1: ViewAugmentation,
    view2: ViewAugmentation,
    with_source: bool = False,
    checkpoint: bytes | None = None,
) -> Pipeline:
    """The DALI graph: read, decode, two augmented views and maps (+ sample source if asked).

    Outputs `x1, x2, m1, m2` (float32 CHW) and, with `with_source`, each sample's source
    description (`<tar path>:<component>` bytes) as a fifth output.
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
        ext=[IMAGE_EXT, SALIENCY_EXT],
        missing_component_behavior="error",
        shard_id=rank,
        num_shards=world_size,
        random_shuffle=True,
        initial_fill=min(1024, max(batch_size, shard_set.num_samples // world_size)),
        pad_last_batch=True,
        **shard_order_shuffle,
        seed=rank_seed(seed + 1, rank),
        name=_READER,
    )
    return _ssit_graph(
        reader,
        "mixed" if gpu else "cpu",
        view1,
        view2,
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
def _ssit_graph(
    reader: dict,
    decoder: str,
    view1: ViewAugmentation,
    view2: ViewAugmentation,
    img_size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    with_source: bool,
) -> tuple:
    jpeg, png = fn.readers.webdataset(**reader)
    image_shape = fn.peek_image_shape(jpeg)
    image = fn.decoders.image(jpeg, device=decoder, output_type=types.RGB)
    saliency = fn.decoders.image(png, device=decoder, output_type=types.GRAY)
    x1, m1 = augment_view(image, saliency, image_shape, view1, img_size, mean, std)
    x2, m2 = augment_view(image, saliency, image_shape, view2, img_size, mean, std)
    if with_source:
        return x1, x2, m1, m2, fn.get_property(jpeg, key="source_info")
    return x1, x2, m1, m2


class PretrainPipeline:
    """Both SSiT views and their saliency maps, batch by batch, from webdataset shards.

    `batch_size` is per rank. Iterating yields exactly `len(self)` batches of
    `(x1, x2, m1, m2)`: images `(B, 3, S, S)` float32 normalised with `mean`/`std`, maps
    `(B, 1, S, S)` float32 in [0, 1], on `cuda:<device_id>` (default: the current CUDA device)
    or the CPU. Each `for` loop runs to the end of the current epoch; the next `for` continues
    with the next epoch. `view1`/`view2` hold the augmentation parameters (the paper's defaults).
    `validate` checks every sample's bytes up front and leaves out unusable ones with a warning.
    """

    def __init__(
        self,
        shards: str | Path | Sequence[str | Path],
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        device: Literal["cuda", "cpu"] = "cuda",
        seed: int = 0,
        img_size: int = 224,
        num_threads: int = 4,
        prefetch: int = 2,
        mean: Sequence[float] = EYEPACS_MEAN,
        std: Sequence[float] = EYEPACS_STD,
        state: bytes | str | None = None,
        view1: ViewAugmentation = VIEW1,
        view2: ViewAugmentation = VIEW2,
        device_id: int | None = None,
        validate: bool = True,
        with_source: bool = False,
    ) -> None:
        if device not in ("cuda", "cpu"):
            raise ValueError(f"device must be 'cuda' or 'cpu', got {device!r}")
        if batch_size < 1 or img_size < 1 or num_threads < 1 or prefetch < 1:
            raise ValueError("batch_size, img_size, num_threads and prefetch must be >= 1")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got {rank} of {world_size}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError("mean and std need three values each, std > 0")
        if device == "cuda":
            if not torch.cuda.is_available():
                raise RuntimeError("device='cuda' but CUDA is not available; use device='cpu'")
            device_id = torch.cuda.current_device() if device_id is None else device_id

        self.shard_set = load_shard_set(shards, validate=validate)
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.device = torch.device("cuda", device_id) if device == "cuda" else torch.device("cpu")
        self.with_source = with_source
        n = self.shard_set.num_samples
        if n < world_size:
            raise TooFewSamplesError(f"{n} usable samples cannot be split over {world_size} ranks")
        self._len = epoch_batches(n, world_size, batch_size)
        if self._len == 0:
            raise TooFewSamplesError(
                f"{n} usable samples give no full batch of {batch_size} on each of "
                f"{world_size} rank(s); lower the batch size"
            )
        self._drain = reader_epoch_batches(n, world_size, batch_size) - self._len
        self._fingerprint = {
            "num_samples": n,
            "world_size": world_size,
            "rank": rank,
            "batch_size": batch_size,
            "seed": seed,
            "img_size": img_size,
            "with_source": with_source,
        }
        self.epoch = 0
        self.batches_seen = 0
        self._build_args = dict(
            rank=rank,
            world_size=world_size,
            device=device,
            device_id=device_id,
            seed=seed,
            img_size=img_size,
            num_threads=num_threads,
            prefetch=prefetch,
            mean=tuple(mean),
            std=tuple(std),
            view1=view1,
            view2=view2,
            with_source=with_source,
        )
        self._pipe = self._build(None if state is None else self._apply_state(state))
        self.last_sources: list[str] = []
        log.info(
            "pipeline rank %d/%d: %d samples in %d shards, %d batches of %d per epoch (%s)",
            rank,
            world_size,
            n,
            len(self.shard_set.tar_paths),
            self._len,
            batch_size,
            self.device,
        )

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[Batch]:
        if self.batches_seen >= self._len:
            self._finish_epoch()
        while self.batches_seen < self._len:
            batch = self._next_batch()
            self.batches_seen += 1
            yield batch
        self._finish_epoch()

    def state_dict(self) -> str:
        """The position after the last batch handed out, as an ASCII string."""
        payload = {
            "format": _STATE_FORMAT,
            "epoch": self.epoch,
            "batches_seen": self.batches_seen,
            "fingerprint": self._fingerprint,
            "dali": base64.b64encode(self._pipe.checkpoint()).decode("ascii"),
        }
        return json.dumps(payload)

    def load_state_dict(self, state: bytes | str) -> None:
        """Continue from a saved state (rebuilds the DALI pipeline from its checkpoint)."""
        checkpoint = self._apply_state(state)
        self._pipe = self._build(checkpoint)

    def close(self) -> None:
        """Release the DALI pipeline and the rewritten index files."""
        self._pipe = None
        self.shard_set.cleanup()

    def _build(self, checkpoint: bytes | None) -> Pipeline:
        pipe = build_dali_pipeline(
            self.shard_set, self.batch_size, checkpoint=checkpoint, **self._build_args
        )
        try:
            pipe.build()
        except RuntimeError as exc:
            if checkpoint is None:
                raise
            raise PipelineStateError(
                f"saved pipeline state does not fit this pipeline: {_dali_reason(exc)}"
            ) from None
        return pipe

    def _apply_state(self, state: bytes | str) -> bytes:
        try:
            payload = json.loads(state)
            if payload.get("format") != _STATE_FORMAT:
                raise PipelineStateError("unsupported pipeline state format")
            checkpoint = base64.b64decode(payload["dali"], validate=True)
            epoch, seen = int(payload["epoch"]), int(payload["batches_seen"])
            fingerprint = payload["fingerprint"]
        except (ValueError, KeyError, TypeError) as exc:
            if isinstance(exc, PipelineStateError):
                raise
            raise PipelineStateError(f"damaged pipeline state: {exc}") from None
        if fingerprint != self._fingerprint:
            diff = {
                k: (v, self._fingerprint.get(k))
                for k, v in fingerprint.items()
                if self._fingerprint.get(k) != v
            }
            raise PipelineStateError(
                f"pipeline state belongs to another setup (saved, now): {diff}"
            )
        self.epoch, self.batches_seen = epoch, seen
        return checkpoint

    def _run(self) -> tuple:
        """One pipeline iteration; a sample DALI cannot decode is replaced and the batch redone."""
        checkpoint = self._pipe.checkpoint()
        try:
            return self._pipe.run()
        except RuntimeError as exc:
            reason = _dali_reason(exc)
            if not _is_decode_failure(exc):
                raise PipelineRunError(
                    f"DALI failed in epoch {self.epoch}, batch {self.batches_seen}: {reason}"
                ) from exc
        log.warning(
            "DALI failed (%s) in epoch %d, batch %d; looking for undecodable samples",
            reason,
            self.epoch,
            self.batches_seen,
        )
        replaced = self.shard_set.replace_undecodable()
        if not replaced:
            raise SampleDecodeError(
                f"DALI failed in epoch {self.epoch}, batch {self.batches_seen} and every sample "
                f"decodes: {reason}"
            )
        log.warning(
            "replaced %d undecodable sample(s) by a neighbour: %s",
            len(replaced),
            ", ".join(replaced[:5]) + (" ..." if len(replaced) > 5 else ""),
        )
        self._pipe = self._build(checkpoint)
        return self._run()

    def _next_batch(self) -> Batch:
        outputs = self._run()
        if self.with_source:
            sources = outputs[4]
            self.last_sources = [
                bytes(np.asarray(sources[i])).decode() for i in range(len(sources))
            ]
        x1, x2, m1, m2 = (self._to_torch(out) for out in outputs[:4])
        return x1, x2, m1, m2

    def _to_torch(self, output: object) -> torch.Tensor:
        dense = output.as_tensor()  # type: ignore[attr-defined]
        if self.device.type == "cuda":
            with torch.cuda.device(self.device):
                return torch.from_dlpack(dense)
        return torch.from_dlpack(dense)

    def _finish_epoch(self) -> None:
        for _ in range(self._drain):
            self._run()
        self.epoch += 1
        self.batches_seen = 0


def _dali_reason(exc: RuntimeError) -> str:
    """The informative line of a DALI error (the one after 'encountered:'), else the first."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for before, after in itertools.pairwise(lines):
        if before == "encountered:":
            return after
    return first_line(exc)


def _is_decode_failure(exc: RuntimeError) -> bool:
    text = str(exc)
    return "fn.decoders.image" in text or "fn.peek_image_shape" in text
