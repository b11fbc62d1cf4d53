from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data

from ssit.prepare.fine_grained import (
    NUMBA_AVAILABLE,
    fine_grained_saliency,
    fine_grained_saliency_numba,
    fine_grained_saliency_numpy,
)

IMPLEMENTATIONS = [
    pytest.param(fine_grained_saliency_numpy, id="numpy"),
    pytest.param(
        fine_grained_saliency_numba,
        id="numba",
        marks=pytest.mark.skipif(not NUMBA_AVAILABLE, reason="numba is not installed"),
    ),
]


def opencv_saliency(image: np.ndarray) -> np.ndarray:
    ok, saliency = cv2.saliency.StaticSaliencyFineGrained_create().computeSaliency(image)
    assert ok
    return saliency


def assert_same_bits(ours: np.ndarray, reference: np.ndarray) -> None:
    assert ours.dtype == np.float32 and ours.shape == reference.shape
    different = ours.view(np.uint32) != reference.view(np.uint32)
    assert not different.any(), f"{int(different.sum())} pixels differ"


def retina_crop() -> np.ndarray:
    """The retina photograph as the pipeline sees it: square crop, 512 px, BGR."""
    retina = data.retina()
    side = min(retina.shape[:2])
    resized = cv2.resize(retina[:side, :side], (512, 512), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(resized[:, :, ::-1])


def random_images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(6)]
    # Smooth images stress the small centre-surround differences, sharp ones the large ones.
    images += [cv2.GaussianBlur(rng.integers(0, 256, (96, 80, 3), dtype=np.uint8), (0, 0), s)
               for s in (0.7, 2.0, 6.0)]
    images.append(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8))
    return images


@pytest.mark.parametrize("saliency", IMPLEMENTATIONS)
def test_bit_identical_to_opencv_on_the_retina_photograph(saliency):
    crop = retina_crop()
    reference = opencv_saliency(crop)
    assert reference.max() == 1.0 and 0.01 < reference.mean() < 0.5  # a real, non-trivial map
    assert_same_bits(saliency(crop), reference)


@pytest.mark.parametrize("saliency", IMPLEMENTATIONS)
def test_bit_identical_to_opencv_on_random_images(saliency):
    for image in random_images():
        assert_same_bits(saliency(image), opencv_saliency(image))


@pytest.mark.parametrize("saliency", IMPLEMENTATIONS)
@pytest.mark.parametrize("shape", [(37, 53, 3), (513, 511, 3), (1, 5, 3), (7, 1, 3), (2, 2, 3),
                                   (250, 3, 3), (1, 1, 3), (45, 61)])
def test_bit_identical_to_opencv_on_odd_sizes_and_grey_images(saliency, shape):
    image = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    assert_same_bits(saliency(image), opencv_saliency(image))


@pytest.mark.parametrize("saliency", IMPLEMENTATIONS)
@pytest.mark.parametrize("level", [0, 128, 255])
def test_constant_images_give_zero_like_opencv(saliency, level):
    image = np.full((40, 70, 3), level, np.uint8)
    result = saliency(image)
    assert_same_bits(result, opencv_saliency(image))
    assert not result.any()


def test_default_entry_point_matches_opencv():
    crop = retina_crop()[100:228, 200:328]
    assert_same_bits(fine_grained_saliency(crop), opencv_saliency(crop))


@pytest.mark.parametrize("saliency", IMPLEMENTATIONS)
@pytest.mark.parametrize(
    "bad",
    [np.zeros((8, 8, 3), np.float32), np.zeros((8, 8, 4), np.uint8), np.zeros(8, np.uint8)],
    ids=["float", "four-channels", "one-dimensional"],
)
def test_rejects_images_opencv_would_not_treat_as_grey_or_bgr(saliency, bad):
    with pytest.raises(ValueError, match="uint8 grey"):
        saliency(bad)


@pytest.mark.skipif(NUMBA_AVAILABLE, reason="numba is installed, so it is not missing")
def test_numba_entry_point_says_numba_is_missing():
    with pytest.raises(RuntimeError, match="numba is not installed"):
        fine_grained_saliency_numba(np.zeros((8, 8), np.uint8))
