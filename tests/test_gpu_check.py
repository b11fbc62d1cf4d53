"""The GPU check: without a GPU, its measures, and the whole check in CPU smoke mode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks.gpu_check import NO_GPU_LINE, CheckRun
from benchmarks.gpu_job_check import task_processes
from benchmarks.gpu_model_check import bf16_peak
from benchmarks.gpu_pipeline_check import compare_statistics
from benchmarks.gpu_report import format_section
from benchmarks.view_geometry import blob_samples, geometry_agreement

REPO_ROOT = Path(__file__).resolve().parents[1]


def _check(*args: str, env: dict[str, str] | None = None,
           timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_without_a_gpu_it_says_so_in_one_line_and_measures_nothing(tmp_path: Path) -> None:
    out, markdown = tmp_path / "gpu-check.json", tmp_path / "BENCHMARKS.md"
    done = _check("--out", str(out), "--benchmarks", str(markdown),
                  env={"CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [NO_GPU_LINE]
    assert not out.exists() and not markdown.exists()


@pytest.mark.parametrize(("name", "peak"), [
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H200", 989e12),
    ("NVIDIA A100-SXM4-40GB", 312e12), ("Tesla T4", None),
])
def test_bf16_peak_by_device_name(name: str, peak: float | None) -> None:
    assert bf16_peak(name) == peak


def _blob_views() -> tuple[np.ndarray, ...]:
    samples = blob_samples(8)
    maps = np.stack([s[2] for s in samples])[:, None].astype(np.float32) / 255
    images = np.repeat(np.stack([s[1][..., 0] for s in samples])[:, None], 3, axis=1) / 255
    return images, maps


def test_geometry_agreement_accepts_aligned_views_and_refuses_misplaced_maps() -> None:
    images, maps = _blob_views()
    upside_down = images[:, :, ::-1], maps[:, :, ::-1]
    aligned = geometry_agreement(images, upside_down[0], maps, upside_down[1])
    assert aligned.passed and aligned.own_mean > 0.99 and aligned.other_view_mean < 0.6
    misplaced = geometry_agreement(images, images, maps[:, :, ::-1], maps[:, :, :, ::-1])
    assert not misplaced.passed and misplaced.own_mean < 0.6


def test_statistics_comparison_flags_a_shifted_channel() -> None:
    view = {"channel_mean": [0.1, -0.2, 0.0], "channel_std": [1.0, 1.0, 1.0], "min": -2.0,
            "max": 2.5, "map_mean": 0.3, "map_min": 0.0, "map_max": 1.0}
    same = compare_statistics({"view1": view}, {"view1": dict(view)})
    assert same["passed"] and same["worst_channel_mean_gap"] == 0.0
    shifted = compare_statistics({"view1": view},
                                 {"view1": {**view, "channel_mean": [0.1, 0.3, 0.0]}})
    assert not shifted["passed"] and "channel means differ by 0.500" in shifted["problems"][0]
    narrower = compare_statistics({"view1": view}, {"view1": {**view, "max": 1.0}})
    assert not narrower["passed"] and "images range" in narrower["problems"][0]


def test_a_failing_part_is_recorded_and_the_next_still_runs(tmp_path: Path) -> None:
    run = CheckRun(tmp_path / "check.json", "gpu", total_s=60)

    def broken(part: dict, deadline: float) -> None:
        part["measured"] = 1
        raise RuntimeError("no NVJPEG\nsecond line")

    run.part("pipeline", 10, broken)
    assert run.part("model", 10, lambda part, deadline: part.update(rows=[]) or 7) == 7
    saved = json.loads((tmp_path / "check.json").read_text())
    assert saved["passed"] is False
    assert saved["parts"]["pipeline"]["error"].startswith("RuntimeError: no NVJPEG")
    assert saved["parts"]["pipeline"]["measured"] == 1
    assert saved["parts"]["model"]["passed"] is True
    section = format_section(saved)
    assert "**DALI pipeline on the GPU**: FAILED: RuntimeError: no NVJPEG." in section
    assert "FAILED in" in section


def test_parts_after_the_budget_are_skipped(tmp_path: Path) -> None:
    run = CheckRun(tmp_path / "check.json", "gpu", total_s=0)
    assert run.part("grade", 10, lambda part, deadline: 1) is None
    assert run.record["parts"]["grade"]["skipped"]
    assert "skipped" in format_section(run.record)


def test_task_processes_finds_submitits_task_below_the_launcher() -> None:
    child = ("import subprocess, sys; subprocess.run([sys.executable, '-c', "
             "'import time; time.sleep(30)', 'submitit.core._submit'])")
    launcher = subprocess.Popen([sys.executable, "-c", child])
    try:
        for _ in range(100):
            tasks = task_processes(launcher.pid)
            if tasks:
                break
            time.sleep(0.1)
        assert len(tasks) == 1 and tasks[0] != launcher.pid
        assert task_processes(tasks[0]) == []  # the task itself has no task below it
    finally:
        for pid in task_processes(launcher.pid):
            os.kill(pid, 9)
        launcher.kill()
        launcher.wait()


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_cpu_smoke_runs_every_part(tmp_path: Path, demo_shards: Path) -> None:
    out, markdown = tmp_path / "gpu-check.json", tmp_path / "BENCHMARKS.md"
    markdown.write_text("# Benchmarks\n\nkept text\n")
    done = _check("--cpu-smoke", "--out", str(out), "--benchmarks", str(markdown),
                  "--shards", str(demo_shards), "--work-dir", str(tmp_path / "work"),
                  timeout=380)
    record = json.loads(out.read_text())
    failed = {name: part.get("error") or part for name, part in record["parts"].items()
              if not part.get("passed")}
    assert done.returncode == 0 and not failed, (failed, done.stdout[-2000:])
    parts = record["parts"]
    assert list(parts) == ["shards", "pipeline", "model", "pretrain", "grade"]
    assert parts["pipeline"]["geometry"]["passed"] and parts["pipeline"]["held_batch"]["passed"]
    assert parts["model"]["rows"][0]["losses_finite"] and parts["model"]["flops_per_image"] > 0
    pretrain = parts["pretrain"]
    assert pretrain["steps"] == pretrain["total_steps"] == 12
    assert 3 <= pretrain["stopped_at_step"] < 12 and pretrain["resumed"]
    assert pretrain["pipeline_resume"]["passed"] and pretrain["losses_finite"]
    assert parts["grade"]["results"][0]["protocol"] == "finetune"
    text = markdown.read_text()
    assert text.startswith("# Benchmarks\n\nkept text\n")
    assert "<!-- bench:gpu-check -->\n### GPU check" in text and "CPU smoke run" in text
