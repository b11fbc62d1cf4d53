from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from ssit.evaluate.metrics import grading_metrics
from ssit.evaluate.report import (
    draw_confusion_matrix,
    json_ready,
    markdown_table,
    result_table,
    summary_table,
    write_json,
)


def result(dataset: str) -> dict:
    metrics = grading_metrics([0, 1, 2, 3, 4, 4], [0, 1, 2, 3, 4, 3], [0, 1, 2, 3, 4, 3.2])
    return {"dataset": dataset, "protocol": "knn", "encoder": "random", "selected": "k=5",
            "val": {"k=5": metrics}, "test": {"k=5": metrics}}


def test_json_ready_turns_nan_into_null(tmp_path):
    value = {"a": float("nan"), "b": np.float32(0.5), "c": np.arange(2), "d": (1, math.inf)}
    assert json_ready(value) == {"a": None, "b": 0.5, "c": [0, 1], "d": [1, None]}
    path = write_json(value, tmp_path / "out.json")
    assert json.loads(path.read_text())["a"] is None


def test_tables():
    table = markdown_table(["a", "bb"], [[1.23456, None], ["x", float("nan")]])
    assert table.splitlines() == ["| a      | bb  |", "| ------ | --- |",
                                  "| 1.2346 | n/a |", "| x      | n/a |"]
    assert "test k=5" in result_table(result("ddr"))
    summary = summary_table([result("ddr"), result("aptos2019")]).splitlines()
    assert len(summary) == 4 and summary[2].startswith("| ddr ")


def test_confusion_matrix_png(tmp_path):
    path = draw_confusion_matrix(np.diag([5, 4, 3, 2, 1]), tmp_path / "cm.png", "title")
    image = Image.open(path).convert("RGB")
    assert image.size[0] > 400
    pixels = np.asarray(image)
    assert (pixels[..., 0] < 100).any()  # the full diagonal cells are dark blue
    with pytest.raises(ValueError, match="square"):
        draw_confusion_matrix(np.zeros((2, 3)), tmp_path / "bad.png")
