"""OpenCV's fine-grained static saliency, re-implemented bit for bit and much faster.

``cv2.saliency.StaticSaliencyFineGrained`` (opencv-contrib) computes, on a grey image smoothed
twice with a 3 x 3 Gaussian, centre-surround differences at six window half-sizes using a
float32 integral image; it is written as per-pixel C++ loops and costs ~30-75 ms for a 512 x 512
image. The same float32 operations, in the same order, give the same bits:

1. ``value = ((I[y2, x2] + I[y1, x1]) - I[y2, x1]) - I[y1, x2]`` over the window
   ``x - n + 1 .. x + n`` (corners clamped to the integral image), minus the centre pixel,
   divided by the window's pixel count minus one (float32);
2. "on" = ``centre - value`` and "off" = ``value - centre``, truncated to uint8 where positive;
3. on and off summed over the six scales (uint16), each divided by its maximum (float32) and
   scaled by 255 (float64), truncated to uint8;
4. ``255 * (on + off) / max(max on, max off)`` in float64, cast to uint8 *with wrap-around*
   (what the C++ cast does on x86), then multiplied by float32 ``1 / 255``.

A zero maximum (constant images) gives NaN in OpenCV, which its casts turn into 0.

:func:`fine_grained_saliency` runs a numba kernel when numba is installed and the vectorised
NumPy version (:func:`fine_grained_saliency_numpy`) otherwise.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

from ssit.prepare.compiled import NUMBA_AVAILABLE, njit

__all__ = [
    "NEIGHBOURHOODS",
    "NUMBA_AVAILABLE",
    "fine_grained_saliency",
    "fine_grained_saliency_numba",
    "fine_grained_saliency_numpy",
]

logger = logging.getLogger(__name__)

NEIGHBOURHOODS = (12, 24, 48, 28, 56, 112)
"""Window half-sizes of the six centre-surround scales (OpenCV's 3*4, 3*4*2, ..., 7*4*2*2)."""

_TO_UNIT = np.float32(1.0) / np.float32(255.0)
_PAD = max(NEIGHBOURHOODS) + 1



def _smoothed_gray(image: np.ndarray) -> np.ndarray:
    """Grey (BGR weights) uint8 image blurred twice with a 3 x 3 Gaussian, as OpenCV does."""
    if image.dtype != np.uint8 or not (
        image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3))
    ):
        raise ValueError(
            f"expected a uint8 grey (h, w) or BGR (h, w, 3) image, got {image.dtype} {image.shape}"
        )
    if image.ndim == 3 and image.shape[2] == 3:
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    else:
        gray = np.ascontiguousarray(image.reshape(image.shape[:2]))
    gray = cv2.GaussianBlur(gray, (3, 3), 0)
    return cv2.GaussianBlur(gray, (3, 3), 0)


def _integral(gray: np.ndarray) -> np.ndarray:
    return cv2.integral(gray, sdepth=cv2.CV_32F)


def _truncate_to_uint8(values: np.ndarray) -> np.ndarray:
    """C's (uchar) cast on x86: truncate toward zero to int32, keep the low byte."""
    return (np.trunc(values).astype(np.int64) & 0xFF).astype(np.uint8)


def _scale_by_maximum(sums: np.ndarray) -> np.ndarray:
    """``(uchar)(255. * (float)(sum / (float)max))``; all zero when the maximum is zero."""
    maximum = int(sums.max())
    if maximum == 0:
        return np.zeros(sums.shape, np.uint8)
    ratio = sums.astype(np.float32) / np.float32(maximum)
    return _truncate_to_uint8(255.0 * ratio.astype(np.float64))


def _mix_on_off(on: np.ndarray, off: np.ndarray) -> np.ndarray:
    """The final map in [0, 1]: wrapped uint8 of ``255 * (on + off) / max`` times 1/255."""
    maximum = max(int(on.max()), int(off.max()))
    if maximum == 0:
        return np.zeros(on.shape, np.float32)
    both = (on.astype(np.int32) + off).astype(np.float32).astype(np.float64)
    combined = _truncate_to_uint8(255.0 * both / np.float64(np.float32(maximum)))
    return combined.astype(np.float32) * _TO_UNIT


