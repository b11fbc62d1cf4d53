from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from ssit.evaluate.layouts import DatasetError, GradedImage
from ssit.evaluate.subsets import (
    labelled_subset,
    read_labelled,
    voets_counts,
    voets_split,
    write_labelled,
)

# EyePACS (Kaggle training + test labels): images per grade 0-4.
EYEPACS_GRADES = (65_343, 6_205, 13_153, 2_087, 1_914)


def pool(per_grade: tuple[int, ...]) -> list[GradedImage]:
    return [GradedImage(f"{grade}_{index}", grade, Path("x"))
            for grade, count in enumerate(per_grade) for index in range(count)]


def referable(items) -> int:
    return sum(item.grade >= 2 for item in items)


def test_labelled_subset_is_balanced_sized_and_deterministic(tmp_path: Path) -> None:
    items = pool((300, 40, 60, 10, 5))
    subset = labelled_subset(items, 100, seed=42)
    assert len(subset) == 100 and referable(subset) == 50
    assert len({item.key for item in subset}) == 100
    assert subset == labelled_subset(list(reversed(items)), 100, seed=42)
    assert subset != labelled_subset(items, 100, seed=7)
    by_fraction = labelled_subset(items, None, fraction=0.1)
    assert len(by_fraction) == 42 and referable(by_fraction) == 21
    assert len(labelled_subset(items, 7)) == 7 and referable(labelled_subset(items, 7)) == 3
    write_labelled(subset, tmp_path / "labelled.csv")
    assert read_labelled(tmp_path / "labelled.csv", items) == subset
    with pytest.raises(DatasetError, match="lacks"):
        read_labelled(tmp_path / "labelled.csv", items[:10])


def test_labelled_subset_bad_input() -> None:
    items = pool((30, 0, 5, 0, 0))
    with pytest.raises(DatasetError, match="needs 10 referable"):
        labelled_subset(items, 20)
    with pytest.raises(ValueError, match="exactly one"):
        labelled_subset(items, 10, fraction=0.1)
    with pytest.raises(ValueError, match="at least 2"):
        labelled_subset(items, 1)


def test_voets_counts_on_eyepacs_size_and_mix() -> None:
    items = pool(EYEPACS_GRADES)
    assert voets_counts(71_548, 17_154) == {"train": (40_688, 16_458), "test": (8_096, 696),
                                            "unused": (22_764, 0)}
    splits = voets_split(items)
    train = splits["train"] + splits["val"]
    assert len(train) == 57_146 and referable(train) == 16_458
    assert len(splits["test"]) == 8_792 and referable(splits["test"]) == 696
    # Voets et al.'s own pool lacked two referable images: 8,790 test images
    assert voets_counts(71_548, 17_152)["test"] == (8_096, 694)
    assert voets_counts(7_154, 1_715) == {"train": (4_068, 1_645), "test": (810, 70),
                                          "unused": (2_276, 0)}
    assert len(splits["val"]) == round(0.2 * 40_688) + round(0.2 * 16_458)
    keys = [item.key for part in splits.values() for item in part]
    assert len(keys) == len(set(keys))
    assert Counter(item.grade >= 2 for item in splits["test"])[True] == 696
    again = voets_split(list(reversed(items)))
    assert [i.key for i in again["test"]] == [i.key for i in splits["test"]]


def test_voets_split_of_a_small_pool_keeps_every_part() -> None:
    splits = voets_split(pool((20, 4, 5, 1, 1)))
    for name in ("train", "val", "test"):
        assert referable(splits[name]) >= 1 and len(splits[name]) > referable(splits[name])
