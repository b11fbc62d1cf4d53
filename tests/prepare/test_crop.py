from __future__ import annotations

import numpy as np
import pytest
from skimage import data

from ssit.prepare.crop import crop_fundus, find_fundus_box, fundus_problem


@pytest.fixture(scope="module")
def retina() -> np.ndarray:
    return data.retina()


def content_box(image: np.ndarray, level: int = 12) -> tuple[int, int, int, int]:
    """Bounding box of the pixels brighter than ``level`` (the photograph's own disc)."""
    ys, xs = np.nonzero(image.max(axis=2) > level)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def test_crop_recovers_the_retina_pasted_on_a_wide_black_canvas(retina):
    height, width = 1500, 2100
    left, top = 420, 45
    canvas = np.zeros((height, width, 3), np.uint8)
    canvas[top : top + retina.shape[0], left : left + retina.shape[1]] = retina
    x0, y0, x1, y1 = content_box(retina)
    expected = (left + x0, top + y0, left + x1, top + y1)

    result = crop_fundus(canvas)

    assert not result.fallback
    assert np.abs(np.subtract(result.box, expected)).max() <= 3, (result.box, expected)
    assert result.image.shape == (512, 512, 3)
    assert result.image.dtype == np.uint8
    # The crop is the photograph itself: compare with a direct resize of the pasted region.
    reference = crop_fundus(np.ascontiguousarray(canvas[expected[1] : expected[3],
                                                        expected[0] : expected[2]]))
    difference = np.abs(result.image.astype(int) - reference.image.astype(int))
    assert np.median(difference) <= 3


def test_noisy_background_and_jpeg_level_black_are_not_foreground(retina):
    rng = np.random.default_rng(0)
    canvas = rng.integers(0, 9, (1411, 2000, 3)).astype(np.uint8)
    canvas[:, 300:1711] = np.maximum(canvas[:, 300:1711], retina)
    box, fallback = find_fundus_box(canvas)
    x0, y0, x1, y1 = content_box(retina, level=20)
    assert not fallback
    assert abs(box[0] - (300 + x0)) <= 4 and abs(box[2] - (300 + x1)) <= 4
    assert abs(box[1] - y0) <= 4 and abs(box[3] - y1) <= 4


def test_small_fundus_falls_back_to_the_centred_square():
    canvas = np.zeros((800, 1200, 3), np.uint8)
    yy, xx = np.mgrid[:800, :1200]
    canvas[(xx - 600) ** 2 + (yy - 400) ** 2 < 200**2] = (200, 90, 40)  # diameter 0.5 h
    box, fallback = find_fundus_box(canvas)
    assert fallback
    assert box == (200, 0, 1000, 800)


def test_empty_wide_image_falls_back_to_the_centred_square():
    box, fallback = find_fundus_box(np.zeros((600, 1000, 3), np.uint8))
    assert fallback
    assert box == (200, 0, 800, 600)


def test_bright_border_columns_hide_the_fundus_and_fall_back():
    canvas = np.zeros((600, 1000, 3), np.uint8)
    canvas[:, 450:550] = 120
    canvas[:, :5] = 255  # a white edge makes the background level maximal
    _, fallback = find_fundus_box(canvas)
    assert fallback


def test_not_wide_images_take_the_centred_square_of_the_shorter_side(retina):
    box, fallback = find_fundus_box(retina[:, :1000])  # 1411 high, 1000 wide
    assert fallback
    assert box == (0, 205, 1000, 1205)
    square = crop_fundus(retina)
    assert square.box == (0, 0, 1411, 1411)
    assert square.image.shape == (512, 512, 3)


def test_small_images_are_upscaled_to_the_crop_size():
    image = np.full((100, 150, 3), 80, np.uint8)
    result = crop_fundus(image, size=256)
    assert result.image.shape == (256, 256, 3)


@pytest.mark.parametrize(
    "bad",
    [np.zeros((50, 80, 3), np.float32), np.zeros((50, 80), np.uint8), np.zeros((50, 80, 4),
                                                                              np.uint8)],
    ids=["float", "gray", "rgba"],
)
def test_crop_rejects_arrays_that_are_not_rgb_uint8(bad):
    with pytest.raises(ValueError, match="RGB uint8"):
        find_fundus_box(bad)


def test_fundus_problem_flags_black_and_uniform_crops(retina):
    assert "nearly black" in fundus_problem(np.full((512, 512, 3), 6, np.uint8))
    assert "uniform" in fundus_problem(np.full((512, 512, 3), 140, np.uint8))
    assert fundus_problem(crop_fundus(retina).image) is None
