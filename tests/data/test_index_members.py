"""Index entries are checked against the tar members they point at, on real tars."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from ssit.data import load_shard_set
from ssit.data.shard_index import IndexMismatchError, parse_index
from ssit.data.tar_members import member_at
from ssit.prepare.shard_format import write_dali_index
from tests.data.conftest import encode_jpeg, encode_png, noise_samples


def _lines(index: Path) -> list[list[str]]:
    return [line.split() for line in index.read_text().splitlines()]


def _write(index: Path, rows: list[list[str]]) -> None:
    index.write_text("\n".join(" ".join(row) for row in rows) + "\n")


@pytest.fixture
def shards(tmp_path: Path, shard_writer) -> Path:
    return shard_writer(tmp_path / "s", [noise_samples(0, 4)])


def _refused(shards: Path, *words: str) -> str:
    with pytest.raises(IndexMismatchError) as caught:
        load_shard_set(shards, validate=False)
    message = str(caught.value)
    assert "\n" not in message
    assert "test-000000.tar" in message and "wds2idx" in message
    for word in words:
        assert word in message
    return message


def test_clean_index_passes(shards: Path) -> None:
    assert load_shard_set(shards, validate=False).num_samples == 4


def test_map_of_another_sample_is_refused(shards: Path) -> None:
    index = shards / "test-000000.idx"
    rows = _lines(index)
    rows[1][4:8], rows[2][4:8] = rows[2][4:8], rows[1][4:8]  # swap the sal.png entries
    _write(index, rows)
    _refused(shards, "line 2", "different samples", "s00000", "s00001")


def test_every_entry_pointing_at_one_image_is_refused(shards: Path) -> None:
    index = shards / "test-000000.idx"
    rows = _lines(index)
    for row in rows[2:]:
        row[0:4] = rows[1][0:4]
    _write(index, rows)
    _refused(shards, "line 3", "s00000.jpg", "line 2 already uses")


def test_entry_naming_one_member_but_pointing_at_another_is_refused(shards: Path) -> None:
    index = shards / "test-000000.idx"
    rows = _lines(index)
    rows[1][1:3] = rows[2][1:3]  # s00000.jpg's name, s00001.jpg's offset and size
    _write(index, rows)
    _refused(shards, "line 2", "names s00000.jpg but points at member s00001.jpg")


def test_offset_inside_data_is_refused(shards: Path) -> None:
    index = shards / "test-000000.idx"
    rows = _lines(index)
    rows[3][1] = str(int(rows[3][1]) + 512)
    _write(index, rows)
    _refused(shards, "line 4", "no member's data starts")


def test_wrong_size_is_refused(shards: Path) -> None:
    index = shards / "test-000000.idx"
    rows = _lines(index)
    rows[1][2] = str(int(rows[1][2]) - 1)
    _write(index, rows)
    _refused(shards, "line 2", "s00000.jpg")


def test_v1_1_index_without_names_is_checked_too(shards: Path) -> None:
    index = shards / "test-000000.idx"
    rows = _lines(index)
    unnamed = [["v1.1", rows[0][1]]] + [[*row[0:3], *row[4:7]] for row in rows[1:]]
    _write(index, unnamed)
    assert load_shard_set(shards, validate=False).num_samples == 4
    unnamed[1][3:6], unnamed[2][3:6] = unnamed[2][3:6], unnamed[1][3:6]
    _write(index, unnamed)
    _refused(shards, "different samples")


def _tar_with_names(path: Path, keys: list[str], tar_format: int) -> Path:
    image, saliency = noise_samples(0, 1)[0][1:]
    members = {"jpg": encode_jpeg(image), "sal.png": encode_png(saliency)}
    with tarfile.open(path, "w", format=tar_format) as tar:
        for key in keys:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    write_dali_index(path, path.with_suffix(".idx"))
    return path


@pytest.mark.parametrize("tar_format", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_long_names_are_read_from_their_extension_headers(tmp_path: Path, tar_format: int
                                                           ) -> None:
    keys = [f"{'d' * 150}/{'k' * 120}{n}" for n in range(3)] + ["short", "é" * 60]
    tar_path = _tar_with_names(tmp_path / "long-000000.tar", keys, tar_format)
    data = tar_path.read_bytes()
    for sample, key in zip(parse_index(tar_path.with_suffix(".idx")), keys, strict=True):
        offset, size = sample.components["jpg"]
        assert member_at(data, offset, f"{key}.jpg") == (f"{key}.jpg", size)
        assert member_at(data, offset) == (f"{key}.jpg", size)
    assert load_shard_set(tmp_path, validate=False).num_samples == len(keys)

    index = tar_path.with_suffix(".idx")
    rows = _lines(index)
    rows[1][4:8], rows[2][4:8] = rows[2][4:8], rows[1][4:8]
    _write(index, rows)
    with pytest.raises(IndexMismatchError, match="line 2 pairs members of different samples"):
        load_shard_set(tmp_path, validate=False)


def test_member_at_refuses_offsets_that_are_not_member_data(shards: Path) -> None:
    data = (shards / "test-000000.tar").read_bytes()
    offset = parse_index(shards / "test-000000.idx")[0].components["jpg"][0]
    assert member_at(data, offset) is not None
    for wrong in (0, 100, offset + 1, offset + 512, len(data) + 512):
        assert member_at(data, wrong) is None


def test_validation_before_submission_refuses_a_mismatched_index(shards: Path) -> None:
    from ssit.config import ConfigError, load_config
    from ssit.train.config import PretrainConfig, validate_pretrain_config

    cfg = load_config(PretrainConfig, "demo_tiny_cpu",
                      [f"data.shards={shards}", "optim.batch_size=4"])
    validate_pretrain_config(cfg, 1)
    index = shards / "test-000000.idx"
    rows = _lines(index)
    rows[4][0:4] = rows[1][0:4]
    _write(index, rows)
    with pytest.raises(ConfigError) as caught:
        validate_pretrain_config(cfg, 1)
    assert "\n" not in str(caught.value)
    assert "test-000000.idx line 5 points at s00000.jpg" in str(caught.value)
