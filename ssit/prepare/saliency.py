"""Saliency map of a fundus crop: contrast enhancement + fine-grained static saliency.

:func:`saliency_map_paper` is the SSiT authors' ``saliency_detect.py`` step for step (default
recipe); :func:`saliency_map` is the cheaper variant of the ``--fast`` recipe: the blurred
background of the contrast enhancement is computed at a quarter of the resolution, there is no
JPEG round trip, and the circles go by pixel-centre distance. Both use the bit-exact
re-implementation of OpenCV's fine-grained saliency in :mod:`ssit.prepare.fine_grained`.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

from ssit.prepare.fine_grained import fine_grained_saliency
from ssit.prepare.gaussian import gaussian_blur

__all__ = [
    "reduced_scale_blur",
    "saliency_float",
    "saliency_float_paper",
    "saliency_map",
    "saliency_map_paper",
]

# Ratios of the saliency recipe for a 512-pixel crop: blur sigma 512/30, grey-out outside radius
# 0.98 * 256, zero the map outside radius 240.
_BLUR_SIGMA_FRACTION = 1 / 30
_ENHANCE_RADIUS_FRACTION = 0.98 / 2
_KEEP_RADIUS_FRACTION = 240 / 512
# The --fast recipe blurs a copy shrunk by this factor (sigma 17 px at 512 px is 4.3 px there).
_FAST_BLUR_REDUCTION = 4


@functools.lru_cache(maxsize=8)
def _outside_circle(size: int, radius: float) -> np.ndarray:
    """Boolean mask of the pixels whose centres lie farther than ``radius`` from the centre."""
    centre = (size - 1) / 2
    offsets = np.arange(size, dtype=np.float64) - centre
    mask = offsets[None, :] ** 2 + offsets[:, None] ** 2 > radius**2
    mask.flags.writeable = False
    return mask


def _check_square_colour(crop: np.ndarray) -> int:
    if crop.dtype != np.uint8 or crop.ndim != 3 or crop.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 crop, got {crop.dtype} {crop.shape}")
    if crop.shape[1] != crop.shape[0]:
        raise ValueError(f"expected a square crop, got {crop.shape[1]}x{crop.shape[0]}")
    return crop.shape[0]


@functools.lru_cache(maxsize=8)
def _drawn_disc(size: int, radius: int) -> np.ndarray:
    """Boolean mask of ``cv2.circle`` filled at (size // 2, size // 2), 8-connected edge."""
    mask = np.zeros((size, size), np.uint8)
    cv2.circle(mask, (size // 2, size // 2), radius, 1, -1, cv2.LINE_8)
    disc = mask.astype(bool)
    disc.flags.writeable = False
    return disc


def saliency_float_paper(bgr: np.ndarray) -> np.ndarray:
    """The authors' saliency of a square BGR uint8 crop (as read by ``cv2.imread``), float32.

    Contrast enhancement ``4 img - 4 GaussianBlur(img, size / 30) + 128`` (saturated to uint8),
    128 outside the disc of radius ``int(size / 2 * 0.98)``, a JPEG round trip at OpenCV's
    default quality, fine-grained saliency, zero outside the disc of radius 240 (at 512 px).
    """
    size = _check_square_colour(bgr)
    blurred = gaussian_blur(bgr, size / 30)
    enhanced = cv2.addWeighted(bgr, 4, blurred, -4, 128)
    enhanced[~_drawn_disc(size, int(size / 2 * 0.98))] = 128
    ok, jpeg = cv2.imencode(".jpeg", enhanced)
    if not ok:
        raise RuntimeError("JPEG encoding of the enhanced crop failed")
    saliency = fine_grained_saliency(cv2.imdecode(jpeg, cv2.IMREAD_COLOR))
    saliency[~_drawn_disc(size, round(size * _KEEP_RADIUS_FRACTION))] = 0.0
    return saliency


def saliency_map_paper(bgr: np.ndarray) -> np.ndarray:
    """8-bit map (0..255 for saliency 0..1) of :func:`saliency_float_paper`."""
    return np.rint(saliency_float_paper(bgr) * 255).astype(np.uint8)


def reduced_scale_blur(image: np.ndarray, sigma: float, reduction: int = _FAST_BLUR_REDUCTION
                       ) -> np.ndarray:
    """An approximate Gaussian blur of a square uint8 image, about 10x cheaper for a large
    ``sigma``: area-shrink by ``reduction``, blur with ``sigma / reduction``, enlarge bilinearly."""
    size = image.shape[0]
    small_size = max(1, size // reduction)
    small = cv2.resize(image, (small_size, small_size), interpolation=cv2.INTER_AREA)
    blurred = cv2.GaussianBlur(small, (0, 0), sigma * small_size / size)
    return cv2.resize(blurred, (size, size), interpolation=cv2.INTER_LINEAR)


def saliency_float(crop: np.ndarray) -> np.ndarray:
    """Saliency of a square RGB uint8 fundus crop as float32 in [0, 1] (zero outside r=240),
    the ``--fast`` recipe's: background blurred at reduced scale, no JPEG round trip."""
    size = _check_square_colour(crop)
    bgr = np.ascontiguousarray(crop[:, :, ::-1])
    blurred = reduced_scale_blur(bgr, size * _BLUR_SIGMA_FRACTION)
    enhanced = cv2.addWeighted(bgr, 4, blurred, -4, 128)
    enhanced[_outside_circle(size, size * _ENHANCE_RADIUS_FRACTION)] = 128
    saliency = fine_grained_saliency(enhanced)
    saliency[_outside_circle(size, size * _KEEP_RADIUS_FRACTION)] = 0.0
    return saliency


def saliency_map(crop: np.ndarray) -> np.ndarray:
    """8-bit saliency map (0..255 for saliency 0..1) of a square RGB uint8 fundus crop."""
    return np.rint(saliency_float(crop) * 255).astype(np.uint8)
