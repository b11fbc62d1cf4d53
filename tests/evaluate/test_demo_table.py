"""launch/demo_table.py: the table that ends make demo, from each encoder's grading run."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo_table():
    spec = importlib.util.spec_from_file_location("demo_table", REPO / "launch" / "demo_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def job(protocol: str, kappa: float, selected: str) -> dict:
    metrics = {"kappa": kappa, "accuracy": 0.7, "referable_auc": 0.8, "num_samples": 150}
    return {"dataset": "shards", "protocol": protocol, "selected": selected,
            "test": {selected: metrics, "other": {**metrics, "kappa": -1.0}}}


def write_runs(root: Path) -> None:
    for encoder, kappas in (("pretrained", (0.5, 0.4)), ("random", (0.2, 0.35))):
        (root / encoder).mkdir(parents=True)
        (root / encoder / "summary.json").write_text(json.dumps(
            [job("knn", kappas[0], "k=10"), job("linear", kappas[1], "epoch 3")]))


def test_table_joins_the_encoders_and_reports_the_gain(demo_table, tmp_path, capsys):
    write_runs(tmp_path)
    assert demo_table.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| pretrained | knn      | 0.5000" in out
    assert "| random     | linear   | 0.3500" in out
    assert "pretrained - random, knn: test kappa +0.300" in out
    assert "pretrained - random, linear: test kappa +0.050" in out
    joined = json.loads((tmp_path / "summary.json").read_text())
    assert [(row["encoder"], row["protocol"], row["test kappa"]) for row in joined] == [
        ("pretrained", "knn", 0.5), ("pretrained", "linear", 0.4), ("random", "knn", 0.2),
        ("random", "linear", 0.35)]
    assert (tmp_path / "summary.md").read_text().startswith("| encoder ")


def test_a_folder_without_grading_runs_is_one_error_line(demo_table, tmp_path, capsys):
    assert demo_table.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: no grading run under {tmp_path} (no */summary.json)\n"
