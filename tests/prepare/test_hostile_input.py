"""Input folders and situations that must neither crash nor hang ``ssit shards``.

Everything here is real: symbolic links, FIFOs and undecodable file names on disk, a second
user for an unreadable folder, concurrent ``ssit shards`` processes.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import pytest

from ssit.cli import main
from ssit.prepare.shard_format import PrepareError, iter_samples, list_shards, read_manifest
from ssit.prepare.shards import write_shards

REPO = Path(__file__).resolve().parents[2]
NON_UTF8 = b"caf\xe9_left.jpeg"
NON_UTF8_SHOWN = "caf\\xe9_left.jpeg"


def skipped_rows(out: Path) -> dict[str, str]:
    text = (out / "skipped.csv").read_bytes().decode("utf-8")  # must be valid UTF-8
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["file", "reason"]
    return {file: reason for file, reason in rows[1:]}


@pytest.fixture
def two_good(demo_raw, tmp_path) -> Path:
    """A folder with two good photographs, ``a.jpeg`` and ``b.jpeg``."""
    raw = tmp_path / "raw"
    raw.mkdir()
    for name, source in zip(("a", "b"), sorted(demo_raw.glob("*.jpeg"))[:2], strict=True):
        shutil.copy(source, raw / f"{name}.jpeg")
    return raw


def shards_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ssit", "shards", *args], cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                          text=True, timeout=300)


# ---------------------------------------------------------------- what is in the input folder


def test_broken_links_and_link_loops_are_skipped_and_reported(two_good, tmp_path):
    raw = two_good
    (raw / "dangling.jpeg").symlink_to(raw / "gone.jpeg")
    (raw / "loop.jpeg").symlink_to("loop.jpeg")
    (raw / "sub").mkdir()
    (raw / "sub" / "up").symlink_to("..")  # a folder loop
    (raw / "elsewhere").mkdir()
    shutil.copy(raw / "a.jpeg", raw / "elsewhere" / "c.jpeg")
    (raw / "linked").symlink_to(raw / "elsewhere")  # the same folder twice: listed once
    report = write_shards(raw, tmp_path / "out", shard_size=10, jobs=1, progress=False)
    rows = skipped_rows(tmp_path / "out")
    assert rows["dangling.jpeg"] == "broken symbolic link"
    assert rows["loop.jpeg"] == "symbolic link loop"
    assert rows["sub/up/"].startswith("folder already listed")
    assert any(name in rows for name in ("linked/", "elsewhere/"))
    assert report.written == 3 and report.skipped == 4


@pytest.mark.timeout(60)
def test_a_fifo_named_like_an_image_is_skipped_not_read(two_good, tmp_path):
    os.mkfifo(two_good / "pipe.jpg")
    report = write_shards(two_good, tmp_path / "out", shard_size=10, jobs=1, progress=False)
    assert skipped_rows(tmp_path / "out")["pipe.jpg"] == "not a regular file (FIFO)"
    assert report.written == 2


@pytest.mark.parametrize("labelled", [False, True], ids=["no-labels", "labels"])
def test_file_names_that_are_not_utf8_are_escaped_everywhere(two_good, tmp_path, labelled):
    raw = two_good
    good = os.path.join(os.fsencode(raw), NON_UTF8)
    shutil.copy(raw / "b.jpeg", os.fsdecode(good))
    with open(os.path.join(os.fsencode(raw), b"empty_\xff.png"), "wb"):
        pass
    labels = None
    if labelled:
        labels = raw / "labels.csv"
        labels.write_text("image,level\na,1\nb,2\n")
    out = tmp_path / "out"
    for _ in range(2):  # a re-run reads back what the first run wrote
        report = write_shards(raw, out, labels=labels, shard_size=2, jobs=2, progress=False)
    rows = skipped_rows(out)
    assert rows["empty_\\xff.png"] == ("no label row in labels.csv" if labelled else "empty file")
    manifest = json.loads((out / "manifest.json").read_bytes().decode("utf-8"))
    assert manifest == read_manifest(out)
    for index in out.glob("*.idx"):
        index.read_bytes().decode("ascii")
    from ssit.data.shard_index import load_shard_set

    assert load_shard_set(out).num_samples == report.written
    samples = {s["__key__"]: json.loads(s["json"]) for s in iter_samples(list_shards(out))}
    if labelled:
        assert rows[NON_UTF8_SHOWN] == "no label row in labels.csv"
        assert sorted(samples) == ["a", "b"]
    else:
        assert samples["caf_xe9_left"]["source"] == NON_UTF8_SHOWN
        assert report.written == 3 and report.reused_shards == 2


# ---------------------------------------------------------------- a folder that cannot be read


def test_an_unreadable_subfolder_is_reported(demo_raw):
    """chmod 000 does not stop root, so the run is made as ``nobody`` when the tests are root."""
    as_user: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: cannot make a folder unreadable")
        as_user = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
    top = Path(tempfile.mkdtemp(prefix="ssit-unreadable-"))  # outside root's private tmp_path
    try:
        top.chmod(0o777)
        raw = top / "raw"
        (raw / "locked").mkdir(parents=True)
        for name in ("a", "b"):
            shutil.copy(next(demo_raw.glob("*.jpeg")), raw / f"{name}.jpeg")
        shutil.copy(next(demo_raw.glob("*.jpeg")), raw / "locked" / "c.jpeg")
        raw.chmod(0o755)
        (raw / "locked").chmod(0)
        command = [*as_user, sys.executable, "-m", "ssit", "shards", "--input", str(raw),
                   "--out", str(top / "out"), "--jobs", "1"]
        done = subprocess.run(command, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip().startswith("written 2, skipped 1")
        assert skipped_rows(top / "out")["locked/"] == "cannot list folder: Permission denied"
    finally:
        (top / "raw" / "locked").chmod(0o755)
        shutil.rmtree(top)


# ---------------------------------------------------------------- two runs, one folder


def _wait_for_lock_holder(process: subprocess.Popen, out: Path) -> None:
    lock = out / ".state" / "lock"
    deadline = time.monotonic() + 120
    while not (lock.is_file() and lock.read_text().strip() == str(process.pid)):
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline, "the first run never took the lock"
        time.sleep(0.02)


@pytest.mark.timeout(300)
def test_a_second_run_into_the_same_folder_refuses_and_a_crash_leaves_no_lock(demo_raw,
                                                                              tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "out"
    raw.mkdir()
    for source in sorted(demo_raw.glob("*.jpeg"))[:12]:  # enough work to be caught holding it
        shutil.copy(source, raw / source.name)
    args = ["--input", str(raw), "--out", str(out), "--shard-size", "4", "--jobs", "1"]
    first = subprocess.Popen([sys.executable, "-m", "ssit", "shards", *args], cwd=REPO,
                             env={**os.environ, "PYTHONPATH": str(REPO)}, text=True,
                             start_new_session=True, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    try:
        _wait_for_lock_holder(first, out)
        os.killpg(first.pid, signal.SIGSTOP)  # holds the folder for as long as the test likes
        second = shards_cli(*args)
        assert second.returncode == 2
        assert second.stderr.strip().splitlines() == [
            f"error: {out} is being written by another `ssit shards` (process {first.pid}); "
            "wait for it to finish or choose another --out"
        ]
    finally:
        with contextlib.suppress(ProcessLookupError):  # a crash: the lock must go with it
            os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        first.stderr.close()
    third = shards_cli(*args)
    assert third.returncode == 0, third.stderr
    assert read_manifest(out)["num_samples"] == 12


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs mount of a chosen size (as root only), resizable, unmounted at the end."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = []

    def mount(size: int) -> Path:
        options = f"remount,size={size}" if mounted else f"size={size}"
        command = ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount_point)]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        mounted.append(size)
        return mount_point

    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    yield mount
    if mounted:
        subprocess.run(["umount", str(mount_point)], check=True)


def test_a_full_disk_is_one_line_and_a_rerun_resumes(demo_raw, tmp_path, small_disk, capsys):
    raw = tmp_path / "raw"
    raw.mkdir()
    for source in sorted(demo_raw.glob("*.jpeg"))[:6]:
        shutil.copy(source, raw / source.name)
    reference = tmp_path / "reference"
    write_shards(raw, reference, shard_size=2, jobs=1, progress=False)
    tars = {path.name: path.read_bytes() for path in reference.glob("*.tar")}
    assert len(tars) == 3
    first, second = len(tars["eyepacs-000000.tar"]), len(tars["eyepacs-000001.tar"])

    out = small_disk(first + second // 2 + 64 * 1024) / "shards"
    argv = ["shards", "--input", str(raw), "--out", str(out), "--shard-size", "2", "--jobs", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: no space left on the device of {out}")
    assert "re-run `ssit shards`" in err[0]
    assert not (out / "manifest.json").exists()
    assert not list(out.glob("*.tmp")) and not list((out / ".state").glob("*.tmp"))
    finished = sorted(path.stem for path in (out / ".state").glob("eyepacs-*.json"))
    assert finished == ["eyepacs-000000"]  # only what was written in full counts as finished
    assert (out / "eyepacs-000000.tar").read_bytes() == tars["eyepacs-000000.tar"]

    small_disk(64 * 1024 * 1024)
    assert main(argv) == 0
    assert {path.name: path.read_bytes() for path in out.glob("*.tar")} == tars
    assert read_manifest(out)["num_samples"] == 6


def test_the_lock_refuses_in_process_too(two_good, tmp_path):
    from ssit.prepare.output_lock import hold_output_folder

    out = tmp_path / "out"
    with hold_output_folder(out), pytest.raises(PrepareError, match="being written by"):
        write_shards(two_good, out, shard_size=1, jobs=1, progress=False)
    write_shards(two_good, out, shard_size=1, jobs=1, progress=False)


# ---------------------------------------------------------------- images too large to decode


def png_header(path: Path, width: int, height: int) -> None:
    """A PNG that declares ``width`` x ``height`` 16-bit RGB pixels but holds almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(bytes(6001))) + chunk(b"IEND", b""))


