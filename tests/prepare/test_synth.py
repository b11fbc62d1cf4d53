from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from ssit.prepare.synth import grade_counts, synthesize
from ssit.prepare.synth_lesions import RENDER_SIZE, paint_lesions

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


def test_other_seed_other_images_and_names(synthetic, tmp_path):
    """Sets made with two seeds (a pre-training set and a grading set) share no image name."""
    synthesize(tmp_path, 3, seed=8, height_range=SMALL, jobs=1, progress=False)
    names = {row[0] for row in read_labels(tmp_path / "labels.csv")[1:]}
    assert len(names) == 3
    assert not names & {row[0] for row in read_labels(synthetic / "labels.csv")[1:]}
    assert sorted(names)[0] == "800010_left"


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


DISC = (-0.42, -0.04)
BACKGROUND = np.array([200, 90, 40], np.float32)


def lesion_masks(grade: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(darker, brighter) pixel masks of the lesions painted on a flat orange fundus."""
    image = np.broadcast_to(BACKGROUND, (RENDER_SIZE, RENDER_SIZE, 3)).copy()
    paint_lesions(image, np.random.default_rng(seed), grade, DISC)
    change = image.sum(axis=2) - BACKGROUND.sum()
    return change < -30, change > 30


def test_grade_0_has_no_lesions():
    dark, bright = lesion_masks(0, seed=1)
    assert not dark.any() and not bright.any()


def test_lesion_area_grows_with_grade():
    """Mild is microaneurysms only (a few tiny dots); moderate and severe add haemorrhages and
    exudates large enough to survive a 96-pixel input (1 px there is 8 px here)."""
    area = {grade: np.mean([sum(m.sum() for m in lesion_masks(grade, seed)) for seed in range(4)])
            for grade in range(1, 5)}
    assert 0 < area[1] < 2_000
    assert area[2] > 3 * area[1]
    assert area[3] > 2 * area[2]
    assert area[4] > area[2]


def test_grade_1_lesions_are_tiny_dots_and_exudates_are_yellow():
    dark, bright = lesion_masks(1, seed=3)
    assert not bright.any()
    labels_count, _, stats, _ = cv2.connectedComponentsWithStats(dark.astype(np.uint8))
    assert labels_count > 1 and stats[1:, cv2.CC_STAT_AREA].max() <= 100  # radius <= ~5 px
    image = np.broadcast_to(BACKGROUND, (RENDER_SIZE, RENDER_SIZE, 3)).copy()
    paint_lesions(image, np.random.default_rng(3), 3, DISC)
    yellow = image[(image[..., 1] > 180) & (image[..., 0] > 200)]
    assert len(yellow) > 100 and (yellow[:, 2] < yellow[:, 1]).all()


def test_lesions_keep_away_from_the_optic_disc():
    dark, bright = lesion_masks(3, seed=5)
    y, x = np.mgrid[:RENDER_SIZE, :RENDER_SIZE]
    cx, cy = (DISC[0] + 1) * RENDER_SIZE / 2, (DISC[1] + 1) * RENDER_SIZE / 2
    near_disc = (x - cx) ** 2 + (y - cy) ** 2 < (0.08 * RENDER_SIZE / 2) ** 2
    assert not (dark | bright)[near_disc].any()
