"""Grading results as JSON, as markdown tables and as a confusion-matrix picture."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ssit.atomic_write import replace_json

GRADE_NAMES = ("0 none", "1 mild", "2 moderate", "3 severe", "4 PDR")
SUMMARY_COLUMNS = ("dataset", "protocol", "encoder", "kappa", "accuracy", "AUC (>=2)", "n test",
                   "selected")


def json_ready(value: Any) -> Any:
    """Plain JSON values: numpy scalars/arrays converted, NaN and infinities as null."""
    if isinstance(value, Mapping):
        return {str(key): json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    if isinstance(value, np.ndarray):
        return json_ready(value.tolist())
    if isinstance(value, np.generic):
        return json_ready(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(value: Any, path: str | Path) -> Path:
    """Write ``value`` as indented JSON, atomically."""
    return replace_json(path, json_ready(value), indent=2)


def format_number(value: Any, digits: int = 4) -> str:
    """A metric for a table: rounded to ``digits``, ``-`` when missing or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table with columns padded to equal width (readable as plain text too)."""
    cells = [[str(h) for h in headers]] + [[format_number(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(text.ljust(width) for text, width in zip(row, widths,
                                                                           strict=True)) + " |"

    rule = "| " + " | ".join("-" * width for width in widths) + " |"
    return "\n".join([line(cells[0]), rule, *(line(row) for row in cells[1:])])


def result_table(result: Mapping[str, Any]) -> str:
    """Validation and test metrics of one grading job (every k for kNN)."""
    headers = ("split", "kappa", "accuracy", "AUC (>=2)", "n", "recall per grade 0-4")
    rows = []
    for split in ("val", "test"):
        by_setting = result.get(split, {})
        for setting, metrics in by_setting.items():
            recall = " ".join(format_number(r, 2) for r in metrics["per_grade_recall"])
            rows.append((f"{split} {setting}", metrics["kappa"], metrics["accuracy"],
                         metrics["referable_auc"], metrics["num_samples"], recall))
    return markdown_table(headers, rows)


def summary_row(result: Mapping[str, Any]) -> tuple:
    """One summary-table row: the selected setting's test metrics."""
    test = result["test"][result["selected"]]
    return (result["dataset"], result["protocol"], result["encoder"], test["kappa"],
            test["accuracy"], test["referable_auc"], test["num_samples"], result["selected"])


def summary_table(results: Sequence[Mapping[str, Any]]) -> str:
    """Test metrics of several grading jobs, one row each."""
    return markdown_table(SUMMARY_COLUMNS, [summary_row(result) for result in results])


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType has only the fixed bitmap font
        return ImageFont.load_default()


def draw_confusion_matrix(
    matrix: Sequence[Sequence[int]], path: str | Path, title: str = ""
) -> Path:
    """Save a PNG of the confusion matrix: counts in cells shaded by row-normalised share."""
    counts = np.asarray(matrix, dtype=np.int64)
    size = counts.shape[0]
    if counts.ndim != 2 or counts.shape[1] != size:
        raise ValueError(f"confusion matrix must be square, got shape {counts.shape}")
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    cell, left, top = 72, 110, 70
    width, height = left + cell * size + 20, top + cell * size + 50
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font, small = _font(16), _font(12)
    draw.text((10, 10), title, fill="black", font=font)
    draw.text((left + cell * size / 2, top - 22), "predicted grade", fill="black", font=small,
              anchor="mm")
    draw.text((10, top + cell * size + 25), "rows: true grade", fill="black", font=small)
    names = GRADE_NAMES if size == len(GRADE_NAMES) else [str(i) for i in range(size)]
    for i in range(size):
        draw.text((left + cell * i + cell / 2, top - 6), str(i), fill="black", font=small,
                  anchor="ms")
        draw.text((left - 8, top + cell * i + cell / 2), names[i], fill="black", font=small,
                  anchor="rm")
        for j in range(size):
            shade = int(255 - 200 * shares[i, j])
            box = (left + cell * j, top + cell * i, left + cell * (j + 1), top + cell * (i + 1))
            draw.rectangle(box, fill=(shade, shade, 255), outline="gray")
            ink = "white" if shares[i, j] > 0.5 else "black"
            draw.text(((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), str(counts[i, j]),
                      fill=ink, font=font, anchor="mm")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