def _clamped_starts_ends(length: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Integral-image indices of the window ends (``i - n + 1``, ``i + n + 1``), clamped."""
    positions = np.arange(length)
    return np.clip(positions - n + 1, 0, length), np.clip(positions + n + 1, 0, length)


def _column_padded(integral: np.ndarray) -> np.ndarray:
    """The integral image with its first and last columns repeated ``_PAD`` times.

    Column ``x + _PAD`` of the result is column ``clip(x, 0, w)`` of ``integral`` for every
    ``-_PAD <= x <= w + _PAD``, so clamped window ends become plain slices.
    """
    return np.pad(integral, ((0, 0), (_PAD, _PAD)), mode="edge")


def fine_grained_saliency_numpy(image: np.ndarray) -> np.ndarray:
    """Fine-grained saliency of a uint8 BGR or grey image (float32 in [0, 1]), vectorised."""
    gray = _smoothed_gray(image)
    padded = _column_padded(_integral(gray))
    height, width = gray.shape
    centre = gray.astype(np.float32)
    sum_on = np.zeros((height, width), np.int32)
    sum_off = np.zeros((height, width), np.int32)
    with np.errstate(divide="ignore", invalid="ignore"):
        for n in NEIGHBOURHOODS:
            y1, y2 = _clamped_starts_ends(height, n)
            x1, x2 = _clamped_starts_ends(width, n)
            rows1, rows2 = padded[y1], padded[y2]
            left, right = slice(_PAD - n + 1, _PAD - n + 1 + width), slice(_PAD + n + 1,
                                                                           _PAD + n + 1 + width)
            total = rows2[:, right] + rows1[:, left]
            total -= rows2[:, left]
            total -= rows1[:, right]
            area = ((y2 - y1)[:, None] * (x2 - x1)[None, :] - 1).astype(np.float32)
            total -= centre
            total /= area
            on = np.subtract(centre, total, out=total)
            # value - centre is exactly -(centre - value) in IEEE arithmetic.
            sum_on += np.fmax(on, 0).astype(np.int32) & 0xFF
            sum_off += np.fmax(np.negative(on, out=on), 0).astype(np.int32) & 0xFF
    return _mix_on_off(_scale_by_maximum(sum_on), _scale_by_maximum(sum_off))


if NUMBA_AVAILABLE:

    @njit(error_model="numpy", boundscheck=False)
    def _scales_kernel(padded, gray, neighbourhoods, pad):  # pragma: no cover - compiled
        # Row by row, all scales on a row while its sums stay in cache; row slices and
        # non-negative indices only, so that the inner loop vectorises.
        height, width = gray.shape
        sum_on = np.zeros((height, width), np.uint16)
        sum_off = np.zeros((height, width), np.uint16)
        scales = neighbourhoods.size
        widths = np.empty((scales, width), np.int64)
        for s in range(scales):
            n = neighbourhoods[s]
            for x in range(width):
                widths[s, x] = min(x + n + 1, width) - min(max(x - n + 1, 0), width)
        area = np.empty(width, np.float32)
        centre = np.empty(width, np.float32)
        for y in range(height):
            grey_row = gray[y]
            on_row = sum_on[y]
            off_row = sum_off[y]
            for x in range(width):
                centre[x] = grey_row[x]
            for s in range(scales):
                n = neighbourhoods[s]
                y1 = min(max(y - n + 1, 0), height)
                y2 = min(y + n + 1, height)
                rows = y2 - y1
                scale_widths = widths[s]
                for x in range(width):
                    area[x] = np.float32(rows * scale_widths[x] - 1)
                row1 = padded[y1, pad - n + 1 : pad - n + 1 + width]
                row2 = padded[y2, pad - n + 1 : pad - n + 1 + width]
                row1_right = padded[y1, pad + n + 1 : pad + n + 1 + width]
                row2_right = padded[y2, pad + n + 1 : pad + n + 1 + width]
                for x in range(width):
                    total = row2_right[x] + row1[x]
                    total = total - row2[x]
                    total = total - row1_right[x]
                    on = centre[x] - (total - centre[x]) / area[x]
                    positive = on if on > 0 else np.float32(0)
                    negative = -on if on < 0 else np.float32(0)
                    on_row[x] += np.int32(positive) & 0xFF
                    off_row[x] += np.int32(negative) & 0xFF
        return sum_on, sum_off

    @njit(error_model="numpy")
    def _scale_table(maximum):  # pragma: no cover - compiled
        """``(uchar)(255. * (float)(s / (float)maximum))`` for every sum s <= maximum."""
        table = np.zeros(maximum + 1, np.int32)
        if maximum > 0:
            divisor = np.float32(maximum)
            for value in range(maximum + 1):
                table[value] = np.int32(255.0 * np.float64(np.float32(value) / divisor))
        return table

    @njit(error_model="numpy", boundscheck=False)
    def _mix_kernel(sum_on, sum_off):  # pragma: no cover - compiled
        # Sums are at most 6 * 255 and on + off at most 510: every float operation of OpenCV's
        # loops is taken once per distinct value, in lookup tables.
        on = _scale_table(sum_on.max())
        off = _scale_table(sum_off.max())
        maximum = max(on.max(), off.max())
        mixed = np.zeros(511, np.float32)
        if maximum > 0:
            scale = np.float64(np.float32(maximum))
            unit = np.float32(1.0) / np.float32(255.0)
            for value in range(511):
                both = np.float64(np.float32(value))
                mixed[value] = np.float32(np.int32(255.0 * both / scale) & 0xFF) * unit
        height, width = sum_on.shape
        result = np.empty((height, width), np.float32)
        for y in range(height):
            on_row, off_row, out = sum_on[y], sum_off[y], result[y]
            for x in range(width):
                out[x] = mixed[on[on_row[x]] + off[off_row[x]]]
        return result


def fine_grained_saliency_numba(image: np.ndarray) -> np.ndarray:
    """Fine-grained saliency of a uint8 BGR or grey image (float32 in [0, 1]), numba kernel.

    Raises RuntimeError when numba is not installed.
    """
    if not NUMBA_AVAILABLE:
        raise RuntimeError("numba is not installed (pip install numba)")
    gray = _smoothed_gray(image)
    neighbourhoods = np.array(NEIGHBOURHOODS, np.int64)
    padded = _column_padded(_integral(gray))
    sum_on, sum_off = _scales_kernel(padded, gray, neighbourhoods, _PAD)
    return _mix_kernel(sum_on, sum_off)


def fine_grained_saliency(image: np.ndarray) -> np.ndarray:
    """Bit-identical to ``StaticSaliencyFineGrained().computeSaliency(image)[1]``, faster.

    ``image`` is uint8, BGR (h, w, 3) or grey (h, w). Uses the numba kernel when numba is
    installed, the NumPy version otherwise.
    """
    if NUMBA_AVAILABLE:
        return fine_grained_saliency_numba(image)
    return fine_grained_saliency_numpy(image)
