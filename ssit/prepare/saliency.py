"""Saliency map of a fundus crop: contrast enhancement + OpenCV fine-grained static saliency."""

from __future__ import annotations

import functools

import cv2
import numpy as np

__all__ = ["saliency_float", "saliency_map"]

# Ratios of the saliency recipe for a 512-pixel crop: blur sigma 512/30, grey-out outside radius
# 0.98 * 256, zero the map outside radius 240.
_BLUR_SIGMA_FRACTION = 1 / 30
_ENHANCE_RADIUS_FRACTION = 0.98 / 2
_KEEP_RADIUS_FRACTION = 240 / 512


@functools.cache
def _fine_grained() -> cv2.saliency.StaticSaliencyFineGrained:
    return cv2.saliency.StaticSaliencyFineGrained_create()


@functools.lru_cache(maxsize=8)
def _outside_circle(size: int, radius: float) -> np.ndarray:
    """Boolean mask of the pixels whose centres lie farther than ``radius`` from the centre."""
    centre = (size - 1) / 2
    offsets = np.arange(size, dtype=np.float64) - centre
    mask = offsets[None, :] ** 2 + offsets[:, None] ** 2 > radius**2
    mask.flags.writeable = False
    return mask


def saliency_float(crop: np.ndarray) -> np.ndarray:
    """Saliency of a square RGB uint8 fundus crop as float32 in [0, 1] (zero outside r=240)."""
    if crop.dtype != np.uint8 or crop.ndim != 3 or crop.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 crop, got {crop.dtype} {crop.shape}")
    size = crop.shape[0]
    if crop.shape[1] != size:
        raise ValueError(f"expected a square crop, got {crop.shape[1]}x{size}")
    bgr = np.ascontiguousarray(crop[:, :, ::-1])
    blurred = cv2.GaussianBlur(bgr, (0, 0), sigmaX=size * _BLUR_SIGMA_FRACTION)
    enhanced = cv2.addWeighted(bgr, 4, blurred, -4, 128)
    enhanced[_outside_circle(size, size * _ENHANCE_RADIUS_FRACTION)] = 128
    ok, saliency = _fine_grained().computeSaliency(enhanced)
    if not ok:
        raise RuntimeError("OpenCV fine-grained saliency failed")
    saliency = np.clip(np.asarray(saliency, dtype=np.float32), 0.0, 1.0)
    saliency[_outside_circle(size, size * _KEEP_RADIUS_FRACTION)] = 0.0
    return saliency


def saliency_map(crop: np.ndarray) -> np.ndarray:
    """8-bit saliency map (0..255 for saliency 0..1) of a square RGB uint8 fundus crop."""
    return np.rint(saliency_float(crop) * 255).astype(np.uint8)
