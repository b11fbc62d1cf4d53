"""The methods table: its settings, its markdown, and one real (smoke) run of every method."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml

from benchmarks import methods_table
from benchmarks.methods_table import METHODS, RANDOM, SCALES, format_section
from ssit.config import load_config
from ssit.evaluate.config import GradeConfig


def test_every_setting_writes_its_own_section() -> None:
    keys = {scale.section_key for scale in SCALES.values()}
    assert len(keys) == len(SCALES)
    assert SCALES["cpu-long"].section_key == "methods_table_cpu_long"
    for scale in SCALES.values():  # the same backbone for all, and the hybrid's ViT branch too
        vit = [o for o in scale.backbone if o.startswith(("backbone.arch", "backbone.img_size",
                                                          "backbone.kwargs"))]
        assert len(vit) == 3 and set(vit) <= set(scale.hybrid)


@pytest.mark.parametrize("name", ["cpu", "cpu-long", "gpu", "smoke"])
def test_the_random_floor_has_the_pre_trained_backbone_s_architecture(name: str) -> None:
    """The floor is graded from ``grade_demo_cpu`` with the setting's overrides: it must build
    the very ViT every method pre-trains (same arch, size and block count)."""
    scale = SCALES[name]
    backbone = dict(o.split("=", 1) for o in scale.backbone)
    grading = load_config(GradeConfig, "grade_demo_cpu",
                          [*scale.grade_overrides, *scale.random_encoder])
    assert grading.encoder.arch == backbone["backbone.arch"]
    assert grading.encoder.img_size == int(backbone["backbone.img_size"])
    assert grading.encoder.model_kwargs == yaml.safe_load(backbone["backbone.kwargs"])


def test_the_setting_comes_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("SSIT_METHODS_SCALE", "cpu-long")
    assert methods_table.section_key() == "methods_table_cpu_long"
    monkeypatch.setenv("SSIT_METHODS_SCALE", "tpu")
    with pytest.raises(SystemExit, match="'tpu' is not one of cpu, cpu-long, gpu, smoke"):
        methods_table.default_scale()


def test_section_gives_mean_and_sample_spread_per_protocol() -> None:
    kappas = {RANDOM: {"knn": [0.1, 0.3, 0.2], "linear": [0.0, 0.2, 0.1]},
              "SSiT": {"knn": [0.5, 0.5], "linear": [0.4, 0.7]},
              "GraVIS": {"knn": [], "linear": []}}
    minutes = {RANDOM: [(0.0, 0.2), (0.0, 0.4), (0.0, 0.3)], "SSiT": [(3.0, 0.3), (1.0, 0.1)],
               "GraVIS": []}
    scale = dataclasses.replace(SCALES["cpu"], method_changes={
        "SSiT": ("optim.lr=1.0e-2", "method.augmentation={blur_p: 0.0}")})
    text = format_section(scale, kappas, minutes, {RANDOM}, sets_min=1.5, total_min=12.25)
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[1:] == [
        "| random encoder | 0.200 ± 0.100 | 0.100 ± 0.100 | 0.3 | - |",
        "| SSiT | 0.500 ± 0.000 (2 of 3 seeds) | 0.550 ± 0.212 (2 of 3 seeds) | 2.0 + 0.2 | "
        "`optim.lr=1.0e-2` `method.augmentation={blur_p: 0.0}` |",
        "| GraVIS | failed | failed | - | - |",
    ]
    assert "Whole table: 12.2 min, of which 1.5 min making the two sets" in text
    assert "features computed once) with `train.epochs=300 train.lr=0.03`. Test" in text
    assert "The floors are graded with `encoder.refresh_batchnorm=true`" in text
    assert "--scale cpu " in text


@pytest.mark.slow
def test_smoke_setting_pretrains_and_grades_every_method(tmp_path) -> None:
    # a setting's change of one method's recipe reaches that method's run, and only it
    scale = dataclasses.replace(SCALES["smoke"], method_changes={
        "SimCLR": ("method.temperature=0.3",)})
    text = methods_table.run(scale, work=tmp_path)
    rows = {line.split(" | ")[0][2:]: line.split(" | ")[1:3] for line in text.splitlines()
            if line.startswith("| ") and "---" not in line and not line.startswith("| encoder |")}
    assert list(rows) == [RANDOM, "random MsSSL backbone", *METHODS]
    for knn, linear in rows.values():
        assert -1 <= float(knn) <= 1 and -1 <= float(linear) <= 1
    for method in ("ssit", "mocov3", "simclr", "gravis", "msssl"):
        run = tmp_path / f"{method}-seed0"
        assert (run / "pretrain" / "config.yaml").is_file()
        assert (run / "grade" / "summary.json").is_file()
    assert "temperature: 0.3" in (tmp_path / "simclr-seed0/pretrain/config.yaml").read_text()
    assert "temperature: 0.3" not in (tmp_path / "gravis-seed0/pretrain/config.yaml").read_text()
    msssl = (tmp_path / "msssl-seed0" / "pretrain" / "config.yaml").read_text()
    assert "mobilenetv3_small_100" in msssl and "depth: 4" in msssl
    floor = json.loads((tmp_path / "random-msssl-seed0" / "grade" / "summary.json").read_text())
    assert {job["backbone"] for job in floor} == {"msssl_hybrid"}
    # the hybrid floor is graded with its BatchNorm statistics refreshed, the trained one as is
    assert all(job["batchnorm_refreshed"] > 0 for job in floor)
    trained = json.loads((tmp_path / "msssl-seed0" / "grade" / "summary.json").read_text())
    assert {job["batchnorm_refreshed"] for job in trained} == {0}
    vit_floor = json.loads((tmp_path / "random-seed0" / "grade" / "summary.json").read_text())
    assert {job["batchnorm_refreshed"] for job in vit_floor} == {0}
    assert (tmp_path / "random-msssl-seed0" / "pretrain" / "initial.pt").is_file()
