"""One photograph -> one WebDataset sample: decode, crop, check, saliency, encode.

Two recipes:

* default (``fast=False``), the SSiT authors' two scripts in one pass: full-resolution decode,
  their crop box, Pillow's Lanczos resize to 512, a quality-100 JPEG without chroma
  subsampling (stored as the sample's ``jpg``), and their saliency steps on that JPEG decoded
  by OpenCV. Only portrait photographs differ (centred square instead of a distorted resize).
* ``fast=True``: JPEGs decoded at reduced scale, OpenCV box and area resize, saliency with the
  background blurred at quarter scale and without the JPEG round trip, quality-95 JPEG; several
  times cheaper, close but not identical maps.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ssit.prepare.crop import CROP_SIZE, Box, crop_fundus, crop_fundus_paper, fundus_problem
from ssit.prepare.decode import BadImageError, load_full_image, load_image
from ssit.prepare.saliency import saliency_map, saliency_map_paper

__all__ = [
    "JPEG_QUALITY",
    "PAPER_JPEG_QUALITY",
    "PNG_PARAMS",
    "Preprocessed",
    "encode_sample",
    "preprocess_image",
    "warm_up",
]

JPEG_QUALITY = 95
"""Quality of the stored crop in the ``fast`` recipe."""
PAPER_JPEG_QUALITY = 100
"""Quality of the stored crop in the default recipe (4:4:4, as the authors' ``crop.py``)."""
PNG_PARAMS = (cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE)
"""zlib's run-length strategy for the 8-bit map: lossless like any PNG, and on fundus maps both
smaller and about 3x faster to write than the default strategy at level 6."""


@dataclass(frozen=True)
class Preprocessed:
    """A fundus crop with its saliency map and where it came from in the original image."""

    crop: np.ndarray
    saliency: np.ndarray
    box: Box
    original_size: tuple[int, int]
    fallback: bool
    converted: str | None
    jpeg: bytes | None = None
    """The encoded crop when the recipe fixes it (the default recipe's quality-100 JPEG)."""


def preprocess_image(path: str | Path, size: int = CROP_SIZE, *, fast: bool = False
                     ) -> Preprocessed:
    """Decode, crop to ``size`` and compute the saliency map (the authors' recipe by default).

    Raises :class:`~ssit.prepare.decode.BadImageError` for unusable files, including images
    in which no fundus can be seen.
    """
    if not fast:
        return _preprocess_paper(path, size)
    decoded = load_image(path, target=size)
    result = crop_fundus(decoded.rgb, size)
    problem = fundus_problem(result.image)
    if problem is not None:
        raise BadImageError(problem)
    width, height = decoded.original_size
    scale = decoded.scale
    x0, y0, x1, y1 = result.box
    box = (
        min(width, round(x0 * scale)),
        min(height, round(y0 * scale)),
        min(width, round(x1 * scale)),
        min(height, round(y1 * scale)),
    )
    return Preprocessed(
        crop=result.image,
        saliency=saliency_map(result.image),
        box=box,
        original_size=decoded.original_size,
        fallback=result.fallback,
        converted=decoded.converted,
    )


def warm_up(fast: bool = False, size: int = CROP_SIZE) -> None:
    """Load the recipe's compiled saliency kernels (numba's cache) into this process, by running
    them on a blank crop, so that worker processes forked afterwards start with them."""
    blank = np.zeros((size, size, 3), np.uint8)
    if fast:
        saliency_map(blank)
    else:
        saliency_map_paper(blank)


def _preprocess_paper(path: str | Path, size: int) -> Preprocessed:
    image, original_size, converted = load_full_image(path)
    result = crop_fundus_paper(image, size)
    problem = fundus_problem(result.image)
    if problem is not None:
        raise BadImageError(problem)
    jpeg = io.BytesIO()
    Image.fromarray(result.image).save(jpeg, "JPEG", quality=PAPER_JPEG_QUALITY, subsampling=0)
    bgr = cv2.imdecode(np.frombuffer(jpeg.getbuffer(), np.uint8), cv2.IMREAD_COLOR)
    return Preprocessed(
        crop=cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB),
        saliency=saliency_map_paper(bgr),
        box=result.box,
        original_size=original_size,
        fallback=result.fallback,
        converted=converted,
        jpeg=jpeg.getvalue(),
    )


def encode_sample(
    item: Preprocessed, *, source: str, grade: int | None, dataset: str
) -> dict[str, bytes]:
    """The members of one sample, by extension: ``jpg``, ``sal.png``, ``json`` and ``cls``.

    Encoding is deterministic: the same input always gives the same bytes.
    """
    if item.jpeg is None:
        encoded = io.BytesIO()
        Image.fromarray(item.crop).save(encoded, "JPEG", quality=JPEG_QUALITY)
        jpeg = encoded.getvalue()
    else:
        jpeg = item.jpeg
    ok, png = cv2.imencode(".png", item.saliency, list(PNG_PARAMS))
    if not ok:
        raise RuntimeError(f"PNG encoding of the saliency map of {source} failed")
    metadata = {
        "source": source,
        "original_size": list(item.original_size),
        "crop_box": list(item.box),
        "crop_fallback": item.fallback,
        "converted": item.converted,
        "grade": grade,
        "dataset": dataset,
    }
    members = {
        "jpg": jpeg,
        "json": json.dumps(metadata, sort_keys=True, separators=(",", ":")).encode(),
        "sal.png": png.tobytes(),
    }
    if grade is not None:
        members["cls"] = str(grade).encode("ascii")
    return members
