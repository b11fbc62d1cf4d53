"""Every entry point that reads a user's weights file refuses a hostile one without running it.

The files come from :mod:`tests.backbones.hostile`: each payload would create a marker file.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from ssit.cli import main
from tests.backbones.hostile import (
    LAYOUTS,
    PAYLOAD_GLOBALS,
    hostile_file,
    legacy_with_object_pickle,
)

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


def cyclic_model(path: Path) -> Path:
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Sequential(torch.nn.ReLU()))
    model[1].add_module("back", model)
    torch.save(model, path)
    return path


def deep_model(path: Path) -> Path:
    import sys

    import torch

    model = inner = torch.nn.Sequential()
    for _ in range(3000):
        inner.add_module("0", torch.nn.Sequential())
        inner = inner[0]
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(100_000)
    try:
        torch.save(model, path)
    finally:
        sys.setrecursionlimit(limit)
    return path


def deep_lists(path: Path) -> Path:
    depth = 50_000
    path.write_bytes(legacy_with_object_pickle(b"\x80\x02" + b"}" + b"U\x01k" + b"]" * depth
                                               + b"a" * (depth - 1) + b"s."))
    return path


DEEP_FILES = {"cyclic-model": (cyclic_model, "cyclic"),
              "deep-model": (deep_model, "nested more than"),
              "deep-lists": (deep_lists, "nested more than")}


@pytest.fixture(scope="module", params=list(DEEP_FILES))
def tangled(request, tmp_path_factory) -> tuple[Path, str]:
    """A checkpoint whose contents are cyclic or nested thousands deep, and the words that
    refuse it."""
    write, words = DEEP_FILES[request.param]
    return write(tmp_path_factory.mktemp("tangled") / f"{request.param}.pt"), words


def test_tangled_checkpoints_are_one_line_for_every_reader(tangled, demo_shards: Path,
                                                          tmp_path: Path, capsys) -> None:
    path, words = tangled
    runs = {
        "export": lambda: main(["export", str(path), "--out", str(tmp_path / "x.safetensors"),
                                "--arch", "vit_tiny_patch16_224"]),
        "attention": lambda: main(["attention", str(path), "--shards", str(demo_shards),
                                   "--out", str(tmp_path / "a.png")]),
        "grade": lambda: load_launcher().main([
            "--checkpoint", str(path), "--dataset", "shards", "--data", str(demo_shards),
            "--protocol", "knn", "--dry-run", "--config", "grade_tiny_cpu"]),
    }
    for name, run in runs.items():
        assert run() == 2, name
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, (name, err[-300:])
        assert words in err and path.name in err, (name, err)
