"""Decode fundus photographs into 8-bit RGB arrays, cheaply and with clear failure reasons.

JPEGs are decoded at a reduced scale (libjpeg's 1/2, 1/4 or 1/8 DCT scaling through Pillow's
``draft``) whenever the image is much larger than what the 512x512 crop needs. Other formats
are decoded by OpenCV, which keeps 16-bit samples and alpha channels visible so that they can
be converted deliberately and reported.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ssit.prepare.image_size import oversize_reason

__all__ = ["MIN_IMAGE_SIDE", "BadImageError", "DecodedImage", "load_full_image", "load_image"]

MIN_IMAGE_SIDE = 64
"""Images whose shorter side is below this many pixels are rejected as too small to crop."""

# The crop box is at least 0.8 of the image height (or the centred square of the shorter side),
# so the decoded image must keep its shorter side at least target / 0.8 pixels long.
_CROP_MIN_FRACTION = 0.8

_JPEG_MAGIC = b"\xff\xd8\xff"


class BadImageError(Exception):
    """The file cannot be used as a fundus photograph; ``str(error)`` is the reason."""


@dataclass(frozen=True)
class DecodedImage:
    """An image decoded to RGB uint8, possibly at a reduced scale.

    ``scale`` is the number of original pixels per decoded pixel (1, 2, 4 or 8 for JPEGs).
    ``converted`` names the conversion applied (e.g. ``"CMYK -> RGB"``), or is None.
    """

    rgb: np.ndarray
    original_size: tuple[int, int]
    scale: float
    converted: str | None


def load_image(
    path: str | Path, target: int | None = 512, max_pixels: int | None = None
) -> DecodedImage:
    """Decode ``path`` to RGB uint8, at reduced scale when a ``target``-pixel crop is all we need.

    ``target=None`` decodes at full resolution. With ``max_pixels``, images whose header
    declares more pixels, or whose size cannot be read before decoding, are refused first (see
    :func:`~ssit.prepare.image_size.oversize_reason`). Raises :class:`BadImageError` with a
    short reason for empty, truncated, non-image, too-large, too-small or unsupported files.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise BadImageError(f"cannot read file: {error.strerror or error}") from error
    if not data:
        raise BadImageError("empty file")
    if max_pixels is not None:
        too_large = oversize_reason(path, max_pixels, data)
        if too_large is not None:
            raise BadImageError(too_large)
    if data.startswith(_JPEG_MAGIC):
        return _decode_jpeg(data, target)
    return _decode_other(data)


def _draft_size(width: int, height: int, target: int) -> tuple[int, int]:
    """Smallest decoded size that still leaves enough pixels for a ``target``-pixel crop."""
    needed = math.ceil(target / _CROP_MIN_FRACTION)
    factor = needed / min(width, height)
    return max(1, math.ceil(width * factor)), max(1, math.ceil(height * factor))


def _decode_jpeg(data: bytes, target: int | None) -> DecodedImage:
    image, original_size, scale, converted = _open_jpeg(data, target)
    rgb = np.asarray(image)
    return DecodedImage(np.ascontiguousarray(rgb), original_size, scale, converted)


def _open_jpeg(data: bytes, target: int | None
               ) -> tuple[Image.Image, tuple[int, int], float, str | None]:
    """The decoded RGB Pillow image, original size, scale and conversion of a JPEG."""
    try:
        image = Image.open(io.BytesIO(data))
        original_size = image.size
        _check_size(original_size)
        scale = 1.0
        if target is not None:
            drafted = image.draft(None, _draft_size(*original_size, target))
            if drafted is not None:
                scale = original_size[0] / drafted[1][2]
        image.load()
    except BadImageError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise BadImageError(f"truncated or corrupt JPEG ({error})") from error
    converted = None
    if image.mode == "L":
        converted = "grayscale -> RGB"
    elif image.mode == "CMYK":
        converted = "CMYK -> RGB"
    elif image.mode != "RGB":
        converted = f"{image.mode} -> RGB"
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image, original_size, scale, converted


def load_full_image(path: str | Path) -> tuple[Image.Image, tuple[int, int], str | None]:
    """Full-resolution RGB Pillow image of ``path``, its size and the conversion applied.

    The same pixels as ``load_image(path, target=None)`` without the copies into and out of
    a NumPy array for JPEGs. Raises :class:`BadImageError` like :func:`load_image`.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise BadImageError(f"cannot read file: {error.strerror or error}") from error
    if data.startswith(_JPEG_MAGIC):
        image, original_size, _, converted = _open_jpeg(data, None)
        return image, original_size, converted
    decoded = load_image(path, target=None)
    return Image.fromarray(decoded.rgb), decoded.original_size, decoded.converted


def _decode_other(data: bytes) -> DecodedImage:
    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None:
        return _decode_with_pillow(data)
    original_size = (array.shape[1], array.shape[0])
    _check_size(original_size)
    notes = []
    if array.dtype == np.uint16:
        array = ((array.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
        notes.append("16-bit -> 8-bit")
    elif array.dtype != np.uint8:
        raise BadImageError(f"unsupported sample type {array.dtype}")
    if array.ndim == 2 or array.shape[2] == 1:
        rgb = cv2.cvtColor(array.reshape(array.shape[:2]), cv2.COLOR_GRAY2RGB)
        notes.append("grayscale -> RGB")
    elif array.shape[2] == 3:
        rgb = cv2.cvtColor(array, cv2.COLOR_BGR2RGB)
    elif array.shape[2] == 4:
        rgb = _drop_alpha(cv2.cvtColor(array, cv2.COLOR_BGRA2RGBA))
        notes.append("RGBA -> RGB (alpha composited on black)")
    else:
        raise BadImageError(f"unsupported number of channels: {array.shape[2]}")
    return DecodedImage(np.ascontiguousarray(rgb), original_size, 1.0, ", ".join(notes) or None)


def _decode_with_pillow(data: bytes) -> DecodedImage:
    """Formats OpenCV does not read (e.g. GIF); anything Pillow cannot open is not an image."""
    try:
        image = Image.open(io.BytesIO(data))
        _check_size(image.size)
        image.load()
    except BadImageError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise BadImageError("not a readable image file") from error
    original_size = image.size
    converted = None if image.mode == "RGB" else f"{image.mode} -> RGB"
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgb = _drop_alpha(np.asarray(image.convert("RGBA")))
    else:
        rgb = np.asarray(image.convert("RGB"))
    return DecodedImage(np.ascontiguousarray(rgb), original_size, 1.0, converted)


def _drop_alpha(rgba: np.ndarray) -> np.ndarray:
    """Composite on black: transparent pixels become background, like a fundus border."""
    alpha = rgba[..., 3:4].astype(np.uint16)
    return ((rgba[..., :3].astype(np.uint16) * alpha + 127) // 255).astype(np.uint8)


def _check_size(size: tuple[int, int]) -> None:
    if min(size) < MIN_IMAGE_SIDE:
        raise BadImageError(
            f"image too small to crop ({size[0]}x{size[1]}, need at least "
            f"{MIN_IMAGE_SIDE} px on each side)"
        )
