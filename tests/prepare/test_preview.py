from __future__ import annotations

import io
import tarfile

import cv2
import numpy as np
import pytest

from ssit.prepare.preview import (
    contact_sheet,
    grid,
    heat_map,
    read_samples,
    salient_share,
    side_by_side,
    text_strip,
    write_preview,
)
from ssit.prepare.shard_format import PrepareError

TILE = 64
CAPTION = 22
LEGEND = 22
PAIR_GAP = 12


def test_heat_map_runs_from_black_to_pale_yellow():
    ramp = np.array([[0, 128, 255]], np.uint8)
    colours = heat_map(ramp)[0].astype(int)
    assert colours.shape == (3, 3)
    assert colours[0].max() < 10  # 0 is black
    assert colours[2].min() > 150 and colours[2][0] > colours[2][2]  # 255 is pale yellow
    assert colours[0].sum() < colours[1].sum() < colours[2].sum()
    with pytest.raises(ValueError, match="2-D uint8"):
        heat_map(np.zeros((2, 2), np.float32))


def test_salient_share_counts_values_from_128():
    saliency = np.array([[0, 127, 128, 255]], np.uint8)
    assert salient_share(saliency) == 0.5


def test_side_by_side_and_grid_place_pictures_with_gaps():
    red = np.zeros((2, 3, 3), np.uint8)
    red[..., 0] = 255
    pair = side_by_side([red, red], gap=1)
    assert pair.shape == (2, 7, 3)
    assert (pair[:, 3] == 32).all() and (pair[:, :3, 0] == 255).all()
    sheet = grid([pair] * 3, columns=2, gap=1)
    assert sheet.shape == (2 * 3 + 1, 2 * 8 + 1, 3)
    assert np.array_equal(sheet[4:6, 1:8], pair)  # third pair: second row, first column
    assert (sheet[4:6, 9:16] == 32).all()  # no fourth pair: background


def test_text_strip_shortens_text_that_does_not_fit():
    wide = text_strip("grade 4  key", 200)
    assert wide.shape == (22, 200, 3) and wide.max() == 255
    narrow = text_strip("x" * 200, 60)
    assert narrow.shape == (22, 60, 3)
    assert narrow[:, -4:].max() == 0  # nothing drawn past the right margin


def test_contact_sheet_puts_each_map_beside_its_crop(demo_shards):
    samples = read_samples(demo_shards, 5)
    sheet = contact_sheet(demo_shards, n=5, tile=TILE)
    # a legend, then 2 columns x 3 rows of (crop | map) pairs with captions
    pair_width, pair_height = 2 * TILE + 4, TILE + CAPTION
    assert sheet.shape == (LEGEND + 3 * (pair_height + PAIR_GAP) + PAIR_GAP,
                           2 * (pair_width + PAIR_GAP) + PAIR_GAP, 3)
    for number, sample in enumerate(samples):
        row, column = divmod(number, 2)
        y = LEGEND + PAIR_GAP + row * (pair_height + PAIR_GAP)
        x = PAIR_GAP + column * (pair_width + PAIR_GAP)
        crop = cv2.resize(sample.crop, (TILE, TILE), interpolation=cv2.INTER_AREA)
        saliency = cv2.resize(sample.saliency, (TILE, TILE), interpolation=cv2.INTER_AREA)
        assert np.array_equal(sheet[y : y + TILE, x : x + TILE], crop)
        assert np.array_equal(sheet[y : y + TILE, x + TILE + 4 : x + 2 * TILE + 4],
                              heat_map(saliency))
        caption = sheet[y + TILE : y + pair_height, x : x + pair_width]
        assert caption.max() == 255  # white text was drawn


