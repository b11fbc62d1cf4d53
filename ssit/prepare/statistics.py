"""Reference channel statistics of preprocessed fundus crops.

The mean and standard deviation, per RGB channel in [0, 1], of EyePACS photographs after the
fundus crop: the normalisation pre-training and grading use unless told otherwise. (The shard
writer records the statistics of each data set it writes in its ``manifest.json``.)
"""

from __future__ import annotations

import numpy as np

__all__ = ["EYEPACS_MEAN", "EYEPACS_STD", "channel_moments"]

EYEPACS_MEAN: tuple[float, float, float] = (0.4258, 0.2974, 0.2129)
EYEPACS_STD: tuple[float, float, float] = (0.2767, 0.2024, 0.1686)


_LEVELS = np.arange(256, dtype=np.int64)


def channel_moments(image: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Per-channel sum and sum of squares of an (h, w, c) uint8 image, as exact integers.

    Counted by level (a histogram per channel), which is many times cheaper than squaring
    every pixel in 64-bit integers.
    """
    if image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError(f"expected an (h, w, c) uint8 image, got {image.dtype} {image.shape}")
    flat = image.reshape(-1, image.shape[2])
    counts = [np.bincount(flat[:, channel], minlength=256) for channel in range(flat.shape[1])]
    return (tuple(int(n @ _LEVELS) for n in counts),
            tuple(int(n @ (_LEVELS * _LEVELS)) for n in counts))
