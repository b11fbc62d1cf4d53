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

import csv
import errno
import logging
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ssit.atomic_write import replace_json
from ssit.prepare.crop import CROP_SIZE
from ssit.prepare.image_size import DEFAULT_MAX_PIXELS
from ssit.prepare.output_lock import hold_output_folder
from ssit.prepare.plan import IMAGE_SUFFIXES, Labels, Plan, PlannedImage, make_plan, read_labels
from ssit.prepare.sample import warm_up
from ssit.prepare.shard_format import (
    MANIFEST_FORMAT,
    STATE_DIR,
    PrepareError,
    recipe_name,
)
from ssit.prepare.shard_writer import (
    ShardWriter,
    complete_record,
    process_image,
    state_path,
)
from ssit.prepare.workers import available_cores, parallel_map

__all__ = [
    "IMAGE_SUFFIXES",
    "Labels",
    "ShardReport",
    "read_labels",
    "write_shards",
]

logger = logging.getLogger(__name__)

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
            state_path(out_dir, stem).unlink(missing_ok=True)


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
        record = complete_record(out_path, plan.name(index), fingerprint)
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
    writer: ShardWriter | None = None
    skipped = 0
    with tqdm(total=len(tasks), desc=f"shards {plan.dataset}", unit="img",
              disable=not progress) as bar:
        try:
            process = partial(process_image, max_pixels=max_pixels)
            warm = partial(warm_up, tasks[0].fast) if tasks else None
            for outcome in parallel_map(process, tasks, jobs, describe=_shown_path, warm_up=warm):
                if writer is None:
                    index = next(queue)
                    writer = ShardWriter(out_dir, plan.name(index), plan.fingerprints[index],
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
