from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssit.cli import SUBCOMMANDS, main, run_launcher

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ssit", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def one_error_line(captured: str) -> str:
    lines = captured.strip().splitlines()
    assert len(lines) == 1, captured
    assert lines[0].startswith("error: ")
    return lines[0]


def test_help_lists_the_subcommands():
    result = run_cli("--help")
    assert result.returncode == 0
    for subcommand in SUBCOMMANDS:
        assert subcommand.name in result.stdout
    assert {"synth", "shards", "preview", "export"} <= {s.name for s in SUBCOMMANDS}


def test_missing_input_folder_is_one_line_and_exit_2(tmp_path):
    out = tmp_path / "out"
    result = run_cli("shards", "--input", str(tmp_path / "nope"), "--out", str(out))
    assert result.returncode == 2
    assert one_error_line(result.stderr) == f"error: input folder not found: {tmp_path / 'nope'}"
    assert "Traceback" not in result.stderr
    assert not out.exists()


@pytest.fixture
def one_image(tmp_path) -> Path:
    raw = tmp_path / "raw"
    raw.mkdir()
    Image.fromarray(np.full((300, 420, 3), 90, np.uint8)).save(raw / "10_left.jpeg")
    return raw


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ("missing.csv", "labels file not found"),
        ("header.csv", "must start with the header 'image,level'"),
        ("binary.csv", "cannot read labels file"),
        (".", "is a directory"),
        ("nomatch.csv", "none of the 1 images"),
    ],
)
def test_bad_labels_stop_before_any_work(one_image, tmp_path, capsys, labels, message):
    (tmp_path / "header.csv").write_text("image;level\n10_left;0\n")
    (tmp_path / "binary.csv").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    (tmp_path / "nomatch.csv").write_text("image,level\n99_left,0\n")
    out = tmp_path / "out"
    status = main(["shards", "--input", str(one_image), "--out", str(out),
                   "--labels", str(tmp_path / labels)])
    assert status == 2
    assert message in one_error_line(capsys.readouterr().err)
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dataset", "a/b"], "dataset name must use"),
        (["--out", "FILE"], "output path exists and is not a folder"),
    ],
)
def test_bad_shard_arguments(one_image, tmp_path, capsys, args, message):
    (tmp_path / "FILE").write_text("x")
    argv = ["shards", "--input", str(one_image), "--out", str(tmp_path / "out"), *args]
    argv = [str(tmp_path / "FILE") if a == "FILE" else a for a in argv]
    assert main(argv) == 2
    assert message in one_error_line(capsys.readouterr().err)


def test_folder_without_images(tmp_path, capsys):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "labels.csv").write_text("image,level\n")
    assert main(["shards", "--input", str(tmp_path / "raw"), "--out", str(tmp_path / "o")]) == 2
    assert "no images found" in one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("option", [["--shard-size", "0"], ["--jobs", "-1"], ["--n", "x"]])
def test_argparse_rejects_bad_numbers(tmp_path, option):
    command = "synth" if option[0] == "--n" else "shards"
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--input", str(tmp_path), "--out", str(tmp_path), *option]
             if command == "shards" else [command, "--out", str(tmp_path), *option])
    assert exit_info.value.code == 2


def test_synth_then_preview(tmp_path, capsys, demo_shards):
    assert main(["synth", "--out", str(tmp_path / "raw"), "--n", "2", "--seed", "3",
                 "--height", "256", "300", "--jobs", "1"]) == 0
    assert len(list((tmp_path / "raw").glob("*.jpeg"))) == 2
    assert (tmp_path / "raw" / "labels.csv").is_file()

    sheet = tmp_path / "sheet.png"
    assert main(["preview", str(demo_shards), "--out", str(sheet), "--n", "5"]) == 0
    assert "5 samples" in capsys.readouterr().out
    image = np.asarray(Image.open(sheet))
    assert image.shape[0] > 400 and image.shape[1] > 700  # 3 columns x 2 rows of 256 tiles


def test_synth_rejects_bad_height(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path), "--n", "2", "--height", "300", "200"]) == 2
    assert "--height" in one_error_line(capsys.readouterr().err)


def test_preview_errors(tmp_path, capsys):
    assert main(["preview", str(tmp_path), "--out", str(tmp_path / "p.png")]) == 2
    assert "no .tar shards" in one_error_line(capsys.readouterr().err)
    assert main(["preview", str(tmp_path), "--out", str(tmp_path / "p.jpg")]) == 2
    assert "must end in .png" in one_error_line(capsys.readouterr().err)


def test_export_of_a_missing_checkpoint_is_one_line(tmp_path, capsys):
    out = tmp_path / "b.safetensors"
    status = main(["export", str(tmp_path / "missing.pt"), "--out", str(out)])
    assert status == 2
    assert "missing.pt" in one_error_line(capsys.readouterr().err)
    assert not out.exists()


def _launch(args: argparse.Namespace) -> int:
    if args.fail == "user":
        raise ValueError("bad --fail value\nsecond line")
    if args.fail == "bug":
        raise RuntimeError("a bug")
    return 7


def _add_fail(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fail", default="no")


def test_run_launcher_reports_user_errors_with_exit_status_2(capsys: pytest.CaptureFixture) -> None:
    assert run_launcher("d", _add_fail, _launch, (ValueError,), []) == 7
    assert run_launcher("d", _add_fail, _launch, (ValueError,), ["--fail", "user"]) == 2
    assert capsys.readouterr().err == "error: bad --fail value\nsecond line\n"
    with pytest.raises(RuntimeError, match="a bug"):
        run_launcher("d", _add_fail, _launch, (ValueError,), ["--fail", "bug"])
