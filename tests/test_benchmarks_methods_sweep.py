"""The sweep behind the methods table: its written-down points, its record and its markdown."""

from __future__ import annotations

import pytest

from benchmarks import methods_sweep
from benchmarks.methods_sweep import (
    DEFAULT_PROBE,
    FLOORS,
    PROBES,
    SECTION_KEY,
    SWEEP,
    _last_epoch_loss,
    _renamed,
    format_section,
    records_from_section,
)
from benchmarks.methods_table import METHODS, REPO, SCALES
from benchmarks.run import read_section


def test_every_point_names_a_method_of_the_table_and_a_whole_number_of_epochs() -> None:
    assert DEFAULT_PROBE in PROBES and "random" in FLOORS
    assert not set(FLOORS) & set(SWEEP)
    for name, (method, epochs, overrides) in SWEEP.items():
        assert method in METHODS, name
        assert epochs >= 1 and all("=" in override for override in overrides), name


def test_the_chosen_setting_was_swept_under_the_chosen_probe() -> None:
    """Every method's `cpu-long` recipe (its backbone and its changes) is, as it is, a point of
    the sweep, and so is the floor of that backbone."""
    scale, swept_on = SCALES["cpu-long"], SCALES["cpu"]
    assert set(PROBES[DEFAULT_PROBE]) <= set(scale.grade_overrides)
    assert scale.method_changes
    backbone = set(scale.backbone) - set(swept_on.backbone)
    assert backbone == set(scale.hybrid) - set(swept_on.hybrid)
    for method in METHODS:
        changes = scale.method_changes.get(method, ())
        epochs = [int(c.split("=")[1]) for c in changes if c.startswith("optim.epochs=")]
        rest = {c for c in changes if not c.startswith("optim.epochs=")} | backbone
        assert any(m == method and e == (epochs or [scale.epochs])[0] and set(o) == rest
                   for m, e, o in SWEEP.values()), method
    assert set(scale.random_encoder) in [set(overrides) for overrides in FLOORS.values()]


def test_renamed_gives_a_key_s_overrides_under_another_key() -> None:
    overrides = ("backbone.img_size=64", "optim.lr=1e-3", "backbone.img_size_x=3")
    assert _renamed(overrides, "backbone.img_size", "encoder.img_size") == (
        "encoder.img_size=64",)
    assert _renamed(overrides, "encoder.img_size", "backbone.img_size") == ()


def test_last_epoch_loss_averages_the_last_epochs_log_lines(tmp_path) -> None:
    (tmp_path / "log.txt").write_text(
        "step 2 epoch 0.50 loss 4.0000 loss_cl 4.0000 lr 1e-05\n"
        "step 4 epoch 1.00 loss 3.0000 loss_cl 3.0000 lr 1e-05\n"
        "saved checkpoint ckpt.pt\n"
        "step 6 epoch 1.50 loss 2.0000 loss_cl 2.0000 lr 1e-05\n"
        "step 8 epoch 2.00 loss 1.0000 loss_cl 1.0000 lr 1e-05\n")
    assert _last_epoch_loss(tmp_path, 2) == pytest.approx(1.5)
    assert _last_epoch_loss(tmp_path / "missing", 2) is None
    (tmp_path / "log.txt").write_text("no training happened\n")
    assert _last_epoch_loss(tmp_path, 2) is None


def _record(point: str, probe: str, epochs: int, overrides: list[str]) -> dict:
    return {"point": point, "probe": probe, "method": "SimCLR", "epochs": epochs,
            "overrides": overrides, "last_epoch_loss": None if epochs == 0 else 3.4337,
            "kappa": {"linear": {"val": 0.25, "test": 0.125}, "knn": {"val": 0.5, "test": 0.0}},
            "pretrain_min": 1.0, "grade_min": 0.25}


def test_section_groups_points_by_probe_and_names_each_change() -> None:
    text = format_section([
        _record("random", "probe-15", 0, []),
        _record("simclr-paper-10", "probe-15", 10, []),
        _record("simclr-lr10-10", "probe-300-lr0.03", 10, ["optim.lr=1.0e-2"]),
    ])
    assert text.count("| point | method |") == 2
    assert "Probe `probe-15`: `grade_demo_cpu as it is`." in text
    assert "Probe `probe-300-lr0.03`: `train.epochs=300 train.lr=0.03`." in text
    assert "| random | SimCLR | 0 | - | 0.250 | 0.125 | 0.500 | - | 1.2 |" in text
    assert "| simclr-paper-10 | SimCLR | 10 | paper recipe | 0.250 | 0.125 | 0.500 | 3.434 |" \
        in text
    assert "| simclr-lr10-10 | SimCLR | 10 | `optim.lr=1.0e-2` |" in text


def test_an_unknown_point_or_probe_is_refused_in_one_line(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        methods_sweep.main(["--point", "simclr-everything"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'simclr-everything'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        methods_sweep.main(["--probe", "probe-7"])
    assert "invalid choice: 'probe-7'" in capsys.readouterr().err


def test_a_written_section_reads_back_into_the_same_section() -> None:
    views = "method.augmentation={crop_scale: [0.5, 1.0], jitter_p: 0.0}"
    text = format_section([
        _record("random", "probe-15", 0, []),
        _record("simclr-paper-10", "probe-15", 10, []),
        _record("simclr-lr10-10", "probe-300-lr0.03", 10, ["optim.lr=1.0e-2", views]),
    ])
    read = records_from_section(text)
    assert [(r["point"], r["probe"]) for r in read] == [
        ("random", "probe-15"), ("simclr-paper-10", "probe-15"),
        ("simclr-lr10-10", "probe-300-lr0.03")]
    assert read[2]["overrides"] == ["optim.lr=1.0e-2", views] and read[1]["overrides"] == []
    assert read[0]["last_epoch_loss"] is None
    assert read[1]["last_epoch_loss"] == pytest.approx(3.434)
    assert read[2]["kappa"]["linear"] == {"val": 0.25, "test": 0.125}
    assert format_section(read) == text
    assert records_from_section("no table here\n| a | b |") == []


def test_the_record_in_benchmarks_md_reads_back_whole() -> None:
    """What a fresh clone resumes from (``--from BENCHMARKS.md``) is the record as written."""
    written = read_section((REPO / "BENCHMARKS.md").read_text(), SECTION_KEY)
    assert written is not None
    records = records_from_section(written)
    assert len(records) == written.count("\n| ") - 2 * written.count("Probe `")
    assert format_section(records) == written


def test_from_a_document_without_the_sweep_is_refused_before_anything_runs(tmp_path,
                                                                            capsys) -> None:
    document = tmp_path / "BENCHMARKS.md"
    document.write_text("# Benchmarks\n")
    with pytest.raises(SystemExit):
        methods_sweep.main(["--from", str(document), "--point"])
    assert "has no methods_sweep section" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        methods_sweep.main(["--from", str(tmp_path / "missing.md"), "--point"])
    assert "missing.md: no such file" in capsys.readouterr().err
