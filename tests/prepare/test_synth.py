from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssit.prepare.synth import grade_counts, synthesize

SMALL = (256, 320)


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (100, [74, 7, 15, 2, 2]),  # 73.5 and 2.5 tie for the last unit: the lower grade wins
        (48, [35, 4, 7, 1, 1]),
        (5, [1, 1, 1, 1, 1]),  # every grade appears once n >= 5
        (3, [2, 0, 1, 0, 0]),  # floors 2,0,0,0,0; largest remainder 0.45 goes to grade 2
        (0, [0, 0, 0, 0, 0]),
    ],
)
def test_grade_counts_follow_eyepacs(n, expected):
    assert grade_counts(n) == expected
    assert sum(grade_counts(n)) == n


def test_grade_counts_rejects_negative_n():
    with pytest.raises(ValueError, match=">= 0"):
        grade_counts(-1)


def read_labels(path: Path) -> list[list[str]]:
    with path.open(newline="") as handle:
        return list(csv.reader(handle))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "a"
    synthesize(out, 10, seed=7, height_range=SMALL, jobs=1, progress=False)
    return out


def test_writes_eyepacs_style_files_and_labels(synthetic):
    rows = read_labels(synthetic / "labels.csv")
    assert rows[0] == ["image", "level"]
    names = [row[0] for row in rows[1:]]
    assert len(names) == 10
    assert sorted(int(row[1]) for row in rows[1:]) == sorted(
        np.repeat(np.arange(5), grade_counts(10)).tolist()
    )
    assert {p.stem for p in synthetic.glob("*.jpeg")} == set(names)
    assert all(name.endswith(("_left", "_right")) for name in names)


def test_images_are_wide_with_black_borders(synthetic):
    for path in sorted(synthetic.glob("*.jpeg")):
        image = np.asarray(Image.open(path))
        height, width = image.shape[:2]
        assert SMALL[0] <= height <= SMALL[1]
        assert 1.29 <= width / height <= 1.51
        assert image[:, : width // 20].max(axis=2).mean() < 12  # dark left border
        centre = image[height // 3 : 2 * height // 3, width // 3 : 2 * width // 3]
        assert centre[..., 0].mean() > 2 * centre[..., 2].mean()  # reddish fundus


def test_same_seed_same_bytes(synthetic, tmp_path):
    synthesize(tmp_path, 10, seed=7, height_range=SMALL, jobs=2, progress=False)
    for path in synthetic.iterdir():
        assert (tmp_path / path.name).read_bytes() == path.read_bytes(), path.name


def test_other_seed_other_images(synthetic, tmp_path):
    synthesize(tmp_path, 3, seed=8, height_range=SMALL, jobs=1, progress=False)
    first = sorted(tmp_path.glob("*.jpeg"))[0]
    assert first.read_bytes() != (synthetic / first.name).read_bytes()


def test_larger_sizes_are_allowed(tmp_path):
    synthesize(tmp_path, 1, seed=0, height_range=(1500, 1500), jobs=1, progress=False)
    image = Image.open(next(tmp_path.glob("*.jpeg")))
    assert image.size[1] == 1500


@pytest.mark.parametrize(
    ("n", "heights", "message"),
    [(0, SMALL, ">= 1"), (3, (100, 200), "height range"), (3, (400, 300), "height range")],
)
def test_rejects_bad_arguments(tmp_path, n, heights, message):
    with pytest.raises(ValueError, match=message):
        synthesize(tmp_path, n, height_range=heights, progress=False)
    assert not list(tmp_path.iterdir())
