"""Every entry point that reads a user's weights file refuses a hostile one without running it.

The files come from :mod:`tests.backbones.hostile`: each payload would create a marker file.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from ssit.cli import main
from tests.backbones.hostile import LAYOUTS, PAYLOAD_GLOBALS, hostile_file

REPO = Path(__file__).resolve().parents[2]
# every layout with os.system, and every payload where torch's legacy loader used to run it
CASES = [(layout, "os.system") for layout in LAYOUTS] + [
    ("legacy-sys_info", name) for name in PAYLOAD_GLOBALS if name != "os.system"]


@pytest.fixture(params=CASES, ids=[f"{layout}-{name}" for layout, name in CASES])
def hostile(request, tmp_path: Path) -> tuple[Path, Path, str]:
    """A hostile weights file, the marker it would create, and the global it names."""
    layout, name = request.param
    path, marker = hostile_file(tmp_path, layout, name)
    return path, marker, PAYLOAD_GLOBALS[name]


def assert_one_line_refusal(err: str, path: Path, global_name: str) -> None:
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert path.name in err and global_name in err, err


def test_ssit_export_refuses(hostile, tmp_path: Path, capsys) -> None:
    path, marker, global_name = hostile
    out = tmp_path / "exported.safetensors"
    assert main(["export", str(path), "--out", str(out), "--arch", "vit_tiny_patch16_224"]) == 2
    assert_one_line_refusal(capsys.readouterr().err, path, global_name)
    assert not marker.exists() and not list(tmp_path.glob("*exported*"))


def test_ssit_attention_refuses(hostile, demo_shards: Path, tmp_path: Path, capsys) -> None:
    path, marker, global_name = hostile
    out = tmp_path / "attention.png"
    assert main(["attention", str(path), "--shards", str(demo_shards), "--out", str(out)]) == 2
    assert_one_line_refusal(capsys.readouterr().err, path, global_name)
    assert not marker.exists() and not out.exists()


def load_launcher():
    spec = importlib.util.spec_from_file_location("grade_launcher", REPO / "launch" / "grade.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_grade_launcher_dry_run_refuses(hostile, demo_shards: Path, capsys) -> None:
    path, marker, global_name = hostile
    status = load_launcher().main([
        "--checkpoint", str(path), "--dataset", "shards", "--data", str(demo_shards),
        "--protocol", "knn", "--dry-run", "--config", "grade_tiny_cpu"])
    captured = capsys.readouterr()
    assert status == 2 and captured.out == ""
    assert_one_line_refusal(captured.err, path, global_name)
    assert not marker.exists()


def test_grading_jobs_encoder_refuses(hostile) -> None:
    from ssit.evaluate.architecture import EncoderError
    from ssit.evaluate.config import EncoderConfig
    from ssit.evaluate.encoder import create_encoder
    from ssit.evaluate.test_sets import read_encoder_source

    path, marker, global_name = hostile
    for read in (lambda: read_encoder_source(str(path)),
                 lambda: create_encoder(EncoderConfig(checkpoint=str(path)))):
        with pytest.raises(EncoderError) as error:
            read()
        assert global_name in str(error.value) and "\n" not in str(error.value)
    assert not marker.exists()


def test_timm_pseudo_checkpoint_and_semisup_student_run_nothing(hostile) -> None:
    from ssit.backbones import CheckpointError, read_checkpoint
    from ssit.evaluate.config import SemisupConfig
    from ssit.evaluate.finetune import TrainingError
    from ssit.evaluate.semisup import create_student

    path, marker, _ = hostile
    with pytest.raises(CheckpointError) as error:
        read_checkpoint(f"timm:test_vit={path}")
    assert "\n" not in str(error.value)
    with pytest.raises(TrainingError):
        create_student(SemisupConfig(student_arch="test_vit", student_weights=str(path)))
    assert not marker.exists()
