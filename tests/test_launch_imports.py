"""Launchers and the ``ssit`` command answer without loading torch, timm or DALI.

``--help``, a bad option, a bad configuration value and a full ``--dry-run`` (the shard checks
included) run in a fresh interpreter, which then reports the heavy modules it has loaded.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "timm", "nvidia.dali", "torchvision")

# Runs a launcher (a file) or the ssit command (a module) as __main__, then writes its exit
# status and the heavy modules it loaded to the file named by the first argument.
_RUNNER = f"""
import json, runpy, sys
report, target, *argv = sys.argv[1:]
sys.argv = [target, *argv]
code = 0
try:
    if target.endswith(".py"):
        runpy.run_path(target, run_name="__main__")
    else:
        runpy.run_module(target, run_name="__main__", alter_sys=True)
except SystemExit as exit:
    code = exit.code
heavy = [name for name in {HEAVY!r} if name in sys.modules]
with open(report, "w") as handle:
    json.dump({{"code": code, "heavy": heavy}}, handle)
"""


def run_light(tmp_path: Path, target: str, *argv: str) -> tuple[int, list[str], str]:
    """Run ``target`` with ``argv``; return its exit status, heavy modules loaded, stderr."""
    report = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-c", _RUNNER, str(report), target, *argv],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert report.is_file(), done.stderr
    outcome = json.loads(report.read_text())
    return outcome["code"], outcome["heavy"], done.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ("launch/pretrain.py", "--help"),
        ("launch/pretrain.py", "--nodes", "two"),
        ("launch/grade.py", "--help"),
        ("launch/grade.py", "--branch", "both"),
        ("ssit", "--help"),
        ("ssit", "shards", "--help"),
        ("ssit", "export", "--help"),
        ("ssit", "attention", "--help"),
    ],
)
def test_help_and_bad_options_load_no_heavy_module(tmp_path, argv):
    code, heavy, _ = run_light(tmp_path, *argv)
    assert code in (0, 2)
    assert heavy == []


def test_pretrain_dry_run_loads_no_heavy_module(tmp_path, demo_shards):
    code, heavy, stderr = run_light(
        tmp_path, "launch/pretrain.py", "--dry-run", "--cpu", "--config", "demo_tiny_cpu",
        "--output", str(tmp_path / "run"), f"data.shards={demo_shards}")
    assert (code, heavy) == (0, []), stderr


def test_grade_dry_run_loads_no_heavy_module(tmp_path, demo_shards):
    code, heavy, stderr = run_light(
        tmp_path, "launch/grade.py", "--dry-run", "--cpu", "--checkpoint", "random",
        "--dataset", "shards", "--data", str(demo_shards), "--protocol", "knn", "finetune",
        "--config", "grade_tiny_cpu", "--output", str(tmp_path / "grade"), "knn.ks=[3]")
    assert (code, heavy) == (0, []), stderr


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("optim.lr=1e-300", "config key 'optim.lr' must be in [1e-09, 10], got 1e-300"),
        ("method.augmentation={rotation_degrees: abc}",
         "rotation_degrees must be in [0, 180], got 'abc'"),
        ("backbone.kwargs={in_chans: 1}",
         "config key 'backbone.kwargs.in_chans' must be 3 (the images are RGB), got 1"),
    ],
)
def test_bad_pretrain_values_are_one_line_without_heavy_modules(
    tmp_path, demo_shards, override, expected
):
    code, heavy, stderr = run_light(
        tmp_path, "launch/pretrain.py", "--dry-run", "--cpu", "--config", "simclr_demo_cpu",
        "--output", str(tmp_path / "run"), f"data.shards={demo_shards}", override)
    assert (code, heavy) == (2, [])
    assert stderr.count("\n") == 1 and stderr.startswith("error: ") and expected in stderr
    assert "Traceback" not in stderr


def test_bad_grading_value_is_one_line_without_heavy_modules(tmp_path, demo_shards):
    code, heavy, stderr = run_light(
        tmp_path, "launch/grade.py", "--dry-run", "--cpu", "--checkpoint", "random",
        "--dataset", "shards", "--data", str(demo_shards), "--protocol", "semisup",
        "--config", "grade_tiny_cpu", "--output", str(tmp_path / "grade"),
        "semisup.student_arch=densenet_imaginary")
    assert (code, heavy) == (2, [])
    assert stderr == ("error: config key 'semisup.student_arch' must be a timm architecture "
                      "name (see timm.list_models()), got 'densenet_imaginary'\n")
