"""Per-channel moments of a crop, as the shard writer records them."""

from __future__ import annotations

import numpy as np
import pytest

from ssit.prepare.statistics import channel_moments


def test_moments_of_a_hand_worked_image():
    image = np.array([[[0, 1, 255], [2, 3, 255]],
                      [[4, 5, 0], [250, 7, 1]]], np.uint8)
    sums, squares = channel_moments(image)
    assert sums == (256, 16, 511)
    assert squares == (4 + 16 + 62500, 1 + 9 + 25 + 49, 2 * 65025 + 1)


def test_moments_are_exact_on_a_full_crop():
    rng = np.random.default_rng(3)
    crop = rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)
    pixels = crop.reshape(-1, 3).astype(np.int64)
    assert channel_moments(crop) == (tuple(int(v) for v in pixels.sum(axis=0)),
                                     tuple(int(v) for v in (pixels * pixels).sum(axis=0)))
    white = np.full((512, 512, 3), 255, np.uint8)  # the largest sums: no overflow
    assert channel_moments(white) == ((512 * 512 * 255,) * 3, (512 * 512 * 255 * 255,) * 3)


@pytest.mark.parametrize("bad", [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 3), np.float32)])
def test_moments_reject_what_is_not_a_uint8_image(bad):
    with pytest.raises(ValueError, match="uint8 image"):
        channel_moments(bad)
