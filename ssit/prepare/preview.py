"""Contact sheet of shard samples: each crop beside its saliency map, with grade and key.

The map is drawn as a heat map (colour scale ``inferno``: 0 black, 1 pale yellow) next to the
crop rather than blended into it, so that dark maps stay visible. Each pair is captioned with
the sample's grade, its key and the share of the map at or above 0.5 (the default saliency
threshold of SSiT's key selection). The drawing helpers are also used by ``ssit attention``.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ssit.prepare.shard_format import (
    PrepareError,
    iter_samples,
    list_shards,
    read_grade_member,
)

__all__ = [
    "GAP",
    "SampleImages",
    "check_png_name",
    "contact_sheet",
    "grid",
    "heat_map",
    "read_samples",
    "salient_share",
    "side_by_side",
    "text_strip",
    "write_png",
    "write_preview",
]

GAP = 4
"""Pixels between the pictures of a sheet."""
_PAIR_GAP = 12  # wider than the gap inside a pair, so that pairs read as units
_BACKGROUND = 32
_TEXT_HEIGHT = 22
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_FONT_SCALE = 0.45
_SALIENT = 128  # 0.5 on the stored 0-255 scale


@dataclass(frozen=True)
class SampleImages:
    """A shard sample decoded: RGB crop, saliency map (uint8, 255 = 1) and grade (None if none)."""

    key: str
    crop: np.ndarray
    saliency: np.ndarray
    grade: int | str | None


def _decode_sample(sample: dict[str, Any]) -> SampleImages:
    key = sample["__key__"]
    if "jpg" not in sample:
        raise PrepareError(f"sample {key!r} has no crop (jpg member)")
    if "sal.png" not in sample:
        raise PrepareError(f"sample {key!r} has no saliency map (sal.png member): these shards "
                           "were not written by `ssit shards`")
    bgr = cv2.imdecode(np.frombuffer(sample["jpg"], np.uint8), cv2.IMREAD_COLOR)
    saliency = cv2.imdecode(np.frombuffer(sample["sal.png"], np.uint8), cv2.IMREAD_GRAYSCALE)
    if bgr is None or saliency is None:
        raise PrepareError(f"sample {key!r} has an undecodable jpg or sal.png")
    grade: int | str | None = read_grade_member(sample["cls"], key) if "cls" in sample else None
    if grade is None and "json" in sample:
        grade = _grade_in_metadata(sample["json"], key)
    return SampleImages(key, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), saliency, grade)


def _grade_in_metadata(data: bytes, key: str) -> int | str | None:
    """The ``grade`` of a sample's ``json`` member; PrepareError if the member is not a JSON
    object."""
    try:
        metadata = json.loads(data)
    except (UnicodeDecodeError, ValueError):
        raise PrepareError(f"sample {key!r} has a json member that is not valid JSON") from None
    if not isinstance(metadata, dict):
        raise PrepareError(f"sample {key!r} has a json member that is not a JSON object")
    return metadata.get("grade")


def read_samples(shards: str | Path | Sequence[str | Path], n: int) -> list[SampleImages]:
    """The first ``n`` samples of the shards, decoded (fewer if the shards hold fewer)."""
    if n < 1:
        raise PrepareError(f"number of samples must be at least 1, got {n}")
    samples = list(itertools.islice(iter_samples(list_shards(shards)), n))
    if not samples:
        raise PrepareError(f"no samples in {shards}")
    return [_decode_sample(sample) for sample in samples]


def heat_map(values: np.ndarray) -> np.ndarray:
    """RGB picture of a uint8 map in the ``inferno`` colour scale (0 black, 255 pale yellow)."""
    if values.dtype != np.uint8 or values.ndim != 2:
        raise ValueError(f"heat_map needs a 2-D uint8 map, got {values.dtype} {values.shape}")
    return cv2.cvtColor(cv2.applyColorMap(values, cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB)


def salient_share(saliency: np.ndarray) -> float:
    """Share of a uint8 saliency map at or above 0.5 (128)."""
    return float(np.count_nonzero(saliency >= _SALIENT)) / saliency.size


def text_strip(text: str, width: int, height: int = _TEXT_HEIGHT) -> np.ndarray:
    """A black RGB strip with ``text`` in white, cut at the right with '..' where too long."""
    strip = np.zeros((height, width, 3), np.uint8)
    while text and cv2.getTextSize(text, _FONT, _FONT_SCALE, 1)[0][0] > width - 8:
        text = text[:-3] + ".." if len(text) > 3 else ""
    cv2.putText(strip, text, (4, height - 7), _FONT, _FONT_SCALE, (255, 255, 255), 1, cv2.LINE_AA)
    return strip


def side_by_side(pictures: Sequence[np.ndarray], gap: int = GAP) -> np.ndarray:
    """Same-height RGB pictures in a row, ``gap`` background pixels apart."""
    height = pictures[0].shape[0]
    spacer = np.full((height, gap, 3), _BACKGROUND, np.uint8)
    row: list[np.ndarray] = []
    for picture in pictures:
        row.extend([spacer, picture] if row else [picture])
    return np.concatenate(row, axis=1)


def grid(tiles: Sequence[np.ndarray], columns: int, gap: int = GAP) -> np.ndarray:
    """Same-size RGB tiles in rows of ``columns``, on a dark background with ``gap`` margins."""
    rows = math.ceil(len(tiles) / columns)
    height, width = tiles[0].shape[:2]
    sheet = np.full((rows * (height + gap) + gap, columns * (width + gap) + gap, 3), _BACKGROUND,
                    np.uint8)
    for number, tile in enumerate(tiles):
        row, column = divmod(number, columns)
        y, x = gap + row * (height + gap), gap + column * (width + gap)
        sheet[y : y + height, x : x + width] = tile
    return sheet


def _square(image: np.ndarray, size: int) -> np.ndarray:
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


def _pair_tile(sample: SampleImages, size: int) -> np.ndarray:
    pair = side_by_side([_square(sample.crop, size), heat_map(_square(sample.saliency, size))])
    grade = "?" if sample.grade is None else sample.grade
    caption = (f"grade {grade}  {sample.key}  "
               f"map>=0.5: {100 * salient_share(sample.saliency):.0f}%")
    return np.concatenate([pair, text_strip(caption, pair.shape[1])], axis=0)


def _legend(width: int) -> np.ndarray:
    text = "each pair: crop | saliency map   scale: 0"
    strip = text_strip(text, width)
    start = 8 + cv2.getTextSize(text, _FONT, _FONT_SCALE, 1)[0][0]
    bar_width = min(160, max(0, width - start - 24))
    if bar_width > 0:
        ramp = np.linspace(0, 255, bar_width).astype(np.uint8)[None, :].repeat(10, axis=0)
        strip[6:16, start : start + bar_width] = heat_map(ramp)
        cv2.putText(strip, "1", (start + bar_width + 4, _TEXT_HEIGHT - 7), _FONT, _FONT_SCALE,
                    (255, 255, 255), 1, cv2.LINE_AA)
    return strip


def contact_sheet(shards: str | Path | Sequence[str | Path], n: int = 16, tile: int = 256
                  ) -> np.ndarray:
    """RGB sheet of the first ``n`` samples: a legend, then captioned crop | map pairs."""
    return _sheet(read_samples(shards, n), tile)


def _sheet(samples: Sequence[SampleImages], tile: int) -> np.ndarray:
    if tile < 16:
        raise PrepareError(f"tile size must be at least 16 pixels, got {tile}")
    tiles = [_pair_tile(sample, tile) for sample in samples]
    columns = math.ceil(math.sqrt(len(tiles) / 2))
    sheet = grid(tiles, columns, gap=_PAIR_GAP)
    return np.concatenate([_legend(sheet.shape[1]), sheet], axis=0)


def write_png(image: np.ndarray, out: str | Path) -> Path:
    """Write an RGB picture as a PNG (creating its folder)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise PrepareError(f"cannot write {out}")
    return out


def check_png_name(out: str | Path) -> None:
    """Refuse a picture file name that does not end in ``.png``."""
    if Path(out).suffix.lower() != ".png":
        raise PrepareError(f"picture file must end in .png: {out}")


def write_preview(shards: str | Path | Sequence[str | Path], out: str | Path, n: int = 16,
                  tile: int = 256) -> int:
    """Write the contact sheet of the first ``n`` samples as a PNG; returns how many it shows."""
    check_png_name(out)
    samples = read_samples(shards, n)
    write_png(_sheet(samples, tile), out)
    return len(samples)
