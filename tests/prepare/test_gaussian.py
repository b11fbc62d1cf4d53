from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data

from ssit.prepare.gaussian import gaussian_blur, integer_gaussian_kernel, kernel_size


def test_kernel_size_is_opencvs_rule_for_8_bit_images():
    assert kernel_size(512 / 30) == 103  # round(6 * 17.07 + 1) = 103, odd
    assert kernel_size(1.0) == 7
    assert kernel_size(0.5) == 5  # round(4.0) = 4 -> 5
    with pytest.raises(ValueError, match="sigma must be positive"):
        kernel_size(0.0)


def test_integer_kernel_sums_to_one_in_fixed_point():
    kernel = integer_gaussian_kernel(512 / 30)
    assert kernel.size == 103 and kernel.dtype == np.int32
    assert int(kernel.sum()) == 256
    assert kernel.max() == 6 and kernel.min() == 0
    assert abs(int(np.argmax(kernel)) - 51) <= 8


@pytest.mark.parametrize(
    ("shape", "sigma"),
    [((512, 512, 3), 512 / 30), ((513, 700, 3), 512 / 30), ((300, 200), 512 / 30),
     ((512, 512, 1), 512 / 30), ((64, 97, 3), 1.3), ((40, 40, 3), 640 / 30 / 4)],
)
def test_bit_identical_to_opencv_on_random_images(shape, sigma):
    rng = np.random.default_rng(shape[0] * 1000 + shape[1])
    for _ in range(3):
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        expected = cv2.GaussianBlur(image, (0, 0), sigma).reshape(shape)
        assert np.array_equal(gaussian_blur(image, sigma), expected)


def test_bit_identical_to_opencv_on_the_retina_and_extremes():
    retina = cv2.resize(data.retina(), (512, 512), interpolation=cv2.INTER_AREA)
    for image in (retina, np.full((512, 512, 3), 255, np.uint8), np.zeros((512, 512, 3), np.uint8)):
        assert np.array_equal(gaussian_blur(image, 512 / 30),
                              cv2.GaussianBlur(image, (0, 0), 512 / 30))
    checker = (np.indices((512, 512)).sum(axis=0) % 2 * 255).astype(np.uint8)
    assert np.array_equal(gaussian_blur(checker, 512 / 30),
                          cv2.GaussianBlur(checker, (0, 0), 512 / 30))


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="uint8"):
        gaussian_blur(np.zeros((512, 512, 3), np.float32), 17.0)
    with pytest.raises(ValueError, match="kernel radius"):
        gaussian_blur(np.zeros((40, 512, 3), np.uint8), 17.0)
