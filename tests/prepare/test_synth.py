from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from ssit.cli import main
from ssit.prepare.synth import EYEPACS_SIZES, grade_counts, parse_sizes, synthesize
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


def test_fixed_sizes_are_used_in_turn(tmp_path):
    sizes = [(400, 300), (352, 320), (330, 330)]
    synthesize(tmp_path, 4, seed=2, sizes=sizes, jobs=1, progress=False)
    names = [row[0] for row in read_labels(tmp_path / "labels.csv")[1:]]
    got = [Image.open(tmp_path / f"{name}.jpeg").size for name in names]
    assert got == [(400, 300), (352, 320), (330, 330), (400, 300)]
    image = np.asarray(Image.open(tmp_path / f"{names[0]}.jpeg"))
    assert image[:, :10].max(axis=2).mean() < 12  # still a dark border around the fundus


def test_eyepacs_sizes_include_the_largest_cameras():
    assert (4928, 3264) in EYEPACS_SIZES and (2592, 1944) in EYEPACS_SIZES
    assert all(5e6 <= w * h <= 16.1e6 for w, h in EYEPACS_SIZES)


def test_parse_sizes():
    assert parse_sizes("2592x1944, 4928X3264") == [(2592, 1944), (4928, 3264)]


@pytest.mark.parametrize(
    ("text", "message"),
    [("2592", "like 2592x1944"), ("2592x", "like 2592x1944"), ("ax300", "like 2592x1944"),
     ("400x-300", "like 2592x1944"), ("", "like 2592x1944"), ("300x400", "height <= width"),
     ("200x100", "128 <= height"), ("400x300,,", "like 2592x1944")],
)
def test_parse_sizes_rejects_bad_text(text, message):
    with pytest.raises(ValueError, match=message):
        parse_sizes(text)


def test_synthesize_rejects_bad_sizes(tmp_path):
    with pytest.raises(ValueError, match="at least one"):
        synthesize(tmp_path, 1, sizes=[], progress=False)
    with pytest.raises(ValueError, match="height <= width"):
        synthesize(tmp_path, 1, sizes=[(300, 400)], progress=False)
    assert not list(tmp_path.iterdir())


def test_cli_sizes(tmp_path):
    assert main(["synth", "--out", str(tmp_path), "--n", "1", "--sizes", "300x256",
                 "--jobs", "1"]) == 0
    assert Image.open(next(tmp_path.glob("*.jpeg"))).size == (300, 256)


@pytest.mark.parametrize("sizes", ["300by256", "256x300", "100x100"])
def test_cli_rejects_bad_sizes_in_one_line(tmp_path, capsys, sizes):
    assert main(["synth", "--out", str(tmp_path / "raw"), "--n", "1", "--sizes", sizes]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --sizes") and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "raw").exists()


def test_cli_sizes_and_height_exclude_each_other(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["synth", "--out", str(tmp_path), "--sizes", "eyepacs", "--height", "300", "400"])
    assert exit_info.value.code == 2


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
