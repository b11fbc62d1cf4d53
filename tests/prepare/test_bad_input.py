"""Every kind of bad input the offline stage meets, in one folder, through the ``ssit`` CLI."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from ssit.cli import main
from ssit.prepare.shard_format import iter_samples, list_shards, read_manifest

GOOD = 3
CONVERTED = {
    "deep16_png": "16-bit -> 8-bit",
    "deep16_tif": "16-bit -> 8-bit",
    "gray": "grayscale -> RGB",
    "cmyk": "CMYK -> RGB",
    "rgba": "RGBA -> RGB (alpha composited on black)",
}
SKIPPED = {
    "empty.jpeg": "empty file",
    "truncated.jpeg": "truncated or corrupt JPEG",
    "notes.jpeg": "not a readable image file",
    "tiny.jpeg": "image too small to crop (50x40",
    "black.jpeg": "no fundus found (image is nearly black)",
    "uniform.png": "no fundus found (image is uniform)",
    "unlabelled.jpeg": "no label row in labels.csv",
    "badgrade.jpeg": "grade '7' is not an integer 0-4",
}


@pytest.fixture(scope="module")
def messy(demo_raw, tmp_path_factory) -> tuple[Path, list[str]]:
    """A folder mixing good photographs with every bad case, and a labels CSV for it."""
    raw = tmp_path_factory.mktemp("messy")
    with (demo_raw / "labels.csv").open(newline="") as handle:
        demo_rows = list(csv.DictReader(handle))[:GOOD]
    good = [row["image"] for row in demo_rows]
    for name in good:
        shutil.copy(demo_raw / f"{name}.jpeg", raw / f"{name}.jpeg")
    photo = np.asarray(Image.open(demo_raw / f"{good[0]}.jpeg").convert("RGB"))
    bgr16 = cv2.cvtColor(photo, cv2.COLOR_RGB2BGR).astype(np.uint16) * 257
    assert cv2.imwrite(str(raw / "deep16_png.png"), bgr16)
    assert cv2.imwrite(str(raw / "deep16_tif.tif"), bgr16)
    Image.fromarray(photo).convert("L").save(raw / "gray.jpeg", quality=90)
    Image.fromarray(photo).convert("CMYK").save(raw / "cmyk.jpeg", quality=90)
    Image.fromarray(photo).convert("RGBA").save(raw / "rgba.png")

    (raw / "empty.jpeg").write_bytes(b"")
    whole = (raw / f"{good[1]}.jpeg").read_bytes()
    (raw / "truncated.jpeg").write_bytes(whole[: len(whole) * 6 // 10])
    (raw / "notes.jpeg").write_text("image 10_left was re-taken, see 10_left_2\n")
    Image.new("RGB", (50, 40), (180, 80, 30)).save(raw / "tiny.jpeg")
    Image.fromarray(np.random.default_rng(0).integers(0, 12, (600, 900, 3), np.uint8)).save(
        raw / "black.jpeg")
    Image.new("RGB", (900, 600), (128, 128, 128)).save(raw / "uniform.png")
    shutil.copy(raw / f"{good[2]}.jpeg", raw / "unlabelled.jpeg")
    shutil.copy(raw / f"{good[2]}.jpeg", raw / "badgrade.jpeg")
    (raw / "nested").mkdir()
    shutil.copy(raw / f"{good[2]}.jpeg", raw / "nested" / "x.y.jpeg")  # key x_y
    shutil.copy(raw / f"{good[1]}.jpeg", raw / "with space.jpeg")  # key with_space
    shutil.copy(raw / f"{good[0]}.jpeg", raw / "nested" / f"{good[0]}.png")  # same id again
    (raw / "README.txt").write_text("not an image, ignored\n")

    rows = [f"{row['image']},{row['level']}" for row in demo_rows]
    rows += [f"{name},1" for name in CONVERTED]
    rows += [f"{Path(name).stem},0" for name in SKIPPED if name not in ("unlabelled.jpeg",
                                                                     "badgrade.jpeg")]
    rows += ["badgrade,7", "x.y,2", "with space,1", "ghost_left,3"]
    (raw / "labels.csv").write_text("image,level\n" + "\n".join(rows) + "\n")
    return raw, good


@pytest.fixture(scope="module")
def messy_run(messy, tmp_path_factory) -> tuple[Path, str]:
    """Shards of the messy folder written by ``ssit shards``, and what the command printed."""
    raw, _ = messy
    out = tmp_path_factory.mktemp("messy_out") / "shards"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = main(["shards", "--input", str(raw), "--out", str(out), "--labels",
                       str(raw / "labels.csv"), "--dataset", "messy", "--shard-size", "4",
                       "--jobs", "2"])
    assert status == 0
    return out, printed.getvalue()


def skipped_rows(out: Path) -> dict[str, str]:
    with (out / "skipped.csv").open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["file", "reason"]
    return {file: reason for file, reason in rows[1:]}


@pytest.mark.parametrize("name", list(SKIPPED))
def test_each_bad_file_is_skipped_with_its_reason(messy_run, name):
    out, _ = messy_run
    assert SKIPPED[name] in skipped_rows(out)[name]


def test_duplicate_image_id_is_skipped(messy, messy_run):
    out, _ = messy_run
    _, good = messy
    reason = skipped_rows(out)[f"nested/{good[0]}.png"]
    assert reason == f"duplicate image id '{good[0]}' (already used by {good[0]}.jpeg)"


def test_label_row_without_image_is_reported(messy_run):
    out, _ = messy_run
    notes = {file: reason for file, reason in skipped_rows(out).items() if "labels.csv:" in file}
    assert list(notes.values()) == ["label row for 'ghost_left' has no image"]


def test_odd_modes_are_converted_and_written(messy_run):
    out, _ = messy_run
    samples = {s["__key__"]: s for s in iter_samples(list_shards(out))}
    for key, note in CONVERTED.items():
        meta = json.loads(samples[key]["json"])
        assert meta["converted"] == note
        crop = np.asarray(Image.open(io.BytesIO(samples[key]["jpg"])))
        assert crop.shape == (512, 512, 3)
        assert crop.mean() > 20  # a real fundus, not a black or garbled picture
    assert json.loads(samples["x_y"]["json"])["source"] == "nested/x.y.jpeg"
    assert json.loads(samples["with_space"]["json"])["source"] == "with space.jpeg"
    assert "README" not in " ".join(skipped_rows(out))


def test_counts_and_summary_line(messy_run):
    out, printed = messy_run
    manifest = read_manifest(out)
    written = GOOD + len(CONVERTED) + 2
    skipped = len(SKIPPED) + 1
    assert manifest["num_samples"] == written
    assert manifest["skipped"] == skipped
    assert manifest["unmatched_labels"] == 1
    assert printed.strip().splitlines()[-1] == (
        f"written {written}, skipped {skipped} (see {out / 'skipped.csv'}); "
        "1 label row had no image"
    )


def test_index_files_parse_whatever_the_file_names(messy_run):
    from ssit.data.shard_index import load_shard_set

    out, _ = messy_run
    shard_set = load_shard_set(out)
    assert shard_set.num_samples == read_manifest(out)["num_samples"]