def test_dark_maps_stay_visible(demo_shards):
    sample = read_samples(demo_shards, 1)[0]
    dark = (sample.saliency // 8).astype(np.uint8)  # a map 8 times darker, max below 32
    assert dark.max() < 32
    picture = heat_map(cv2.resize(dark, (TILE, TILE), interpolation=cv2.INTER_AREA))
    # the pattern still shows: the picture differs clearly from an all-zero map's
    assert np.abs(picture.astype(int) - heat_map(np.zeros_like(dark[:TILE, :TILE]))).max() > 40


def test_captions_name_grade_and_key(demo_shards):
    samples = read_samples(demo_shards, 3)
    assert all(str(sample.grade) in "01234" for sample in samples)
    assert len({sample.key for sample in samples}) == 3


def test_contact_sheet_with_fewer_samples_than_asked(demo_shards):
    assert len(read_samples(demo_shards, 500)) == 48
    assert contact_sheet(demo_shards, n=500, tile=16).shape[0] > 0


def test_write_preview_writes_a_png(demo_shards, tmp_path):
    out = tmp_path / "deep" / "sheet.png"
    assert write_preview(demo_shards, out, n=3, tile=32) == 3
    picture = cv2.imread(str(out))
    assert picture is not None and picture.shape[0] > 32


@pytest.mark.parametrize(("n", "tile", "message"), [(0, 64, "at least 1"),
                                                    (2, 8, "at least 16 pixels")])
def test_contact_sheet_rejects_bad_sizes(demo_shards, n, tile, message):
    with pytest.raises(PrepareError, match=message):
        contact_sheet(demo_shards, n=n, tile=tile)


def test_write_preview_rejects_a_name_without_png(demo_shards, tmp_path):
    with pytest.raises(PrepareError, match=r"must end in \.png"):
        write_preview(demo_shards, tmp_path / "sheet.jpg")
    assert not list(tmp_path.iterdir())


def _copy_without(demo_shards, tmp_path, extension: str):
    source = sorted(demo_shards.glob("*.tar"))[0]
    target = tmp_path / "stripped.tar"
    with tarfile.open(source) as tar, tarfile.open(target, "w") as out:
        for member in tar:
            if not member.name.endswith(f".{extension}"):
                out.addfile(member, tar.extractfile(member))
    return target


@pytest.mark.parametrize(("extension", "message"), [("sal.png", "no saliency map"),
                                                     ("jpg", "no crop")])
def test_shards_without_maps_or_crops_are_refused(demo_shards, tmp_path, extension, message):
    with pytest.raises(PrepareError, match=message):
        contact_sheet(_copy_without(demo_shards, tmp_path, extension), n=2)


def test_undecodable_map_is_refused(demo_shards, tmp_path):
    source = sorted(demo_shards.glob("*.tar"))[0]
    target = tmp_path / "broken.tar"
    with tarfile.open(source) as tar, tarfile.open(target, "w") as out:
        for member in tar:
            data = tar.extractfile(member).read()
            if member.name.endswith(".sal.png"):
                data = b"not a png"
                member.size = len(data)
            out.addfile(member, io.BytesIO(data))
    with pytest.raises(PrepareError, match="undecodable"):
        contact_sheet(target, n=1)


def test_samples_without_grade_say_so(demo_shards, tmp_path):
    source = sorted(demo_shards.glob("*.tar"))[0]
    target = tmp_path / "unlabelled.tar"
    with tarfile.open(source) as tar, tarfile.open(target, "w") as out:
        for member in tar:
            if member.name.endswith((".cls", ".json")):
                continue
            out.addfile(member, tar.extractfile(member))
    assert read_samples(target, 1)[0].grade is None
    assert contact_sheet(target, n=1, tile=32).shape[0] > 0


@pytest.mark.parametrize(("cls", "message"), [(b"\xff3", "its cls member is not UTF-8 text"),
                                              (b"+2", "cls '+2' is not a grade")])
def test_preview_names_a_sample_with_a_bad_grade(tmp_path, capsys, cls, message):
    err = _preview_error(tmp_path, capsys, {"cls": cls})
    assert "sample eye7" in err and message in err


def _preview_error(tmp_path, capsys, extra: dict[str, bytes]) -> str:
    """What ``ssit preview`` says (exit status 2, one line) of a shard holding one sample,
    eye7, with a plain crop and map and the ``extra`` members."""
    from ssit.cli import main

    image = np.full((32, 32, 3), 80, np.uint8)
    members = {**extra, "jpg": cv2.imencode(".jpg", image)[1].tobytes(),
               "sal.png": cv2.imencode(".png", image[..., 0])[1].tobytes()}
    with tarfile.open(tmp_path / "p-000000.tar", "w") as tar:
        for ext, data in members.items():
            info = tarfile.TarInfo(f"eye7.{ext}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert main(["preview", str(tmp_path / "p-000000.tar"), "--out",
                 str(tmp_path / "p.png")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    return err


@pytest.mark.parametrize(("metadata", "message"), [
    (b"{not json", "json member that is not valid JSON"),
    (b"\xff\xfe", "json member that is not valid JSON"),
    (b"[1, 2]", "json member that is not a JSON object"),
])
def test_preview_names_a_sample_with_bad_metadata(tmp_path, capsys, metadata, message):
    err = _preview_error(tmp_path, capsys, {"json": metadata})
    assert "sample 'eye7'" in err and message in err
