"""Write fundus photographs as WebDataset shards with saliency maps.

Besides the tar shards, their DALI indexes and ``manifest.json`` (described, and read back, in
:mod:`ssit.prepare.shard_format`), the output directory holds::

    skipped.csv            file,reason for every image left out (and label rows without image)
    .state/                one record per finished shard, used to resume an interrupted run,
                           and the lock that keeps a second run out while one writes

The plan (:mod:`ssit.prepare.plan`) is fixed before any image is decoded: the sorted input files
that have a usable id and (when labels are given) a grade are permuted with
``numpy.random.default_rng(seed)`` and cut into consecutive groups of ``shard_size``. Images
that turn out to be unreadable are left out of their shard, so a shard may hold a few samples
fewer than planned; everything stays deterministic and each shard can be finished, checked and
reused on its own.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import json
import logging
import math
import os
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

from tqdm import tqdm

from ssit.atomic_write import replace_json
from ssit.prepare.crop import CROP_SIZE
from ssit.prepare.decode import BadImageError
from ssit.prepare.image_size import DEFAULT_MAX_PIXELS, oversize_reason
from ssit.prepare.output_lock import hold_output_folder
from ssit.prepare.plan import IMAGE_SUFFIXES, Labels, Plan, PlannedImage, make_plan, read_labels
from ssit.prepare.sample import encode_sample, preprocess_image, warm_up
from ssit.prepare.shard_format import (
    MANIFEST_FORMAT,
    STATE_DIR,
    PrepareError,
    recipe_name,
    write_dali_index,
)
from ssit.prepare.statistics import channel_moments
from ssit.prepare.workers import available_cores, parallel_map

__all__ = [
    "IMAGE_SUFFIXES",
    "Labels",
    "ShardReport",
    "read_labels",
    "write_shards",
]

logger = logging.getLogger(__name__)

_TAR_MTIME = 0


@dataclass(frozen=True)
class ShardReport:
    """What :func:`write_shards` did."""

    out_dir: Path
    written: int
    skipped: int
    shards: int
    reused_shards: int
    unmatched_labels: int
    converted: dict[str, int] = field(default_factory=dict)
    fallback_crops: int = 0

    @property
    def manifest(self) -> Path:
        """The manifest file of the written shards."""
        return self.out_dir / "manifest.json"

    @property
    def skipped_csv(self) -> Path:
        """The list of skipped files with their reasons."""
        return self.out_dir / "skipped.csv"

    def summary(self) -> str:
        """One line for the user: written N, skipped M (see skipped.csv)."""
        line = f"written {self.written}, skipped {self.skipped} (see {self.skipped_csv})"
        if self.unmatched_labels == 1:
            line += "; 1 label row had no image"
        elif self.unmatched_labels:
            line += f"; {self.unmatched_labels} label rows had no image"
        return line


class _Outcome(NamedTuple):
    source: str
    key: str
    grade: int | None
    members: dict[str, bytes] | None
    reason: str | None
    converted: str | None
    fallback: bool
    pixel_sum: tuple[int, int, int]
    pixel_sumsq: tuple[int, int, int]


# ---------------------------------------------------------------- per-image work (in workers)


def _skip(task: PlannedImage, reason: str) -> _Outcome:
    return _Outcome(task.source, task.key, task.grade, None, reason, None, False,
                    (0, 0, 0), (0, 0, 0))


def _process(task: PlannedImage, max_pixels: int) -> _Outcome:
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
    return _Outcome(task.source, task.key, task.grade, members, None, item.converted,
                    item.fallback, pixel_sum, pixel_sumsq)


# ---------------------------------------------------------------- writing


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


class _ShardWriter:
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

    def add(self, outcome: _Outcome) -> None:
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
        replace_json(_state_path(self.out_dir, self.name), record)
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


def _state_path(out_dir: Path, name: str) -> Path:
    return out_dir / STATE_DIR / f"{name}.json"


def _complete_record(out_dir: Path, name: str, fingerprint: str) -> dict[str, Any] | None:
    """The record of a finished shard that matches the plan, or None if it must be (re)made."""
    try:
        record = json.loads(_state_path(out_dir, name).read_text())
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


def _remove_leftovers(out_dir: Path, plan: Plan) -> None:
    """Delete unfinished temporary files and shards of this dataset beyond the current plan."""
    for tmp in [*out_dir.glob("*.tmp"), *(out_dir / STATE_DIR).glob("*.tmp")]:
        tmp.unlink()
    for path in sorted(out_dir.glob(f"{plan.dataset}-*")):
        stem = path.name.split(".", 1)[0]
        number = stem[len(plan.dataset) + 1 :]
        if number.isdigit() and int(number) >= len(plan.shards):
            logger.warning("removing %s: not part of the current plan", path)
            path.unlink()
            _state_path(out_dir, stem).unlink(missing_ok=True)


def write_shards(
    input_dir: str | Path,
    out_dir: str | Path,
    *,
    labels: str | Path | None = None,
    dataset: str = "eyepacs",
    shard_size: int = 1000,
    jobs: int | None = None,
    seed: int = 0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = True,
    fast: bool = False,
) -> ShardReport:
    """Crop every photograph under ``input_dir``, compute its saliency map and write shards.

    ``labels`` is an EyePACS-style CSV (``image,level``); images without a row are then skipped.
    Images of more than ``max_pixels`` pixels are skipped before decoding. One run at a time
    may write to ``out_dir``: another one is refused while this one holds it. Re-running
    after an interruption keeps every finished shard and redoes only the rest; the result is
    byte-identical to an uninterrupted run. Arguments are checked before any work and problems
    raise :class:`PrepareError`, as does a full disk (finished shards stay finished);
    bad images are skipped and listed in ``skipped.csv``. The
    default per-image recipe is the SSiT authors' (see :mod:`ssit.prepare.sample`); ``fast=True``
    trades exactness for speed.
    """
    input_path, out_path = Path(input_dir), Path(out_dir)
    if not input_path.is_dir():
        raise PrepareError(f"input folder not found: {input_path}")
    if out_path.exists() and not out_path.is_dir():
        raise PrepareError(f"output path exists and is not a folder: {out_path}")
    if not dataset or not dataset.replace("-", "").replace("_", "").isalnum():
        raise PrepareError(f"dataset name must use letters, digits, '-' and '_': {dataset!r}")
    if shard_size < 1:
        raise PrepareError(f"shard size must be at least 1, got {shard_size}")
    if jobs is not None and jobs < 1:
        raise PrepareError(f"jobs must be at least 1, got {jobs}")
    if max_pixels < 1:
        raise PrepareError(f"max_pixels must be at least 1, got {max_pixels}")
    label_table = read_labels(labels) if labels is not None else None
    plan = make_plan(input_path, out_path, label_table, dataset, shard_size, seed, fast)
    with hold_output_folder(out_path):
        try:
            return _write_planned(out_path, plan, label_table is not None, jobs, seed,
                                  max_pixels, progress, fast)
        except OSError as error:
            if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise PrepareError(
                f"no space left on the device of {out_path} ({error.strerror}): free some "
                "space and re-run `ssit shards`; finished shards are kept, the rest is redone"
            ) from None


def _write_planned(
    out_path: Path, plan: Plan, has_labels: bool, jobs: int | None, seed: int,
    max_pixels: int, progress: bool, fast: bool,
) -> ShardReport:
    _remove_leftovers(out_path, plan)
    records: dict[int, dict[str, Any]] = {}
    for index, fingerprint in enumerate(plan.fingerprints):
        record = _complete_record(out_path, plan.name(index), fingerprint)
        if record is not None:
            records[index] = record
    pending = [i for i in range(len(plan.shards)) if i not in records]
    logger.info(
        "%d images in %d shards of up to %d (%d already complete), %d skipped before decoding",
        sum(len(s) for s in plan.shards), len(plan.shards), max(map(len, plan.shards)),
        len(records),
        len(plan.skipped),
    )
    if pending:
        (out_path / "manifest.json").unlink(missing_ok=True)
        tasks = [task for i in pending for task in plan.shards[i]]
        workers = max(1, min(jobs or available_cores(), len(tasks)))
        records.update(_run(out_path, plan, pending, tasks, workers, max_pixels, progress))

    report = _finish(out_path, plan, records, seed, has_labels,
                     reused=len(plan.shards) - len(pending), fast=fast)
    logger.debug("%s", report.summary())
    return report


def _run(
    out_dir: Path, plan: Plan, pending: list[int], tasks: list[PlannedImage], jobs: int,
    max_pixels: int, progress: bool,
) -> dict[int, dict[str, Any]]:
    records: dict[int, dict[str, Any]] = {}
    queue = iter(pending)
    writer: _ShardWriter | None = None
    skipped = 0
    with tqdm(total=len(tasks), desc=f"shards {plan.dataset}", unit="img",
              disable=not progress) as bar:
        try:
            process = partial(_process, max_pixels=max_pixels)
            warm = partial(warm_up, tasks[0].fast) if tasks else None
            for outcome in parallel_map(process, tasks, jobs, describe=_shown_path, warm_up=warm):
                if writer is None:
                    index = next(queue)
                    writer = _ShardWriter(out_dir, plan.name(index), plan.fingerprints[index],
                                          len(plan.shards[index]))
                writer.add(outcome)
                if outcome.members is None:
                    skipped += 1
                    logger.debug("skipped %s: %s", outcome.source, outcome.reason)
                    bar.set_postfix(skipped=skipped, refresh=False)
                bar.update()
                if writer.full:
                    records[index] = writer.finish()
                    writer = None
        finally:
            if writer is not None:
                writer.abandon()
    return records


def _shown_path(task: PlannedImage) -> str:
    return task.source


def _finish(
    out_dir: Path,
    plan: Plan,
    records: dict[int, dict[str, Any]],
    seed: int,
    has_labels: bool,
    reused: int,
    fast: bool,
) -> ShardReport:
    """Write ``skipped.csv`` and ``manifest.json`` from the shard records."""
    ordered = [records[i] for i in range(len(plan.shards))]
    skipped = sorted(plan.skipped + [tuple(s) for r in ordered for s in r["skipped"]])
    with (out_dir / "skipped.csv.tmp").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["file", "reason"])
        writer.writerows(skipped)
        writer.writerows(plan.label_notes)
    os.replace(out_dir / "skipped.csv.tmp", out_dir / "skipped.csv")

    written = sum(r["num_samples"] for r in ordered)
    if written == 0:
        raise PrepareError(
            f"no image in {len(plan.shards)} planned shards could be used; see "
            f"{out_dir / 'skipped.csv'}"
        )
    pixels = written * CROP_SIZE * CROP_SIZE * 255
    mean, std = [], []
    for channel in range(3):
        total = sum(r["pixel_sum"][channel] for r in ordered)
        squares = sum(r["pixel_sumsq"][channel] for r in ordered)
        channel_mean = total / pixels
        mean.append(round(channel_mean, 6))
        std.append(round(math.sqrt(max(0.0, squares / (pixels * 255) - channel_mean**2)), 6))
    grades: Counter[str] = Counter()
    for record in ordered:
        grades.update(record["grades"])
    converted = Counter(note for r in ordered for _, note in r["converted"])
    manifest = {
        "format": MANIFEST_FORMAT,
        "dataset": plan.dataset,
        "seed": seed,
        "num_samples": written,
        "has_labels": has_labels,
        "image_size": CROP_SIZE,
        "recipe": recipe_name(fast),
        "shards": [
            {"name": r["name"], "index": r["index"], "num_samples": r["num_samples"],
             "sha256": r["sha256"]}
            for r in ordered
            if r["num_samples"]
        ],
        "mean": mean,
        "std": std,
        "grade_counts": dict(sorted(grades.items())) if has_labels else None,
        "skipped": len(skipped),
        "unmatched_labels": len(plan.label_notes),
    }
    replace_json(out_dir / "manifest.json", manifest, indent=2)
    if converted:
        logger.info("converted to 8-bit RGB: %s",
                    ", ".join(f"{note}: {n}" for note, n in sorted(converted.items())))
    if skipped:
        reasons = Counter(reason.split(" (")[0] for _, reason in skipped)
        logger.warning("skipped %d images: %s", len(skipped),
                       "; ".join(f"{reason}: {n}" for reason, n in reasons.most_common(5)))
    return ShardReport(
        out_dir=out_dir,
        written=written,
        skipped=len(skipped),
        shards=len(manifest["shards"]),
        reused_shards=reused,
        unmatched_labels=len(plan.label_notes),
        converted=dict(sorted(converted.items())),
        fallback_crops=sum(r["fallback_crops"] for r in ordered),
    )
