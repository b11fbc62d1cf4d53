"""Contact sheet of shard samples: each crop with its saliency map overlaid, grade and key."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from ssit.prepare.shard_format import PrepareError, iter_samples, list_shards

__all__ = ["contact_sheet", "overlay_saliency", "write_preview"]

_OVERLAY_ALPHA = 0.6
_LABEL_HEIGHT = 22


def overlay_saliency(crop: np.ndarray, saliency: np.ndarray, alpha: float = _OVERLAY_ALPHA
                     ) -> np.ndarray:
    """RGB crop with the saliency map blended on top as a heat map, stronger where salient."""
    heat = cv2.cvtColor(cv2.applyColorMap(saliency, cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB)
    weight = alpha * (saliency.astype(np.float32) / 255)[..., None]
    blended = crop.astype(np.float32) * (1 - weight) + heat.astype(np.float32) * weight
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)


def _tile(sample: dict[str, bytes], size: int) -> np.ndarray:
    key = sample["__key__"]
    if "jpg" not in sample or "sal.png" not in sample:
        raise PrepareError(f"sample {key!r} lacks a jpg or sal.png member")
    bgr = cv2.imdecode(np.frombuffer(sample["jpg"], np.uint8), cv2.IMREAD_COLOR)
    saliency = cv2.imdecode(np.frombuffer(sample["sal.png"], np.uint8), cv2.IMREAD_GRAYSCALE)
    if bgr is None or saliency is None:
        raise PrepareError(f"sample {key!r} has an undecodable jpg or sal.png")
    crop = cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), (size, size),
                      interpolation=cv2.INTER_AREA)
    saliency = cv2.resize(saliency, (size, size), interpolation=cv2.INTER_AREA)
    tile = overlay_saliency(crop, saliency)
    grade = sample["cls"].decode() if "cls" in sample else None
    if grade is None and "json" in sample:
        grade = json.loads(sample["json"]).get("grade")
    caption = f"grade {grade if grade is not None else '?'}  {key}"
    label = np.zeros((_LABEL_HEIGHT, size, 3), np.uint8)
    cv2.putText(label, caption[: size // 8], (4, _LABEL_HEIGHT - 7), cv2.FONT_HERSHEY_SIMPLEX,
                0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return np.concatenate([tile, label], axis=0)


def _tiles(shards: str | Path | Sequence[str | Path], n: int, tile: int) -> list[np.ndarray]:
    if n < 1:
        raise PrepareError(f"number of samples must be at least 1, got {n}")
    samples = list(itertools.islice(iter_samples(list_shards(shards)), n))
    if not samples:
        raise PrepareError(f"no samples in {shards}")
    return [_tile(sample, tile) for sample in samples]


def _grid(tiles: list[np.ndarray], gap: int = 4) -> np.ndarray:
    columns = math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / columns)
    height, width = tiles[0].shape[:2]
    sheet = np.full((rows * (height + gap) + gap, columns * (width + gap) + gap, 3), 32, np.uint8)
    for number, image in enumerate(tiles):
        row, column = divmod(number, columns)
        y, x = gap + row * (height + gap), gap + column * (width + gap)
        sheet[y : y + height, x : x + width] = image
    return sheet


def contact_sheet(shards: str | Path | Sequence[str | Path], n: int = 16, tile: int = 256
                  ) -> np.ndarray:
    """RGB grid of the first ``n`` samples of the shards (fewer if the shards hold fewer)."""
    return _grid(_tiles(shards, n, tile))


def write_preview(shards: str | Path | Sequence[str | Path], out: str | Path, n: int = 16,
                  tile: int = 256) -> int:
    """Write the contact sheet of the first ``n`` samples as a PNG; returns how many it shows."""
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise PrepareError(f"preview file must end in .png: {out}")
    tiles = _tiles(shards, n, tile)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), cv2.cvtColor(_grid(tiles), cv2.COLOR_RGB2BGR)):
        raise PrepareError(f"cannot write {out}")
    return len(tiles)
