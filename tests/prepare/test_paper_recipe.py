"""The default recipe against a plain rendering of the SSiT authors' two preprocessing scripts."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageFilter
from skimage import data

from ssit.prepare.sample import encode_sample, preprocess_image
from ssit.prepare.synth import synthesize


def authors_crop(source: Path, target: Path, size: int = 512) -> tuple[int, int, int, int]:
    """Step 1 as the authors run it: PIL blur, border-strip background, bbox, Lanczos, q100."""
    image = Image.open(source)
    pixels = np.array(image.filter(ImageFilter.BLUR))
    h, w, _ = pixels.shape
    bbox = None
    if w > 1.2 * h:
        left_max = pixels[:, : w // 32, :].max(axis=(0, 1)).astype(int)
        right_max = pixels[:, -w // 32 :, :].max(axis=(0, 1)).astype(int)
        foreground = (pixels > np.maximum(left_max, right_max) + 10).astype(np.uint8)
        bbox = Image.fromarray(foreground).getbbox()
        if bbox is not None and (bbox[2] - bbox[0] < 0.8 * h or bbox[3] - bbox[1] < 0.8 * h):
            bbox = None
    if bbox is None:
        bbox = (max((w - h) // 2, 0), 0, min(w - (w - h) // 2, w), h)
    image.crop(bbox).resize([size, size], Image.LANCZOS).save(target, quality=100, subsampling=0)
    return bbox


def authors_saliency(source: Path) -> np.ndarray:
    """Step 2 as the authors run it: enhance, grey circle, JPEG round trip, saliency, r=240."""
    image = cv2.imread(str(source))
    mask = np.zeros(image.shape)
    cv2.circle(mask, (int(image.shape[1] / 2), int(image.shape[0] / 2)), int(512 / 2 * 0.98),
               (1, 1, 1), -1, 8, 0)
    weighted = cv2.addWeighted(image, 4, cv2.GaussianBlur(image, (0, 0), 512 / 30), -4, 128)
    processed = (weighted * mask + 128 * (1 - mask)).astype(np.uint8)
    _, jpeg = cv2.imencode(".jpeg", processed)
    processed = cv2.imdecode(jpeg, cv2.IMREAD_COLOR)
    _, saliency = cv2.saliency.StaticSaliencyFineGrained_create().computeSaliency(processed)
    circle = cv2.circle(np.zeros((512, 512)), (256, 256), 240, 1, -1)
    saliency *= circle
    return saliency


def fundus_photograph(path: Path, width: int, height: int, fill: float = 0.94,
                      offset: int = 0) -> Path:
    """The retina photograph scaled to ``fill`` of the height on a black canvas, as a JPEG."""
    side = round(fill * height)
    retina = cv2.resize(data.retina(), (side, side), interpolation=cv2.INTER_AREA)
    canvas = np.zeros((height, width, 3), np.uint8)
    top, left = (height - side) // 2, (width - side) // 2 + offset
    canvas[top : top + side, left : left + side] = retina
    Image.fromarray(canvas).save(path, quality=92)
    return path


@pytest.mark.parametrize(
    ("width", "height", "fill", "offset"),
    [
        (3888, 2592, 0.94, 0),  # the most common EyePACS size
        (4928, 3264, 0.96, 35),  # the largest EyePACS size, 16 MP
        (3216, 2136, 0.97, -40),
        (2592, 1944, 0.9, 25),
        (1501, 1000, 0.5, 0),  # fundus too small: the authors' box of width h + 1
    ],
    ids=["3888x2592", "4928x3264", "3216x2136", "2592x1944", "fallback-1501x1000"],
)
def test_crop_box_image_and_map_equal_the_authors_scripts(tmp_path, width, height, fill, offset):
    photograph = fundus_photograph(tmp_path / "10_left.jpeg", width, height, fill, offset)
    their_crop = tmp_path / "crop.jpeg"
    their_box = authors_crop(photograph, their_crop)
    their_map = authors_saliency(their_crop)

    ours = preprocess_image(photograph)

    assert ours.box == their_box
    assert ours.fallback == (fill < 0.8)
    assert ours.jpeg == their_crop.read_bytes()
    stored = np.asarray(Image.open(io.BytesIO(ours.jpeg)))
    assert np.array_equal(ours.crop, stored)
    assert np.array_equal(ours.saliency, np.rint(their_map * 255).astype(np.uint8))
    assert their_map.max() > 0.9  # a real map, not an empty one
    members = encode_sample(ours, source="10_left.jpeg", grade=2, dataset="eyepacs")
    assert members["jpg"] == their_crop.read_bytes()


def test_synthetic_eyepacs_photograph_at_16_mp_equals_the_authors_scripts(tmp_path):
    """Sensor grain in the border, lesions, a fundus clipped at the top and bottom: the box,
    the stored JPEG bytes and the map pixels are the authors' at the largest EyePACS size."""
    raw = tmp_path / "raw"
    synthesize(raw, 1, seed=5, sizes=[(4928, 3264)], jobs=1, progress=False)
    photograph = next(raw.glob("*.jpeg"))
    their_crop = tmp_path / "crop.jpeg"
    their_box = authors_crop(photograph, their_crop)
    ours = preprocess_image(photograph)
    assert ours.box == their_box and not ours.fallback
    assert ours.jpeg == their_crop.read_bytes()
    their_map = authors_saliency(their_crop)
    assert np.array_equal(ours.saliency, np.rint(their_map * 255).astype(np.uint8))


