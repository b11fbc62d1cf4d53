"""One shard on disk: each image's sample made in a worker, streamed into a tar, indexed and
recorded as finished (the records are what a resumed ``ssit shards`` reuses)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

from ssit.atomic_write import replace_json
from ssit.prepare.crop import CROP_SIZE
from ssit.prepare.decode import BadImageError
from ssit.prepare.image_size import oversize_reason
from ssit.prepare.plan import PlannedImage
from ssit.prepare.sample import encode_sample, preprocess_image
from ssit.prepare.shard_format import STATE_DIR, write_dali_index
from ssit.prepare.statistics import channel_moments

_TAR_MTIME = 0


class SampleOutcome(NamedTuple):
    """What became of one planned image: its sample's members, or the reason it was skipped."""

    source: str
    key: str
    grade: int | None
    members: dict[str, bytes] | None
    reason: str | None
    converted: str | None
    fallback: bool
    pixel_sum: tuple[int, int, int]
    pixel_sumsq: tuple[int, int, int]


def _skip(task: PlannedImage, reason: str) -> SampleOutcome:
    return SampleOutcome(task.source, task.key, task.grade, None, reason, None, False,
                    (0, 0, 0), (0, 0, 0))


def process_image(task: PlannedImage, max_pixels: int) -> SampleOutcome:
    """Turn one planned image into a sample, or into a skip reason; never raises."""
    too_large = oversize_reason(task.path, max_pixels)
    if too_large is not None:
        return _skip(task, too_large)
    try:
        item = preprocess_image(task.path, CROP_SIZE, fast=task.fast)
        members = encode_sample(item, source=task.source, grade=task.grade, dataset=task.dataset)
    except BadImageError as error:
        return _skip(task, str(error))
    except Exception as error:  # one bad file must never stop the run
        return _skip(task, f"unexpected error: {type(error).__name__}: {error}")
    pixel_sum, pixel_sumsq = channel_moments(item.crop)
    return SampleOutcome(task.source, task.key, task.grade, members, None, item.converted,
                    item.fallback, pixel_sum, pixel_sumsq)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _tar_member(name: str, size: int) -> tarfile.TarInfo:
    """A tar header with fixed owner, mode and time, so that equal contents give equal bytes."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = _TAR_MTIME
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


class ShardWriter:
    """Streams the samples of one planned shard into ``<name>.tar.tmp`` and finalises it."""

    def __init__(self, out_dir: Path, name: str, fingerprint: str, planned: int) -> None:
        self.out_dir = out_dir
        self.name = name
        self.fingerprint = fingerprint
        self.planned = planned
        self.received = 0
        self.tmp = out_dir / f"{name}.tar.tmp"
        # Closed by finish() or abandon(): the shard stays open while its samples stream in.
        self.tar = tarfile.open(self.tmp, "w", format=tarfile.GNU_FORMAT)  # noqa: SIM115
        self.keys: list[str] = []
        self.skipped: list[list[str]] = []
        self.converted: list[list[str]] = []
        self.fallback = 0
        self.grades: Counter[int] = Counter()
        self.pixel_sum = [0, 0, 0]
        self.pixel_sumsq = [0, 0, 0]

    @property
    def full(self) -> bool:
        return self.received == self.planned

    def add(self, outcome: SampleOutcome) -> None:
        self.received += 1
        if outcome.members is None:
            self.skipped.append([outcome.source, outcome.reason or "unknown"])
            return
        for extension in sorted(outcome.members):
            data = outcome.members[extension]
            self.tar.addfile(_tar_member(f"{outcome.key}.{extension}", len(data)),
                             _BytesReader(data))
        self.keys.append(outcome.key)
        if outcome.converted:
            self.converted.append([outcome.source, outcome.converted])
        self.fallback += outcome.fallback
        if outcome.grade is not None:
            self.grades[outcome.grade] += 1
        for channel in range(3):
            self.pixel_sum[channel] += outcome.pixel_sum[channel]
            self.pixel_sumsq[channel] += outcome.pixel_sumsq[channel]

    def finish(self) -> dict[str, Any]:
        """Close, index and rename the shard, then record it as complete; returns the record."""
        self.tar.close()
        tar_path = self.out_dir / f"{self.name}.tar"
        index_path = self.out_dir / f"{self.name}.idx"
        record: dict[str, Any] = {
            "fingerprint": self.fingerprint,
            "name": tar_path.name,
            "index": index_path.name,
            "num_samples": len(self.keys),
            "keys": self.keys,
            "skipped": self.skipped,
            "converted": self.converted,
            "fallback_crops": self.fallback,
            "grades": {str(g): n for g, n in sorted(self.grades.items())},
            "pixel_sum": self.pixel_sum,
            "pixel_sumsq": self.pixel_sumsq,
        }
        if self.keys:
            with self.tmp.open("rb") as handle:
                os.fsync(handle.fileno())
            index_tmp = self.out_dir / f"{self.name}.idx.tmp"
            write_dali_index(self.tmp, index_tmp)
            record["sha256"] = _sha256(self.tmp)
            record["tar_bytes"] = self.tmp.stat().st_size
            os.replace(index_tmp, index_path)
            os.replace(self.tmp, tar_path)
        else:
            self.tmp.unlink()
            tar_path.unlink(missing_ok=True)
            index_path.unlink(missing_ok=True)
        replace_json(state_path(self.out_dir, self.name), record)
        return record

    def abandon(self) -> None:
        """Close and delete the unfinished shard (closing may fail again on a full disk)."""
        with contextlib.suppress(OSError):
            self.tar.close()
        self.tmp.unlink(missing_ok=True)
        (self.out_dir / f"{self.name}.idx.tmp").unlink(missing_ok=True)


class _BytesReader:
    """Minimal file-like view of bytes for ``TarFile.addfile`` (no copy, unlike BytesIO)."""

    def __init__(self, data: bytes) -> None:
        self.view = memoryview(data)
        self.position = 0

    def read(self, size: int = -1) -> bytes:
        end = len(self.view) if size < 0 else min(len(self.view), self.position + size)
        chunk = self.view[self.position : end].tobytes()
        self.position = end
        return chunk


def state_path(out_dir: Path, name: str) -> Path:
    """The record of shard ``name`` that says it is finished."""
    return out_dir / STATE_DIR / f"{name}.json"


def complete_record(out_dir: Path, name: str, fingerprint: str) -> dict[str, Any] | None:
    """The record of a finished shard that matches the plan, or None if it must be (re)made."""
    try:
        record = json.loads(state_path(out_dir, name).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("fingerprint") != fingerprint:
        return None
    if record.get("num_samples") == 0:
        return record
    tar_path = out_dir / f"{name}.tar"
    if not (tar_path.is_file() and (out_dir / f"{name}.idx").is_file()):
        return None
    if tar_path.stat().st_size != record.get("tar_bytes"):
        return None
    return record
