from __future__ import annotations

from pathlib import Path

import pytest

from ssit.atomic_write import replace_json, replacing


def test_success_replaces_the_file_and_creates_folders(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "result.json"
    with replacing(target) as partial:
        assert partial.parent == target.parent and partial != target
        partial.write_text("new")
        assert not target.exists()
    assert target.read_text() == "new"
    assert [p.name for p in target.parent.iterdir()] == ["result.json"]


def test_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "result.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="disk full"), replacing(target) as partial:
        partial.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_replace_json_writes_one_document_with_a_newline(tmp_path: Path) -> None:
    target = replace_json(tmp_path / "x" / "a.json", {"b": [1, 2]}, indent=2)
    assert target.read_text() == '{\n  "b": [\n    1,\n    2\n  ]\n}\n'
    replace_json(target, {"c": 3})
    assert target.read_text() == '{"c": 3}\n'
    with pytest.raises(TypeError):
        replace_json(target, {"d": object()})
    assert target.read_text() == '{"c": 3}\n'
    assert [p.name for p in target.parent.iterdir()] == ["a.json"]
