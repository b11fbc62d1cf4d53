"""One photograph -> one WebDataset sample: decode, crop, check, saliency, encode."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ssit.prepare.crop import CROP_SIZE, Box, crop_fundus, fundus_problem
from ssit.prepare.decode import BadImageError, load_image
from ssit.prepare.saliency import saliency_map

__all__ = ["JPEG_QUALITY", "PNG_COMPRESSION", "Preprocessed", "encode_sample", "preprocess_image"]

JPEG_QUALITY = 95
PNG_COMPRESSION = 6


@dataclass(frozen=True)
class Preprocessed:
    """A fundus crop with its saliency map and where it came from in the original image."""

    crop: np.ndarray
    saliency: np.ndarray
    box: Box
    original_size: tuple[int, int]
    fallback: bool
    converted: str | None


def preprocess_image(path: str | Path, size: int = CROP_SIZE) -> Preprocessed:
    """Decode (at reduced scale when possible), crop to ``size`` and compute the saliency map.

    Raises :class:`~ssit.prepare.decode.BadImageError` for unusable files, including images
    in which no fundus can be seen.
    """
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


def encode_sample(
    item: Preprocessed, *, source: str, grade: int | None, dataset: str
) -> dict[str, bytes]:
    """The members of one sample, by extension: ``jpg``, ``sal.png``, ``json`` and ``cls``.

    Encoding is deterministic: the same input always gives the same bytes.
    """
    jpeg = io.BytesIO()
    Image.fromarray(item.crop).save(jpeg, "JPEG", quality=JPEG_QUALITY)
    ok, png = cv2.imencode(".png", item.saliency, [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION])
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
        "jpg": jpeg.getvalue(),
        "json": json.dumps(metadata, sort_keys=True, separators=(",", ":")).encode(),
        "sal.png": png.tobytes(),
    }
    if grade is not None:
        members["cls"] = str(grade).encode("ascii")
    return members
