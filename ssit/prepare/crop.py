"""Find the fundus in a photograph and crop it to a square training image."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageFilter

__all__ = [
    "CROP_SIZE",
    "Box",
    "CropResult",
    "crop_fundus",
    "crop_fundus_paper",
    "find_fundus_box",
    "find_fundus_box_paper",
    "fundus_problem",
]

CROP_SIZE = 512

Box = tuple[int, int, int, int]
"""(x0, y0, x1, y1) in pixels, x1 and y1 exclusive."""

_WIDE_RATIO = 1.2
_BORDER_FRACTION = 1 / 32
_FOREGROUND_MARGIN = 10
_MIN_BOX_FRACTION = 0.8


@dataclass(frozen=True)
class CropResult:
    """The square crop, the box it was taken from, and whether the centred-square fallback ran."""

    image: np.ndarray
    box: Box
    fallback: bool


def find_fundus_box(image: np.ndarray) -> tuple[Box, bool]:
    """Bounding box of the fundus in an RGB uint8 image, and whether the fallback was used.

    Wide images (w > 1.2 h) are lightly blurred; the background level is the channel-wise
    maximum of the leftmost and rightmost w/32 columns and the foreground is every pixel more
    than 10 levels above it in some channel. When the image is not wide, nothing is brighter
    than the background, or the box is narrower or shorter than 0.8 h, the centred square of
    side h (the shorter side) is returned with ``fallback=True``.
    """
    _check_rgb(image)
    height, width = image.shape[:2]
    if width > _WIDE_RATIO * height:
        blurred = cv2.GaussianBlur(image, (5, 5), 0)
        strip = max(1, int(width * _BORDER_FRACTION))
        background = np.maximum(_channel_max(blurred[:, :strip]),
                                _channel_max(blurred[:, -strip:]))
        # Brightness above the background, saturated at 0; a pixel is foreground when some
        # channel exceeds the margin, so only per-row and per-column maxima are needed.
        excess = cv2.subtract(blurred, (*(float(v) for v in background), 0.0))
        flat = excess.reshape(height, width * 3)
        row_max = flat.max(axis=1)
        col_max = flat.max(axis=0).reshape(width, 3).max(axis=1)
        rows = np.flatnonzero(row_max > _FOREGROUND_MARGIN)
        cols = np.flatnonzero(col_max > _FOREGROUND_MARGIN)
        if rows.size:
            box = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
            min_side = _MIN_BOX_FRACTION * height
            if box[2] - box[0] >= min_side and box[3] - box[1] >= min_side:
                return box, False
    side = min(height, width)
    x0, y0 = (width - side) // 2, (height - side) // 2
    return (x0, y0, x0 + side, y0 + side), True


def crop_fundus(image: np.ndarray, size: int = CROP_SIZE) -> CropResult:
    """Crop the fundus of an RGB uint8 image and resize it to ``size`` x ``size`` (area filter)."""
    box, fallback = find_fundus_box(image)
    x0, y0, x1, y1 = box
    region = image[y0:y1, x0:x1]
    shrinking = region.shape[0] >= size and region.shape[1] >= size
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC
    crop = cv2.resize(region, (size, size), interpolation=interpolation)
    return CropResult(np.ascontiguousarray(crop), box, fallback)


def find_fundus_box_paper(image: Image.Image) -> tuple[Box, bool]:
    """The SSiT authors' crop box of a full-resolution RGB photograph, and whether it fell back.

    Their rules, to the pixel: Pillow's 5 x 5 ``BLUR``; background = channel-wise maximum of the
    ``w // 32`` leftmost and ``ceil(w / 32)`` rightmost columns; foreground = some channel more
    than 10 above it. Without a box at least 0.8 h on each side (or when w <= 1.2 h) a landscape
    image takes their centred box of width ``w - 2 * ((w - h) // 2)`` (h or h + 1) and full
    height. Portrait images take the centred square of side w (theirs would be the whole,
    non-square image, distorted by the resize).
    """
    if image.mode != "RGB":
        raise ValueError(f"expected an RGB image, got mode {image.mode}")
    width, height = image.size
    if width > _WIDE_RATIO * height:
        box = _foreground_box(image, width // 32, -(-width // 32))
        if box is not None:
            return box, False
    if height > width:
        top = (height - width) // 2
        return (0, top, width, top + width), True
    left = (width - height) // 2
    return (left, 0, width - left, height), True


# Pillow's BLUR reads 2 pixels around each output pixel; a wider margin keeps every blurred
# window at least 5 x 5 (Pillow copies smaller images unfiltered).
_BLUR_MARGIN = 4
_FIRST_BAND = 16
_LARGEST_BAND = 256


def _blurred(image: Image.Image, box: Box) -> np.ndarray:
    """``np.asarray(image.filter(BLUR))[y0:y1, x0:x1]``, blurring only around ``box``.

    Pillow's filter is local (each pixel depends on its 5 x 5 neighbourhood and, near an image
    edge, on its distance to that edge), so blurring a crop that reaches ``_BLUR_MARGIN`` pixels
    beyond the box, or to the image edge, gives the full blur's pixels inside the box.
    """
    width, height = image.size
    x0, y0, x1, y1 = box
    region = (max(0, x0 - _BLUR_MARGIN), max(0, y0 - _BLUR_MARGIN),
              min(width, x1 + _BLUR_MARGIN), min(height, y1 + _BLUR_MARGIN))
    pixels = np.asarray(image.crop(region).filter(ImageFilter.BLUR))
    return pixels[y0 - region[1] : y1 - region[1], x0 - region[0] : x1 - region[0]]


def _first_foreground_line(image: Image.Image, threshold: np.ndarray, axis: int,
                           start: int, stop: int, across: tuple[int, int]) -> int | None:
    """First row (``axis=0``) or column (``axis=1``) from ``start`` towards ``stop`` (exclusive,
    either direction) whose blurred pixels within ``across`` exceed ``threshold`` somewhere.

    Bands of growing width are read unblurred in turn; from the first line that could exceed
    once blurred (:func:`_candidate_lines`), narrow bands are blurred until one has such a line.
    Lines before a candidate cannot exceed, so only a few lines are ever blurred.
    """
    step = 1 if stop >= start else -1
    band = _FIRST_BAND
    position = start
    while position != stop:
        end = position + step * min(band, abs(stop - position))
        candidates = _candidate_lines(image, threshold, axis, _sorted_range(position, end),
                                      across)
        if not candidates.size:
            position = end
            band = min(2 * band, _LARGEST_BAND)
            continue
        position = int(candidates[0] if step > 0 else candidates[-1])
        end = position + step * min(_FIRST_BAND, abs(stop - position))
        low, high = _sorted_range(position, end)
        box = (across[0], low, across[1], high) if axis == 0 else (low, across[0], high, across[1])
        lines = np.flatnonzero(_exceeding_lines(_blurred(image, box), threshold, axis))
        if lines.size:
            return low + int(lines[0] if step > 0 else lines[-1])
        position = end
        band = _FIRST_BAND
    return None


def _sorted_range(position: int, end: int) -> tuple[int, int]:
    """The lines from ``position`` towards ``end`` (exclusive) as a ``(low, high)`` range."""
    return (position, end) if end >= position else (end + 1, position + 1)


def _candidate_lines(image: Image.Image, threshold: np.ndarray, axis: int,
                     lines: tuple[int, int], across: tuple[int, int]) -> np.ndarray:
    """The rows (``axis=0``) or columns in ``lines`` whose blurred pixels within ``across`` can
    exceed ``threshold``: those with an unblurred pixel above it within 2 lines (and 2 pixels
    across).

    A blurred pixel is a rounded mean of pixels within 2 pixels of it (or a copy of itself at
    the image edge), so it cannot exceed the threshold when none of those does.
    """
    width, height = image.size
    along = height if axis == 0 else width
    side = width if axis == 0 else height
    low, high = max(0, lines[0] - 2), min(along, lines[1] + 2)
    first, last = max(0, across[0] - 2), min(side, across[1] + 2)
    region = (first, low, last, high) if axis == 0 else (low, first, high, last)
    raw = np.flatnonzero(_exceeding_lines(np.asarray(image.crop(region)), threshold, axis)) + low
    if not raw.size:
        return raw
    near = (raw[:, None] + np.arange(-2, 3)).ravel()
    return np.unique(near[(near >= lines[0]) & (near < lines[1])])


def _exceeding_lines(pixels: np.ndarray, threshold: np.ndarray, axis: int) -> np.ndarray:
    """Per row (``axis=0``) or column (``axis=1``): does some pixel exceed ``threshold`` in some
    channel? (A saturating subtraction and maxima: NumPy compares 3-channel pixels slowly.)"""
    height, width = pixels.shape[:2]
    excess = cv2.subtract(pixels, (*(float(v) for v in threshold), 0.0))
    flat = excess.reshape(height, width * 3)
    if axis == 0:
        return flat.max(axis=1) > 0
    return flat.max(axis=0).reshape(width, 3).max(axis=1) > 0


def _channel_max(pixels: np.ndarray) -> np.ndarray:
    """Per-channel maximum of an (h, w, 3) image: ``pixels.max(axis=(0, 1))``, but reduced over
    rows first (NumPy reduces a trailing axis of 3 many times slower)."""
    height, width = pixels.shape[:2]
    return np.ascontiguousarray(pixels).reshape(height, width * 3).max(axis=0).reshape(
        width, 3).max(axis=0)


def _foreground_box(image: Image.Image, left_strip: int, right_strip: int) -> Box | None:
    """Bounding box of the blurred pixels more than 10 above the border strips' maximum (some
    channel), if it is big enough; blurs the strips and the bands scanned inwards only."""
    width, height = image.size
    background = np.maximum(
        _channel_max(_blurred(image, (0, 0, left_strip, height))),
        _channel_max(_blurred(image, (width - right_strip, 0, width, height))),
    )
    threshold = background.astype(np.int32) + _FOREGROUND_MARGIN
    top = _first_foreground_line(image, threshold, 0, 0, height, (0, width))
    if top is None:
        return None
    bottom = _first_foreground_line(image, threshold, 0, height - 1, top - 1, (0, width))
    rows = (top, bottom + 1)
    left = _first_foreground_line(image, threshold, 1, 0, width, rows)
    right = _first_foreground_line(image, threshold, 1, width - 1, left - 1, rows)
    box = (left, top, right + 1, bottom + 1)
    min_side = _MIN_BOX_FRACTION * height
    if box[2] - box[0] < min_side or box[3] - box[1] < min_side:
        return None
    return box


def crop_fundus_paper(image: Image.Image, size: int = CROP_SIZE) -> CropResult:
    """The authors' crop of a full-resolution RGB photograph: their box, Pillow's Lanczos resize."""
    box, fallback = find_fundus_box_paper(image)
    crop = image.crop(box).resize((size, size), Image.Resampling.LANCZOS)
    return CropResult(np.asarray(crop), box, fallback)


def fundus_problem(crop: np.ndarray) -> str | None:
    """Why a crop does not look like a fundus photograph (nearly black or uniform), or None."""
    dark = cv2.inRange(crop, (0, 0, 0), (29, 29, 29))  # every channel below 30
    if cv2.countNonZero(dark) > 0.99 * dark.size:
        return "no fundus found (image is nearly black)"
    _, deviation = cv2.meanStdDev(cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY))
    if float(deviation[0, 0]) < 2.0:
        return "no fundus found (image is uniform)"
    return None


def _check_rgb(image: np.ndarray) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"expected an RGB uint8 array of shape (h, w, 3), got {image.dtype} {image.shape}"
        )