def test_portrait_photographs_take_the_centred_square(tmp_path):
    photograph = fundus_photograph(tmp_path / "portrait.jpeg", 900, 1200, fill=0.7)
    ours = preprocess_image(photograph)
    assert ours.fallback
    assert ours.box == (0, 150, 900, 1050)
    assert ours.crop.shape == (512, 512, 3) and ours.saliency.shape == (512, 512)


def test_fast_recipe_is_close_to_the_default(tmp_path):
    photograph = fundus_photograph(tmp_path / "10_left.jpeg", 2592, 1728, 0.95, 10)
    paper = preprocess_image(photograph)
    fast = preprocess_image(photograph, fast=True)
    assert fast.jpeg is None
    assert np.abs(np.subtract(fast.box, paper.box)).max() <= 8
    ours, theirs = fast.saliency > 127, paper.saliency > 127
    assert (ours & theirs).sum() / (ours | theirs).sum() > 0.6


def full_blur_box(image: Image.Image) -> tuple[int, int, int, int] | None:
    """The authors' foreground bounding box computed on the whole blurred image."""
    pixels = np.array(image.filter(ImageFilter.BLUR))
    w = pixels.shape[1]
    background = np.maximum(pixels[:, : w // 32].max(axis=(0, 1)).astype(int),
                            pixels[:, -w // 32 :].max(axis=(0, 1)).astype(int))
    return Image.fromarray((pixels > background + 10).astype(np.uint8)).getbbox()


def noisy_canvas(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Dark noisy background, a bright blob of random size and place, scattered bright pixels."""
    pixels = rng.integers(0, 12, (height, width, 3), dtype=np.uint8)
    cy, cx = rng.integers(0, height), rng.integers(0, width)
    radius = rng.integers(1, max(2, height // 2))
    yy, xx = np.ogrid[:height, :width]
    pixels[(yy - cy) ** 2 + (xx - cx) ** 2 < radius**2] += np.uint8(rng.integers(15, 200))
    spots = rng.integers(0, 30)
    pixels[rng.integers(0, height, spots), rng.integers(0, width, spots)] = 255
    return Image.fromarray(pixels)


def test_banded_blur_finds_the_full_blur_box():
    from ssit.prepare.crop import _foreground_box

    rng = np.random.default_rng(7)
    for trial in range(120):
        height = int(rng.integers(64, 400))
        width = int(rng.integers(int(1.21 * height) + 1, 3 * height))
        image = noisy_canvas(rng, width, height)
        expected = full_blur_box(image)
        found = _foreground_box(image, width // 32, -(-width // 32))
        if expected is not None and min(expected[2] - expected[0],
                                        expected[3] - expected[1]) >= 0.8 * height:
            assert found == expected, trial
        else:
            assert found is None, trial


@pytest.mark.parametrize("spot", [(12, 300), (3, 2), (3996, 150), (1700, 5), (1800, 1495)])
def test_bright_pixels_that_the_blur_removes_do_not_move_the_box(spot):
    """A lone pixel well above the threshold, outside the fundus, vanishes in the blur (its own
    blurred value ignores it, its neighbours' take 1/16 of it): the box is the fundus's."""
    from ssit.prepare.crop import find_fundus_box_paper

    pixels = np.full((1500, 4000, 3), 5, np.uint8)
    yy, xx = np.ogrid[:1500, :4000]
    pixels[(yy - 750) ** 2 + (xx - 2000) ** 2 < 700**2] = (120, 60, 30)
    pixels[spot[1], spot[0]] = (60, 20, 60)
    image = Image.fromarray(pixels)
    box, fallback = find_fundus_box_paper(image)
    assert box == full_blur_box(image) and not fallback
    assert np.abs(np.subtract(box, (1300, 50, 2700, 1450))).max() <= 2


@pytest.mark.parametrize(("width", "height", "fill", "offset"),
                         [(3888, 2592, 0.94, 0), (2592, 1728, 0.99, -300), (2000, 1500, 0.9, 40)])
def test_banded_blur_box_on_fundus_canvases(tmp_path, width, height, fill, offset):
    from ssit.prepare.crop import find_fundus_box_paper

    image = Image.open(fundus_photograph(tmp_path / "f.jpeg", width, height, fill, offset))
    assert find_fundus_box_paper(image) == (full_blur_box(image), False)
