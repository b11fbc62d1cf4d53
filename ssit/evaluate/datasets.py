"""Labelled DR-grading data for a grading job: a dataset read in its layout (see
:mod:`ssit.evaluate.layouts`), split into train/val/test, and served to a model.

Datasets without an official split are split per grade with a fixed seed; the split is written
to ``split.csv`` in the output folder and reused from there (or from ``data.split_file``). Raw
photographs are replaced by their cached 512x512 fundus crops.
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ssit.atomic_write import replacing
from ssit.evaluate.config import DataConfig
from ssit.evaluate.crops import cached_crops, default_cache_dir
from ssit.evaluate.layouts import (
    LAYOUTS,
    SPLITS,
    DatasetError,
    GradedImage,
    Splits,
    read_table,
)
from ssit.evaluate.metrics import NUM_GRADES

if TYPE_CHECKING:
    import torch

LOGGER = logging.getLogger(__name__)
SPLIT_FILE = "split.csv"


class GradingDataset:
    """(image tensor, grade) pairs of a list of graded images under a transform (a map-style
    dataset for torch's DataLoader; it needs no torch itself, so splitting stays light).

    ``min_side`` lets JPEGs decode at a reduced scale when the model input is much smaller.
    """

    def __init__(
        self, items: Sequence[GradedImage], transform: Callable, min_side: int | None = None
    ) -> None:
        self.items = list(items)
        self.transform = transform
        self.min_side = min_side

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        item = self.items[index]
        return self.transform(item.load(self.min_side)), item.grade


def load_grading_data(cfg: DataConfig, out_dir: Path | None = None) -> Splits:
    """Read ``cfg.dataset`` from ``cfg.path``, split it, crop raw images, log class counts.

    The split is written to ``out_dir/split.csv`` (and reused from there when present).
    """
    root = Path(cfg.path).expanduser()
    if not cfg.path:
        raise DatasetError(f"data.path is empty: give the {cfg.dataset} folder")
    if not root.exists():
        raise DatasetError(f"{cfg.dataset}: {root} does not exist")
    layout = drop_repeated_images(LAYOUTS[cfg.dataset](root), cfg.dataset)
    splits = split_layout(layout, cfg, _split_file_to_reuse(cfg, out_dir))
    for name in SPLITS:
        if not splits[name]:
            raise DatasetError(f"{cfg.dataset}: the {name} split is empty")
        log_class_counts(cfg.dataset, name, splits[name])
    if out_dir is not None:
        write_split_file(splits, Path(out_dir) / SPLIT_FILE)
    if cfg.dataset != "shards":
        cache_dir = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()
        splits = {name: crop_items(items, cache_dir, cfg.num_workers)
                  for name, items in splits.items()}
    return splits


def drop_repeated_images(layout: Splits, dataset: str) -> Splits:
    """The layout with each image key once: repeats with the same grade are dropped (and
    logged in one line), an image listed with two grades is refused (:class:`DatasetError`),
    by the rule ``ssit shards`` applies to its labels (:class:`~ssit.prepare.plan.GradeTable`).
    """
    from ssit.prepare.plan import GradeTable

    table = GradeTable()
    kept = {name: [item for item in items if table.add(item.key, item.grade)]
            for name, items in layout.items()}
    if table.conflicts:
        raise DatasetError(f"{dataset}: {next(iter(table.conflicts.values()))}; fix the labels "
                           "so that each image has one grade")
    if table.repeated:
        LOGGER.warning("%s: %d repeated row(s) of an image with the same grade, each image kept "
                       "once (e.g. %s)", dataset, len(table.repeated), table.repeated[0])
    return kept


def split_layout(layout: Splits, cfg: DataConfig, split_file: Path | None = None) -> Splits:
    """The train/val/test split of a dataset's ``layout``: from ``split_file`` when given, else
    the dataset's own parts completed by a seeded split with ``cfg.split_fractions``."""
    if split_file is not None:
        return apply_split_file(_all_items(layout), split_file)
    if "all" in layout:
        return split_items(layout["all"], cfg.split_fractions, cfg.split_seed)
    if not layout.get("val"):
        train_share = cfg.split_fractions[0] / (cfg.split_fractions[0] + cfg.split_fractions[1])
        parts = split_items(layout["train"], [train_share, 0.0, 1 - train_share], cfg.split_seed)
        return {"train": parts["train"], "val": parts["test"], "test": layout["test"]}
    return {name: layout[name] for name in SPLITS}


def crop_items(
    items: Sequence[GradedImage], cache_dir: Path, num_workers: int
) -> list[GradedImage]:
    """Point each raw image at its cached 512x512 fundus crop (cropping it if needed)."""
    crops = cached_crops([item.path for item in items], cache_dir, num_workers)
    return [replace(item, path=crop) for item, crop in zip(items, crops, strict=True)]


def class_counts(items: Iterable[GradedImage]) -> list[int]:
    """Number of images of each grade 0-4."""
    counts = Counter(item.grade for item in items)
    return [counts.get(grade, 0) for grade in range(NUM_GRADES)]


def log_class_counts(dataset: str, split: str, items: Sequence[GradedImage]) -> None:
    """Log how many images of each grade a split holds."""
    counts = ", ".join(f"{g}: {n}" for g, n in enumerate(class_counts(items)))
    LOGGER.info("%s %s: %d images (grades %s)", dataset, split, len(items), counts)


def split_items(
    items: Sequence[GradedImage], fractions: Sequence[float], seed: int
) -> Splits:
    """Split per grade into train/val/test by ``fractions`` with a seeded shuffle.

    Each grade's images are sorted by key and shuffled with ``seed``; the split sizes follow
    ``fractions`` per grade, the fractional parts being handed out so that the overall sizes
    are the rounded overall shares. The result depends only on keys, grades, fractions and seed.
    """
    rng = np.random.default_rng(seed)
    by_grade: dict[int, list[GradedImage]] = {}
    for item in sorted(items, key=lambda it: it.key):
        by_grade.setdefault(item.grade, []).append(item)
    grades = sorted(by_grade)
    sizes = allocate_split_sizes([len(by_grade[g]) for g in grades], fractions)
    splits: Splits = {name: [] for name in SPLITS}
    for grade, counts in zip(grades, sizes, strict=True):
        group = by_grade[grade]
        order = iter(rng.permutation(len(group)))
        for name, count in zip(SPLITS, counts, strict=True):
            splits[name].extend(group[next(order)] for _ in range(count))
    return splits


def _largest_remainder(shares: Sequence[float], total: int) -> list[int]:
    counts = [int(np.floor(share)) for share in shares]
    order = sorted(range(len(shares)), key=lambda i: (counts[i] - shares[i], i))
    for index in order[: total - sum(counts)]:
        counts[index] += 1
    return counts


def allocate_split_sizes(
    group_sizes: Sequence[int], fractions: Sequence[float]
) -> list[list[int]]:
    """Per-group split sizes close to ``size * fraction`` whose totals match the overall shares.

    Each group first gets the whole part of its shares; the leftover images go, largest
    fractional part first, to splits still short of their overall target.
    """
    total = sum(group_sizes)
    targets = _largest_remainder([total * f for f in fractions], total)
    sizes = [[int(np.floor(n * f)) for f in fractions] for n in group_sizes]
    short = [t - sum(row[s] for row in sizes) for s, t in enumerate(targets)]
    left = [n - sum(row) for n, row in zip(group_sizes, sizes, strict=True)]
    candidates = sorted(
        ((g, s) for g in range(len(group_sizes)) for s in range(len(fractions))),
        key=lambda gs: (-(group_sizes[gs[0]] * fractions[gs[1]] % 1), gs[0], gs[1]),
    )
    for g, s in candidates:
        if left[g] > 0 and short[s] > 0:
            sizes[g][s] += 1
            left[g] -= 1
            short[s] -= 1
    for g in range(len(group_sizes)):  # anything still left goes where it is most missed
        while left[g] > 0:
            s = max(range(len(fractions)), key=lambda i: (short[i], fractions[i]))
            sizes[g][s] += 1
            left[g] -= 1
            short[s] -= 1
    return sizes


def write_split_file(splits: Splits, path: Path) -> None:
    """Write ``key,grade,split`` rows (atomically)."""
    with replacing(path) as partial, open(partial, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["key", "grade", "split"])
        for name in SPLITS:
            for item in splits.get(name, []):
                writer.writerow([item.key, item.grade, name])


def apply_split_file(items: Sequence[GradedImage], path: Path) -> Splits:
    """Split ``items`` as recorded in a ``split.csv``; every listed key must exist."""
    by_key = {item.key: item for item in items}
    splits: Splits = {name: [] for name in SPLITS}
    missing: list[str] = []
    rows = read_table(path, ("key", "grade", "split"), "split file")
    for line, row in rows:
        name = row["split"]
        if name not in SPLITS:
            raise DatasetError(f"{path} line {line}: split {name!r} is not train, val or test")
        item = by_key.pop(row["key"], None)
        if item is None:
            missing.append(row["key"])
            continue
        if str(item.grade) != row["grade"].strip():
            raise DatasetError(f"{path} line {line}: {row['key']} has grade {row['grade']} "
                               f"but the dataset says {item.grade}")
        splits[name].append(item)
    if missing:
        raise DatasetError(f"split file {path} lists {len(missing)} image(s) the dataset lacks "
                           f"(e.g. {', '.join(missing[:3])})")
    if by_key:
        LOGGER.warning("%d image(s) are not in split file %s and are left out",
                       len(by_key), path)
    LOGGER.info("split read from %s", path)
    return splits


def _split_file_to_reuse(cfg: DataConfig, out_dir: Path | None) -> Path | None:
    if cfg.split_file:
        path = Path(cfg.split_file).expanduser()
        if not path.is_file():
            raise DatasetError(f"data.split_file {path} does not exist")
        return path
    if out_dir is not None and (Path(out_dir) / SPLIT_FILE).is_file():
        return Path(out_dir) / SPLIT_FILE
    return None


def _all_items(layout: Splits) -> list[GradedImage]:
    return [item for items in layout.values() for item in items]
