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
        background = np.maximum(
            blurred[:, :strip].max(axis=(0, 1)), blurred[:, -strip:].max(axis=(0, 1))
        )
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
        blurred = np.asarray(image.filter(ImageFilter.BLUR))
        box = _foreground_box(blurred, width // 32, -(-width // 32))
        if box is not None:
            return box, False
    if height > width:
        top = (height - width) // 2
        return (0, top, width, top + width), True
    left = (width - height) // 2
    return (left, 0, width - left, height), True


def _foreground_box(blurred: np.ndarray, left_strip: int, right_strip: int) -> Box | None:
    """Bounding box of the pixels more than 10 above the border strips' maximum, if big enough."""
    height, width = blurred.shape[:2]
    background = np.maximum(
        blurred[:, :left_strip].max(axis=(0, 1)), blurred[:, width - right_strip :].max(axis=(0, 1))
    )
    # Saturating subtraction: excess > margin exactly when pixel > background + margin.
    excess = cv2.subtract(blurred, (*(float(v) for v in background), 0.0))
    flat = excess.reshape(height, width * 3)
    rows = np.flatnonzero(flat.max(axis=1) > _FOREGROUND_MARGIN)
    if not rows.size:
        return None
    column_max = flat[rows[0] : rows[-1] + 1].max(axis=0).reshape(width, 3).max(axis=1)
    cols = np.flatnonzero(column_max > _FOREGROUND_MARGIN)
    box = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
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
