from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data

from ssit.prepare.crop import crop_fundus
from ssit.prepare.saliency import saliency_map

SIZE = 512


def radius_from_centre(size: int = SIZE) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    centre = (size - 1) / 2
    return np.hypot(xx - centre, yy - centre)


def plain_fundus(seed: int = 0) -> np.ndarray:
    """An orange-red disc with vignetting and faint texture, no vessels and no lesions."""
    rng = np.random.default_rng(seed)
    radius = radius_from_centre() / (SIZE / 2)
    shade = (1 - 0.4 * np.clip(radius, 0, 1) ** 2)[..., None]
    image = np.array([205, 95, 40], np.float32) * shade
    image += rng.normal(0, 1.0, image.shape)
    image[radius > 0.97] = 0
    return np.clip(image, 0, 255).astype(np.uint8)


LESIONS = {
    "microaneurysm": ((150, 300), 3, (90, 15, 10)),
    "haemorrhage": ((330, 180), 9, (95, 15, 10)),
    "exudate": ((260, 380), 3, (250, 235, 150)),
    "cotton wool spot": ((360, 320), 12, (235, 215, 190)),
}


def test_map_is_512_uint8_and_zero_outside_radius_240():
    saliency = saliency_map(crop_fundus(data.retina()).image)
    assert saliency.shape == (SIZE, SIZE)
    assert saliency.dtype == np.uint8
    radius = radius_from_centre()
    assert saliency[radius > 240.5].max() == 0
    inside = saliency[radius < 239]
    assert inside.max() >= 200  # the fine-grained map is normalised to [0, 1]
    assert 0 < inside.mean() < 128


def test_vessels_of_the_real_photograph_are_salient():
    crop = crop_fundus(data.retina()).image
    saliency = saliency_map(crop).astype(float)
    green = crop[..., 1].astype(float)
    local = cv2.GaussianBlur(green, (0, 0), 4)
    radius = radius_from_centre()
    vessel = (green < local - 12) & (radius < 200)  # darker than the surroundings
    background = (np.abs(green - local) < 1.5) & (radius < 200)
    assert vessel.sum() > 1000 and background.sum() > 1000
    assert saliency[vessel].mean() > 2 * saliency[background].mean()


@pytest.mark.parametrize("kind", list(LESIONS))
def test_lesions_are_brighter_than_plain_background(kind):
    (x, y), radius, colour = LESIONS[kind]
    image = plain_fundus()
    cv2.circle(image, (x, y), radius, colour, -1, cv2.LINE_AA)
    saliency = saliency_map(image).astype(float)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    near_lesion = np.hypot(xx - x, yy - y) <= radius + 2
    far = radius_from_centre() < 200
    far &= np.hypot(xx - x, yy - y) > 60
    assert saliency[near_lesion].mean() > 3 * saliency[far].mean() + 10


def test_map_is_deterministic():
    image = plain_fundus(3)
    assert np.array_equal(saliency_map(image), saliency_map(image.copy()))


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.zeros((512, 400, 3), np.uint8), "square"),
        (np.zeros((512, 512), np.uint8), "RGB uint8"),
        (np.zeros((512, 512, 3), np.float32), "RGB uint8"),
    ],
)
def test_rejects_wrong_input(bad, message):
    with pytest.raises(ValueError, match=message):
        saliency_map(bad)


def test_reduced_scale_blur_is_close_to_the_exact_blur_of_a_fundus():
    from ssit.prepare.gaussian import gaussian_blur
    from ssit.prepare.saliency import reduced_scale_blur

    crop = np.ascontiguousarray(crop_fundus(data.retina()).image[:, :, ::-1])
    exact = gaussian_blur(crop, SIZE / 30).astype(float)
    approximate = reduced_scale_blur(crop, SIZE / 30).astype(float)
    assert approximate.shape == crop.shape
    difference = np.abs(approximate - exact)[radius_from_centre() < 230]
    assert difference.mean() < 1.0 and np.percentile(difference, 99) < 4
    too_small = reduced_scale_blur(crop, SIZE / 30 / 4).astype(float)
    assert np.abs(too_small - exact)[radius_from_centre() < 230].mean() > 2 * difference.mean()
    flat = np.full((SIZE, SIZE, 3), 77, np.uint8)
    assert np.array_equal(reduced_scale_blur(flat, 5.0), flat)
