"""ROC curves of several models on one test set, drawn as a PNG (Pillow, no plotting library)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike
from PIL import Image, ImageDraw, ImageFont

from ssit.evaluate.binary_metrics import roc_curve
from ssit.evaluate.metrics import roc_auc

COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189))


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType has only the fixed bitmap font
        return ImageFont.load_default()


def draw_roc_curves(
    labels: ArrayLike, scores: Mapping[str, ArrayLike], path: str | Path, title: str = "",
    side: int = 360,
) -> Path:
    """Save the ROC curve of each named score array (legend with its AUC) to ``path``."""
    if not scores or len(scores) > len(COLOURS):
        raise ValueError(f"give 1 to {len(COLOURS)} score arrays, got {len(scores)}")
    left, top, bottom = 60, 40, 50
    image = Image.new("RGB", (left + side + 20, top + side + bottom), "white")
    draw = ImageDraw.Draw(image)
    font, small = _font(15), _font(12)

    def point(fpr: float, tpr: float) -> tuple[float, float]:
        return left + fpr * side, top + (1 - tpr) * side

    draw.text((10, 10), title, fill="black", font=font)
    draw.rectangle((*point(0, 1), *point(1, 0)), outline="black")
    draw.line((*point(0, 0), *point(1, 1)), fill=(190, 190, 190))
    for tick in (0.0, 0.5, 1.0):
        draw.text(point(tick, 0), f"{tick:.1f}", fill="black", font=small, anchor="mt")
        draw.text(point(0, tick), f"{tick:.1f} ", fill="black", font=small, anchor="rm")
    draw.text((left + side / 2, top + side + 30), "1 - specificity", fill="black", font=small,
              anchor="mm")
    draw.text((8, top - 14), "sensitivity", fill="black", font=small)
    for index, (name, values) in enumerate(scores.items()):
        fpr, tpr, _ = roc_curve(labels, values)
        colour = COLOURS[index]
        if not (np.isnan(fpr).any() or np.isnan(tpr).any()):
            draw.line([point(x, y) for x, y in zip(fpr, tpr, strict=True)], fill=colour, width=2)
        auc = roc_auc(np.asarray(labels).astype(bool), values)
        legend = point(0.45, 0.08 + 0.08 * (len(scores) - 1 - index))
        draw.line((legend[0], legend[1], legend[0] + 18, legend[1]), fill=colour, width=3)
        draw.text((legend[0] + 24, legend[1]), f"{name}  AUC {auc:.3f}", fill="black",
                  font=small, anchor="lm")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
