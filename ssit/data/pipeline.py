"""The pre-training input pipeline: shards -> DALI -> the views a method asks for.

`PretrainPipeline` reads the shards with `fn.readers.webdataset` (each rank its own contiguous
part of the shuffled sample order, `shard_id` = global rank), decodes on the GPU (`mixed`) or
the CPU, builds every view of the recipe (`ssit.data.views.ViewSpec`, e.g. the two SSiT views
with their saliency maps) in one DALI graph (`ssit.data.graph`) and hands out `ViewBatch`es of
torch tensors. All views of an image come from one sample, so they sit at the same position of
the same batch on the same rank.

Epochs. With `pad_last_batch` the reader gives every rank the same number of batches per
epoch, `ceil(ceil(N / world) / batch)`, padding the shorter parts with repeats of their last
sample. We hand out only the batches made of real samples on every rank,
`floor(floor(N / world) / batch)` (`len(pipe)`), and run the at most one remaining padded
batch through the pipeline without returning it, so each epoch starts at a reader epoch
boundary and every rank stops after the same number of batches.

State. `state_dict()` is a DALI pipeline checkpoint (reader position, shuffle buffer, random
generators of every operator) taken after the last batch handed out, plus our epoch and batch
counters; a pipeline built with `state=` continues exactly there. The state carries a
fingerprint of the setup (sample count, ranks, batch size, seed, size and the views), and a
state from another setup is refused.
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
from nvidia.dali import Pipeline

from ssit.data.graph import build_dali_pipeline, needs_maps
from ssit.data.shard_index import TooFewSamplesError, load_shard_set
from ssit.data.views import SSIT_VIEWS, ViewBatch, ViewSpec, views_fingerprint
from ssit.error_text import first_line
from ssit.prepare.statistics import EYEPACS_MEAN, EYEPACS_STD

log = logging.getLogger(__name__)

_STATE_FORMAT = 1


class PipelineStateError(ValueError):
    """A saved pipeline state does not belong to this pipeline or is damaged."""


class PipelineRunError(RuntimeError):
    """DALI failed while producing a batch."""


class SampleDecodeError(PipelineRunError):
    """DALI failed to decode, yet every sample decodes on its own (nothing left to replace)."""


def epoch_batches(num_samples: int, world_size: int, batch_size: int) -> int:
    """Full batches per epoch that every rank can fill with real samples."""
    return (num_samples // world_size) // batch_size


def reader_epoch_batches(num_samples: int, world_size: int, batch_size: int) -> int:
    """Batches the padded reader produces per epoch on every rank."""
    per_rank = -(-num_samples // world_size)
    return -(-per_rank // batch_size)


class PretrainPipeline:
    """Every view of every image, batch by batch, from webdataset shards.

    `views` is the recipe: one `ViewSpec` per view (its augmentation, with or without its
    saliency map); the default is the SSiT paper's two views with maps. `batch_size` counts
    images per rank (each gives `len(views)` views). Iterating yields exactly `len(self)`
    `ViewBatch(images, maps)`: `images[v]` `(B, 3, S, S)` float32 normalised with `mean`/`std`,
    `maps[v]` `(B, 1, S, S)` float32 in [0, 1] or None for a view without map, on
    `cuda:<device_id>` (default: the current CUDA device) or the CPU; row i of every view is
    the same image. Each `for` loop runs to the end of the current epoch; the next `for`
    continues with the next epoch. When no view has a map, the shards need no `sal.png`.
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
        views: Sequence[ViewSpec] = SSIT_VIEWS,
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
        views = tuple(views)
        if not views or not all(isinstance(view, ViewSpec) for view in views):
            raise ValueError("views must be a non-empty sequence of ViewSpec")
        if device == "cuda":
            if not torch.cuda.is_available():
                raise RuntimeError("device='cuda' but CUDA is not available; use device='cpu'")
            device_id = torch.cuda.current_device() if device_id is None else device_id

        self.shard_set = load_shard_set(shards, validate=validate, with_maps=needs_maps(views))
        self.views = views
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
            "views": views_fingerprint(views),
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
            views=views,
            with_source=with_source,
        )
        self._pipe = self._build(None if state is None else self._apply_state(state))
        self.last_sources: list[str] = []
        log.info(
            "pipeline rank %d/%d: %d samples in %d shards, %d batches of %d images x %d views "
            "per epoch (%s)",
            rank,
            world_size,
            n,
            len(self.shard_set.tar_paths),
            self._len,
            batch_size,
            len(views),
            self.device,
        )

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[ViewBatch]:
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
        if not isinstance(fingerprint, dict):
            raise PipelineStateError("damaged pipeline state: no fingerprint")
        # States saved before view recipes existed all come from the SSiT views.
        fingerprint.setdefault("views", views_fingerprint(SSIT_VIEWS))
        if fingerprint != self._fingerprint:
            raise PipelineStateError(
                "pipeline state belongs to another setup (saved, now): "
                + fingerprint_difference(fingerprint, self._fingerprint)
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

    def _next_batch(self) -> ViewBatch:
        outputs = list(self._run())
        if self.with_source:
            sources = outputs.pop()
            self.last_sources = [
                bytes(np.asarray(sources[i])).decode() for i in range(len(sources))
            ]
        tensors = iter([self._to_torch(out) for out in outputs])
        images = [next(tensors) for _ in self.views]
        maps = [next(tensors) if view.with_map else None for view in self.views]
        return ViewBatch(images, maps)

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


def fingerprint_difference(saved: dict, now: dict) -> str:
    """What differs between two setup fingerprints, in one line (views summarised)."""
    parts = []
    for key in sorted(set(saved) | set(now)):
        old, new = saved.get(key), now.get(key)
        if old == new:
            continue
        if key == "views" and isinstance(old, list) and isinstance(new, list):
            parts.append(f"views: {_views_difference(old, new)}")
        else:
            parts.append(f"{key}: {old!r} vs {new!r}")
    return "; ".join(parts)


def _views_difference(old: list, new: list) -> str:
    """Count and map flags of both recipes (M: with map), or which views' parameters differ."""

    def flags(views: list) -> str:
        return "".join("M" if isinstance(v, dict) and v.get("with_map") else "-" for v in views)

    if len(old) != len(new) or flags(old) != flags(new):
        return f"{len(old)} [{flags(old)}] vs {len(new)} [{flags(new)}]"
    changed = [str(i) for i, (a, b) in enumerate(zip(old, new, strict=True)) if a != b]
    return f"augmentation of view(s) {', '.join(changed)} differs"


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