def test_images_over_the_pixel_bound_are_refused_before_decoding(two_good, tmp_path):
    png_header(two_good / "huge.png", 16000, 16000)
    png_header(two_good / "big.png", 12000, 9000)
    report = write_shards(two_good, tmp_path / "out", shard_size=10, jobs=1, progress=False)
    rows = skipped_rows(tmp_path / "out")
    assert rows["big.png"] == (
        "image too large to decode (12000x9000 = 108 megapixels, limit 100; see --max-pixels)")
    assert rows["huge.png"].startswith("image too large to decode (over ")
    assert report.written == 2


def test_an_opencv_only_format_named_png_is_bound_too(two_good, tmp_path):
    from tests.prepare.test_image_size import hdr

    path = hdr(two_good / "radiance.png")
    path.write_bytes(path.read_bytes().replace(b"-Y 80 +X 96", b"-Y 20000 +X 15000", 1))
    report = write_shards(two_good, tmp_path / "out", shard_size=10, jobs=1, progress=False)
    assert skipped_rows(tmp_path / "out")["radiance.png"] == (
        "image too large to decode (15000x20000 = 300 megapixels, limit 100; see --max-pixels)")
    assert report.written == 2


def test_the_pixel_bound_is_an_option(two_good, tmp_path):
    out = tmp_path / "out"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = main(["shards", "--input", str(two_good), "--out", str(out),
                       "--max-pixels", "100000", "--jobs", "1"])
    assert status == 2  # nothing left to write
    rows = skipped_rows(out)
    assert set(rows) == {"a.jpeg", "b.jpeg"}
    assert all("limit 0.1; see --max-pixels" in reason for reason in rows.values())
    with pytest.raises(PrepareError, match="max_pixels"):
        write_shards(two_good, out, max_pixels=0)
