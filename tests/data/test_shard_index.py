"""Index parsing, sample validation and undecodable-sample replacement on real tars."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from ssit.data import MissingIndexError, NoShardsError, load_shard_set
from ssit.data.shard_index import parse_index, resolve_shards
from tests.data.conftest import noise_samples


def test_parse_index_reads_components(noise_shards: Path) -> None:
    samples = parse_index(noise_shards / "test-000000.idx")
    assert len(samples) == 10
    assert samples[0].key == "s00000"
    assert set(samples[0].components) == {"jpg", "sal.png"}
    offset, size = samples[0].components["jpg"]
    data = (noise_shards / "test-000000.tar").read_bytes()
    assert (
        data[offset : offset + 3] == b"\xff\xd8\xff"
        and data[offset + size - 2 :][:2] == b"\xff\xd9"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "bad header"),
        ("v9 1\njpg 0 1 a.jpg\n", "bad header"),
        ("v1.2 2\njpg 512 10 a.jpg\n", "header says 2"),
        ("v1.2 1\njpg 512 ten a.jpg\n", "malformed"),
        ("v1.2 1\njpg 512 10\n", "malformed"),
    ],
)
def test_broken_index_is_a_clear_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "x-000000.idx"
    path.write_text(text)
    with pytest.raises(MissingIndexError, match=message):
        parse_index(path)


def test_missing_index_file(tmp_path: Path, shard_writer) -> None:
    shards = shard_writer(tmp_path, [noise_samples(0, 4)])
    (shards / "test-000000.idx").unlink()
    with pytest.raises(MissingIndexError, match="no index file"):
        load_shard_set(shards)


def test_resolve_specs(noise_shards: Path) -> None:
    tars = sorted(noise_shards.glob("*.tar"))
    assert resolve_shards(noise_shards) == tars
    assert resolve_shards(str(noise_shards / "test-00000[01].tar")) == tars[:2]
    assert resolve_shards([tars[2]]) == [tars[2]]
    with pytest.raises(NoShardsError):
        resolve_shards(str(noise_shards / "nothing-*.tar"))


def test_clean_shards_keep_their_own_index(noise_shards: Path) -> None:
    shard_set = load_shard_set(noise_shards)
    assert shard_set.num_samples == 24
    assert shard_set.index_paths == [p.with_suffix(".idx") for p in shard_set.tar_paths]


def test_bad_samples_leave_a_rewritten_index(
    tmp_path: Path, shard_writer, caplog: pytest.LogCaptureFixture
) -> None:
    shards = shard_writer(tmp_path / "s", [noise_samples(0, 6), noise_samples(6, 6)])
    tar_path = shards / "test-000001.tar"
    data = bytearray(tar_path.read_bytes())
    jpg = parse_index(shards / "test-000001.idx")[2].components["jpg"]
    data[jpg[0] : jpg[0] + 3] = b"GIF"  # not a JPEG any more
    tar_path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="ssit.data"):
        shard_set = load_shard_set(shards)
    assert "s00008 (jpg is not a JPEG)" in caplog.text
    assert shard_set.num_samples == 11
    rewritten = shard_set.index_paths[1]
    assert rewritten.parent != shards and rewritten.is_file()
    assert len(parse_index(rewritten)) == 5
    assert shard_set.index_paths[0] == shards / "test-000000.idx"
    assert load_shard_set(shards, validate=False).num_samples == 12
    shard_set.cleanup()
    assert not rewritten.exists()


def test_replace_undecodable_keeps_the_count(tmp_path: Path, shard_writer) -> None:
    shards = shard_writer(tmp_path, [noise_samples(0, 6)])
    tar_path = shards / "test-000000.tar"
    offset, size = parse_index(shards / "test-000000.idx")[4].components["jpg"]
    data = bytearray(tar_path.read_bytes())
    data[offset + 3 : offset + size - 2] = bytes(size - 5)
    tar_path.write_bytes(bytes(data))
    shard_set = load_shard_set(shards)
    assert shard_set.num_samples == 6  # markers intact: passes the cheap check
    assert shard_set.replace_undecodable(num_workers=1) == ["test-000000.tar:s00004"]
    samples = parse_index(shard_set.index_paths[0])
    assert len(samples) == 6 and samples[4].key == "s00003"
    assert shard_set.replace_undecodable(num_workers=1) == []
