"""A shard folder's manifest.json is checked by every reader: one line, no traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ssit.cli import main
from ssit.data.shard_index import NoShardsError, load_shard_set
from ssit.evaluate.layouts import DatasetError, read_shard_dir
from ssit.prepare.shard_format import MANIFEST_FORMAT, PrepareError, list_shards, read_manifest
from tests.data.conftest import noise_samples, write_test_shards

BAD_MANIFESTS = [
    ({"format": MANIFEST_FORMAT}, "'shards' must be a list"),
    ({"format": MANIFEST_FORMAT, "shards": {"name": "test-000000.tar"}}, "must be a list"),
    ({"format": MANIFEST_FORMAT, "shards": "test-000000.tar"}, "must be a list"),
    ({"format": MANIFEST_FORMAT, "shards": [{"num_samples": 4}]}, "entry 1 has no 'name'"),
    ({"format": MANIFEST_FORMAT, "shards": ["test-000000.tar"]}, "entry 1 has no 'name'"),
    ({"format": MANIFEST_FORMAT, "shards": [{"name": 7}]}, "entry 1 has no 'name'"),
    ({"format": MANIFEST_FORMAT, "shards": [{"name": "../outside/test-000000.tar"}]},
     "not a file in the manifest's own folder"),
    ({"format": MANIFEST_FORMAT, "shards": [{"name": "test-000000.tar"}, {"name": "/tmp/x.tar"}]},
     "entry 2 names '/tmp/x.tar'"),
    ({"format": MANIFEST_FORMAT, "shards": [{"name": ".."}]}, "not a file"),
    ([1, 2], "unsupported manifest format"),
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("manifest")
    write_test_shards(base / "outside", [noise_samples(0, 4)], with_maps=False)
    return write_test_shards(base / "shards", [noise_samples(0, 4)], with_maps=False)


@pytest.mark.parametrize(("manifest", "message"), BAD_MANIFESTS)
def test_every_reader_refuses_a_bad_manifest_in_one_line(
    folder: Path, manifest: object, message: str, capsys: pytest.CaptureFixture
) -> None:
    (folder / "manifest.json").write_text(json.dumps(manifest))
    for call, error in ((read_manifest, PrepareError), (list_shards, PrepareError),
                        (load_shard_set, NoShardsError), (read_shard_dir, DatasetError)):
        with pytest.raises(error) as caught:
            call(folder)
        assert message in str(caught.value) and "\n" not in str(caught.value)
    assert main(["preview", str(folder), "--out", str(folder.parent / "p.png")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_good_manifest_lists_its_shards(folder: Path) -> None:
    manifest = {"format": MANIFEST_FORMAT, "has_labels": True,
                "shards": [{"name": "test-000000.tar", "num_samples": 4}]}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert list_shards(folder) == [folder / "test-000000.tar"]
    assert len(read_shard_dir(folder)) == 4
