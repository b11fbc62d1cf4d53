"""Referable-DR partitions: the labelled subset of the semi-supervised protocol, Voets' split.

Both work on binarised grades (referable: grade >= 2) and depend only on the images' keys and
grades and on the seed: each class is sorted by key, then permuted by a
``numpy.random.default_rng(seed)`` stream, the non-referable class first.

**Voets et al. 2019 split of EyePACS** (their ``eyepacs.sh``): the pool is every labelled
Kaggle image (training and test labels together; binarised). The non-referable images are
shuffled; the first 40,688 go to training, the next 8,096 to test and the rest (22,764 of
Kaggle's 71,548) are not used. The referable images are shuffled; the first 16,458 go to
training and all the others to test (696 of Kaggle's 17,154; Voets et al. report 8,790 test
images, i.e. 694 referable, their preprocessing having dropped two photographs whose fundus
it could not find). As in their pipeline, 20% of the training part (per class here) is held
out for validation. A pool too small for these counts (e.g. the demo data) is split in the
same proportions of each class (rounded half up). Their shell shuffle cannot be replayed in
Python, so the counts match theirs but not the image lists.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ssit.atomic_write import replacing
from ssit.evaluate.config import DataConfig
from ssit.evaluate.datasets import SPLIT_FILE, write_split_file
from ssit.evaluate.layouts import LAYOUTS, DatasetError, GradedImage, Splits
from ssit.evaluate.metrics import REFERABLE_GRADE

LOGGER = logging.getLogger(__name__)

LABELLED_FILE = "labelled.csv"
VOETS_SEED = 42
# Voets et al.'s class totals and their training and test shares.
VOETS_NON_REFERABLE = (71_548, 40_688, 8_096)
VOETS_REFERABLE = (17_154, 16_458)
VOETS_VAL_FRACTION = 0.2


def is_referable(item: GradedImage) -> bool:
    """Referable DR: grade 2 (moderate NPDR) or worse."""
    return item.grade >= REFERABLE_GRADE


def shuffled_classes(
    items: Sequence[GradedImage], rng: np.random.Generator
) -> tuple[list[GradedImage], list[GradedImage]]:
    """(non-referable, referable), each sorted by key then permuted by ``rng`` in that order."""
    ordered = sorted(items, key=lambda item: item.key)
    classes = ([i for i in ordered if not is_referable(i)], [i for i in ordered if is_referable(i)])
    return tuple([group[k] for k in rng.permutation(len(group))] for group in classes)


def labelled_subset_size(total: int, size: int | None, fraction: float | None) -> int:
    """How many labelled images: ``size``, or ``fraction`` of ``total`` rounded half up."""
    if (size is None) == (fraction is None):
        raise ValueError("give exactly one of the labelled subset's size and fraction")
    if size is None:
        size = int(np.floor(total * fraction + 0.5))
    if size < 2:
        raise ValueError(f"the labelled subset needs at least 2 images, got {size}")
    return size


def labelled_subset(
    items: Sequence[GradedImage], size: int | None = 1000, fraction: float | None = None,
    seed: int = VOETS_SEED,
) -> list[GradedImage]:
    """A class-balanced labelled subset: ``size // 2`` referable, the rest non-referable.

    Raises DatasetError when a class has too few images.
    """
    count = labelled_subset_size(len(items), size, fraction)
    non_referable, referable = shuffled_classes(items, np.random.default_rng(seed))
    wanted = (count - count // 2, count // 2)
    for group, need, name in zip((non_referable, referable), wanted,
                                 ("non-referable", "referable"), strict=True):
        if len(group) < need:
            raise DatasetError(f"the labelled subset needs {need} {name} training images, the "
                               f"training split has {len(group)}")
    return non_referable[: wanted[0]] + referable[: wanted[1]]


def write_labelled(items: Sequence[GradedImage], path: Path) -> None:
    """Write the labelled subset as ``key,grade,referable`` rows (atomically)."""
    with replacing(path) as partial, open(partial, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["key", "grade", "referable"])
        for item in items:
            writer.writerow([item.key, item.grade, int(is_referable(item))])


def read_labelled(path: Path, items: Sequence[GradedImage]) -> list[GradedImage]:
    """The subset recorded in ``path``, taken from ``items``; every key must be there."""
    by_key = {item.key: item for item in items}
    with open(path, newline="") as handle:
        keys = [row["key"] for row in csv.DictReader(handle)]
    missing = [key for key in keys if key not in by_key]
    if missing or not keys:
        raise DatasetError(f"{path} lists {len(missing)} image(s) the training split lacks "
                           f"(e.g. {', '.join(missing[:3]) or 'none listed'})")
    return [by_key[key] for key in keys]


def scaled_count(count: int, part: int, total: int) -> int:
    """``count * part / total`` rounded half up, in integers."""
    return (2 * count * part + total) // (2 * total)


def voets_counts(non_referable: int, referable: int) -> dict[str, tuple[int, int]]:
    """(non-referable, referable) counts of train (validation included), test and unused."""
    total0, train0, test0 = VOETS_NON_REFERABLE
    total1, train1 = VOETS_REFERABLE
    if non_referable >= train0 + test0 and referable > train1:  # EyePACS-sized: their counts
        return {"train": (train0, train1), "test": (test0, referable - train1),
                "unused": (non_referable - train0 - test0, 0)}
    n_train0, n_test0 = scaled_count(non_referable, train0, total0), scaled_count(
        non_referable, test0, total0)
    n_train1 = scaled_count(referable, train1, total1)
    if n_test0 == 0 and non_referable >= 2:
        n_train0, n_test0 = n_train0 - (n_train0 + n_test0 >= non_referable), 1
    if n_train1 == referable and referable >= 2:
        n_train1 -= 1
    return {"train": (n_train0, n_train1), "test": (n_test0, referable - n_train1),
            "unused": (non_referable - n_train0 - n_test0, 0)}


def voets_split(items: Sequence[GradedImage], seed: int = VOETS_SEED) -> Splits:
    """Voets et al.'s partition of ``items`` into train/val/test (see the module docstring)."""
    non_referable, referable = shuffled_classes(items, np.random.default_rng(seed))
    counts = voets_counts(len(non_referable), len(referable))
    splits: Splits = {"train": [], "val": [], "test": []}
    for group, n_train, n_test in zip((non_referable, referable), counts["train"],
                                      counts["test"], strict=True):
        n_val = scaled_count(n_train, 1, int(1 / VOETS_VAL_FRACTION))
        splits["train"].extend(group[: n_train - n_val])
        splits["val"].extend(group[n_train - n_val: n_train])
        splits["test"].extend(group[n_train: n_train + n_test])
    return splits


def write_voets_split(cfg: DataConfig, out_dir: Path) -> Path | None:
    """With ``data.split: voets``, write ``split.csv`` into ``out_dir`` (once) and return it.

    Every labelled image of the dataset (all of its splits) forms the pool, split with
    ``VOETS_SEED``. Nothing is written when a split file is given or already there.
    """
    path = Path(out_dir) / SPLIT_FILE
    if cfg.split != "voets" or cfg.split_file or path.is_file():
        return None
    layout = LAYOUTS[cfg.dataset](Path(cfg.path).expanduser())
    pool = [item for items in layout.values() for item in items]
    splits = voets_split(pool, VOETS_SEED)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    write_split_file(splits, path)
    LOGGER.info("Voets split of %d images: %s", len(pool),
                ", ".join(f"{name} {len(items)}" for name, items in splits.items()))
    return path
