from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from ssit.prepare.shard_format import (
    PrepareError,
    iter_samples,
    list_shards,
    read_manifest,
    split_member_name,
)
from ssit.prepare.shards import read_labels, write_shards

REPO = Path(__file__).resolve().parents[2]


def tar_samples(shard_dir: Path) -> list[dict]:
    """All samples of a shard directory, read with Python's tarfile only."""
    samples: list[dict] = []
    for shard in sorted(shard_dir.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar:
                key, _, extension = member.name.partition(".")
                if not samples or samples[-1]["__key__"] != key:
                    samples.append({"__key__": key})
                samples[-1][extension] = tar.extractfile(member).read()
    return samples


def labels_of(raw: Path) -> dict[str, int]:
    with (raw / "labels.csv").open(newline="") as handle:
        return {row["image"]: int(row["level"]) for row in csv.DictReader(handle)}


def directory_bytes(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()}


# ---------------------------------------------------------------- the demo shards


def test_manifest_describes_the_shards(demo_shards, demo_raw):
    manifest = read_manifest(demo_shards)
    assert manifest["format"] == 1
    assert manifest["dataset"] == "demo"
    assert manifest["seed"] == 0
    assert manifest["has_labels"] is True
    assert manifest["num_samples"] == 48
    assert manifest["skipped"] == 0
    assert [s["name"] for s in manifest["shards"]] == [f"demo-{i:06d}.tar" for i in range(3)]
    for shard in manifest["shards"]:
        assert shard["num_samples"] == 16
        assert shard["index"] == shard["name"].replace(".tar", ".idx")
        digest = hashlib.sha256((demo_shards / shard["name"]).read_bytes()).hexdigest()
        assert shard["sha256"] == digest
    counts = {}
    for grade in labels_of(demo_raw).values():
        counts[str(grade)] = counts.get(str(grade), 0) + 1
    assert manifest["grade_counts"] == counts
    assert (demo_shards / "skipped.csv").read_text() == "file,reason\n"


def test_channel_statistics_match_the_crops(demo_shards):
    """mean/std are computed from the crops before JPEG coding: close to the decoded JPEGs."""
    manifest = read_manifest(demo_shards)
    total, squares, count = np.zeros(3), np.zeros(3), 0
    for sample in tar_samples(demo_shards):
        pixels = np.asarray(Image.open(io.BytesIO(sample["jpg"]))).reshape(-1, 3) / 255
        total += pixels.sum(axis=0)
        squares += (pixels**2).sum(axis=0)
        count += len(pixels)
    mean = total / count
    np.testing.assert_allclose(manifest["mean"], mean, atol=2e-3)
    np.testing.assert_allclose(manifest["std"], np.sqrt(squares / count - mean**2), atol=2e-3)


def test_tarfile_reads_every_image_once_with_all_members(demo_shards, demo_raw):
    labels = labels_of(demo_raw)
    samples = tar_samples(demo_shards)
    keys = [s["__key__"] for s in samples]
    assert sorted(keys) == sorted(labels)
    assert keys != sorted(keys)  # globally shuffled
    for sample in samples:
        assert set(sample) == {"__key__", "jpg", "sal.png", "cls", "json"}
        assert int(sample["cls"]) == labels[sample["__key__"]]
        crop = Image.open(io.BytesIO(sample["jpg"]))
        saliency = Image.open(io.BytesIO(sample["sal.png"]))
        assert (crop.format, crop.mode, crop.size) == ("JPEG", "RGB", (512, 512))
        assert (saliency.format, saliency.mode, saliency.size) == ("PNG", "L", (512, 512))
        meta = json.loads(sample["json"])
        assert meta["source"] == f"{sample['__key__']}.jpeg"
        assert meta["grade"] == labels[sample["__key__"]]
        assert meta["dataset"] == "demo"
        width, height = meta["original_size"]
        x0, y0, x1, y1 = meta["crop_box"]
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        assert width > 1.25 * height and (x1 - x0) < 0.9 * width  # black borders cut away


def test_tar_headers_are_normalised(demo_shards):
    with tarfile.open(demo_shards / "demo-000000.tar") as tar:
        members = tar.getmembers()
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {
        (0, 0, 0, "", "", 0o644)
    }
    names = [m.name for m in members]
    assert names[:4] == sorted(names[:4])  # cls, jpg, json, sal.png of the first sample


def test_webdataset_reads_the_same_samples(demo_shards):
    expected = tar_samples(demo_shards)
    urls = [str(p) for p in list_shards(demo_shards)]
    dataset = wds.WebDataset(urls, shardshuffle=False, empty_check=False)
    read = list(dataset)
    assert [s["__key__"] for s in read] == [s["__key__"] for s in expected]
    for got, want in zip(read, expected, strict=True):
        for extension in ("jpg", "sal.png", "cls", "json"):
            assert got[extension] == want[extension]


def test_dali_reads_the_shards_with_their_index_files(demo_shards):
    from nvidia.dali import fn, pipeline_def

    expected = tar_samples(demo_shards)
    shards = list_shards(demo_shards)

    @pipeline_def(batch_size=8, num_threads=1, device_id=None)
    def reader():
        jpg, sal, cls = fn.readers.webdataset(
            paths=[str(p) for p in shards],
            index_paths=[str(p.with_suffix(".idx")) for p in shards],
            ext=["jpg", "sal.png", "cls"],
            missing_component_behavior="error",
            random_shuffle=False,
            name="reader",
        )
        return jpg, sal, cls

    pipe = reader()
    pipe.build()
    assert pipe.epoch_size("reader") == len(expected)
    read = []
    for _ in range(len(expected) // 8):
        jpg, sal, cls = pipe.run()
        for i in range(8):
            read.append((bytes(np.asarray(jpg[i])), bytes(np.asarray(sal[i])),
                         bytes(np.asarray(cls[i]))))
    assert read == [(s["jpg"], s["sal.png"], s["cls"]) for s in expected]


def test_iter_samples_and_list_shards_agree_with_tarfile(demo_shards):
    keys = [s["__key__"] for s in iter_samples(list_shards(demo_shards))]
    assert keys == [s["__key__"] for s in tar_samples(demo_shards)]
    assert list_shards(str(demo_shards / "*.tar")) == sorted(demo_shards.glob("*.tar"))
    assert list_shards([demo_shards / "demo-000001.tar"]) == [demo_shards / "demo-000001.tar"]


def test_list_shards_errors(tmp_path):
    with pytest.raises(PrepareError, match=r"no \.tar shards"):
        list_shards(tmp_path)
    with pytest.raises(PrepareError, match="no shards match"):
        list_shards(str(tmp_path / "*.tar"))
    with pytest.raises(PrepareError, match="shard not found"):
        list_shards([tmp_path / "gone.tar"])
    with pytest.raises(PrepareError, match="empty list"):
        list_shards([])
    with pytest.raises(PrepareError, match=r"no manifest\.json"):
        read_manifest(tmp_path)


# ---------------------------------------------------------------- determinism and resumption


@pytest.fixture(scope="module")
def small_raw(demo_raw, tmp_path_factory) -> Path:
    """12 of the demo photographs with their labels."""
    raw = tmp_path_factory.mktemp("small_raw")
    labels = labels_of(demo_raw)
    chosen = sorted(labels)[:12]
    for name in chosen:
        shutil.copy(demo_raw / f"{name}.jpeg", raw / f"{name}.jpeg")
    with (raw / "labels.csv").open("w") as handle:
        handle.write("image,level\n" + "".join(f"{n},{labels[n]}\n" for n in chosen))
    return raw


@pytest.fixture(scope="module")
def small_shards(small_raw, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("small_shards") / "out"
    write_shards(small_raw, out, labels=small_raw / "labels.csv", dataset="small",
                 shard_size=3, jobs=2, seed=5, progress=False)
    return out


def test_same_inputs_give_byte_identical_shards(small_raw, small_shards, tmp_path):
    again = tmp_path / "again"
    write_shards(small_raw, again, labels=small_raw / "labels.csv", dataset="small",
                 shard_size=3, jobs=1, seed=5, progress=False)
    first, second = directory_bytes(small_shards), directory_bytes(again)
    assert sorted(first) == sorted(second)
    assert len([n for n in first if n.endswith(".tar")]) == 4
    for name in first:
        assert first[name] == second[name], name


def test_rerun_keeps_finished_shards(small_raw, small_shards, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(small_shards, out)
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*.tar")}
    report = write_shards(small_raw, out, labels=small_raw / "labels.csv", dataset="small",
                          shard_size=3, jobs=1, seed=5, progress=False)
    assert report.reused_shards == 4 and report.written == 12
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*.tar")}
    assert after == before


def test_fast_recipe_is_recorded_and_redoes_every_shard(small_raw, small_shards, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(small_shards, out)
    assert read_manifest(out)["recipe"] == "paper"
    default_jpg = {s["__key__"]: s["jpg"] for s in tar_samples(out)}
    report = write_shards(small_raw, out, labels=small_raw / "labels.csv", dataset="small",
                          shard_size=3, jobs=1, seed=5, progress=False, fast=True)
    assert report.reused_shards == 0 and report.written == 12
    assert read_manifest(out)["recipe"] == "fast-2"
    fast_jpg = {s["__key__"]: s["jpg"] for s in tar_samples(out)}
    assert fast_jpg.keys() == default_jpg.keys()
    assert all(fast_jpg[key] != default_jpg[key] for key in fast_jpg)


def test_changed_input_redoes_only_its_shard(small_raw, small_shards, tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    shutil.copytree(small_raw, raw)
    shutil.copytree(small_shards, out)
    victim = json.loads(next(iter_samples([out / "small-000002.tar"]))["json"])["source"]
    os.utime(raw / victim, ns=(1, 1))  # same bytes, new mtime: the shard is made again
    before = {p.name: p.stat().st_ino for p in out.glob("*.tar")}
    report = write_shards(raw, out, labels=raw / "labels.csv", dataset="small", shard_size=3,
                          jobs=1, seed=5, progress=False)
    assert report.reused_shards == 3
    after = {p.name: p.stat().st_ino for p in out.glob("*.tar")}
    assert [n for n in before if before[n] != after[n]] == ["small-000002.tar"]
    assert directory_bytes(out) == directory_bytes(small_shards)


def test_resumes_after_being_killed(small_raw, small_shards, tmp_path):
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "ssit", "shards", "--input", str(small_raw),
               "--out", str(out), "--labels", str(small_raw / "labels.csv"),
               "--dataset", "small", "--shard-size", "3", "--jobs", "1", "--seed", "5"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(command, env=env, cwd=REPO, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first_done = out / ".state" / "small-000000.json"
    deadline = time.monotonic() + 120
    while not first_done.exists():
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "no shard finished in time"
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    process.stderr.close()

    assert not (out / "manifest.json").exists(), "the run finished before it could be killed"
    finished = sorted(p.name for p in out.glob("*.tar"))
    assert finished and len(finished) < 4
    with pytest.raises(PrepareError, match=r"unfinished .* re-run `ssit shards`"):
        list_shards(out)  # a third of the data must not pass for all of it
    assert list_shards([out / name for name in finished]) == [out / n for n in finished]
    assert list_shards(str(out / "*.tar")) == [out / n for n in finished]
    before = {n: ((out / n).stat().st_ino, (out / n).stat().st_mtime_ns) for n in finished}

    report = write_shards(small_raw, out, labels=small_raw / "labels.csv", dataset="small",
                          shard_size=3, jobs=1, seed=5, progress=False)

    assert report.reused_shards == len(finished)
    for name, identity in before.items():
        assert ((out / name).stat().st_ino, (out / name).stat().st_mtime_ns) == identity
    keys = [s["__key__"] for s in tar_samples(out)]
    assert len(keys) == len(set(keys)) == 12
    assert not list(out.glob("*.tmp"))
    assert directory_bytes(out) == directory_bytes(small_shards)


def test_leftover_temporary_and_surplus_shards_are_removed(small_raw, small_shards, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(small_shards, out)
    (out / "small-000001.tar.tmp").write_bytes(b"half a shard")
    shutil.copy(out / "small-000000.tar", out / "small-000009.tar")  # from an older, larger run
    (out / "notes.txt").write_text("kept")
    write_shards(small_raw, out, labels=small_raw / "labels.csv", dataset="small",
                 shard_size=3, jobs=1, seed=5, progress=False)
    assert not (out / "small-000001.tar.tmp").exists()
    assert not (out / "small-000009.tar").exists()
    assert (out / "notes.txt").read_text() == "kept"
    assert list_shards(out) == [out / f"small-{i:06d}.tar" for i in range(4)]


def test_unlabelled_run_has_no_cls_and_seed_sets_the_order(small_raw, small_shards, tmp_path):
    out = tmp_path / "plain"
    report = write_shards(small_raw, out, dataset="plain", shard_size=100, jobs=1, seed=6,
                          progress=False)
    assert report.written == 12
    manifest = read_manifest(out)
    assert manifest["has_labels"] is False and manifest["grade_counts"] is None
    samples = tar_samples(out)
    assert all(set(s) == {"__key__", "jpg", "sal.png", "json"} for s in samples)
    assert all(json.loads(s["json"])["grade"] is None for s in samples)
    keys_seed5 = [s["__key__"] for s in tar_samples(small_shards)]
    keys_seed6 = [s["__key__"] for s in samples]
    assert sorted(keys_seed5) == sorted(keys_seed6)
    assert keys_seed5 != keys_seed6


# ---------------------------------------------------------------- labels


def test_read_labels_accepts_eyepacs_csv(tmp_path):
    path = tmp_path / "trainLabels.csv"
    path.write_text("\ufeffimage,level\r\n10_left,0\r\n10_right,4\r\n\r\n")
    labels = read_labels(path)
    assert labels.grades == {"10_left": 0, "10_right": 4}
    assert labels.problems == {}
    assert labels.lines == {"10_left": 2, "10_right": 3}


def test_read_labels_keeps_bad_rows_as_problems(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("image,level\na,5\nb,x\nc,1,extra\nd,2\nd,3\ne,1\ne,1\nf,\u00b2\n")
    labels = read_labels(path)
    assert labels.grades == {"e": 1}
    assert "grade '5' is not an integer 0-4" in labels.problems["a"]
    assert "grade 'x'" in labels.problems["b"]
    assert "3 columns" in labels.problems["c"]
    assert "conflicting grades" in labels.problems["d"]
    assert "is not an integer 0-4" in labels.problems["f"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "labels file not found"),
        ("id,grade\n1,2\n", "must start with the header 'image,level'"),
        ("", "must start with the header"),
        (b"\xff\xfe\x00\x00binary", "cannot read labels file"),
    ],
)
def test_read_labels_errors(tmp_path, content, message):
    path = tmp_path / "labels.csv"
    if isinstance(content, str):
        path.write_text(content)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    with pytest.raises(PrepareError, match=message):
        read_labels(path)


def test_read_labels_rejects_a_directory(tmp_path):
    with pytest.raises(PrepareError, match="is a directory"):
        read_labels(tmp_path)


def test_iter_samples_refuses_a_file_that_is_not_a_tar(tmp_path):
    junk = tmp_path / "junk-000000.tar"
    junk.write_bytes(b"not a tar archive at all" * 40)
    with pytest.raises(PrepareError, match=r"cannot read shard .*junk-000000\.tar"):
        list(iter_samples([junk]))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("10_left.jpg", ("10_left", "jpg")),
        ("10_left.sal.png", ("10_left", "sal.png")),
        ("train/10_left.sal.png", ("train/10_left", "sal.png")),
        ("README", ("README", "")),
        (".hidden", ("", "hidden")),
    ],
)
def test_split_member_name(name, expected):
    assert split_member_name(name) == expected
