"""Refuse images too large to decode safely, from their header alone.

A small compressed file can declare an enormous image (a 1.5 MB 16000 x 16000 16-bit PNG
decodes to 1.5 GB and needs several times that while being converted), so the pixel count is
read from the header (Pillow opens files lazily) before anything is decoded.
"""

from __future__ import annotations

import warnings

from PIL import Image

__all__ = ["DEFAULT_MAX_PIXELS", "oversize_reason"]

DEFAULT_MAX_PIXELS = 100_000_000
"""Fundus cameras give 5-25 megapixels; 100 leaves ample room and bounds a worker's memory."""


def oversize_reason(path: str, max_pixels: int) -> str | None:
    """Why ``path`` is too large to decode (more than ``max_pixels`` pixels), or None.

    Files whose header Pillow cannot read are let through: the decoder gives their reason.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
    except Image.DecompressionBombError:
        limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        return f"image too large to decode (over {limit} pixels, Pillow's own limit)"
    except Exception:  # not readable as an image here: the decoder will say why
        return None
    if width * height <= max_pixels:
        return None
    return (
        f"image too large to decode ({width}x{height} = {width * height / 1e6:.0f} megapixels, "
        f"limit {max_pixels / 1e6:g}; see --max-pixels)"
    )
