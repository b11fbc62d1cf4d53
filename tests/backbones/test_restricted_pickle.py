"""No code of a weights file runs, in any format torch reads; plain weights still load."""

from __future__ import annotations

import argparse
import io
import pickle
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from ssit.backbones import CheckpointError, read_checkpoint
from ssit.backbones.restricted_pickle import (
    RESTRICTED_PICKLE,
    ForbiddenGlobalError,
    ForeignObject,
    is_forbidden,
)
from ssit.backbones.weights import MAX_NESTING, restricted_load
from tests.backbones.hostile import (
    LAYOUTS,
    PAYLOAD_GLOBALS,
    hostile_file,
    legacy_with_object_pickle,
    payload,
)


def assert_refused(error: pytest.ExceptionInfo, path: Path, payload_name: str) -> None:
    message = str(error.value)
    assert "\n" not in message
    assert str(path) in message
    assert PAYLOAD_GLOBALS[payload_name] in message


@pytest.mark.parametrize("payload_name", PAYLOAD_GLOBALS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_hostile_files_are_refused_without_running_code(tmp_path: Path, layout: str,
                                                        payload_name: str) -> None:
    path, marker = hostile_file(tmp_path, layout, payload_name)
    with pytest.raises(CheckpointError) as error:
        read_checkpoint(path)
    assert_refused(error, path, payload_name)
    with pytest.raises(CheckpointError) as error:
        restricted_load(path)
    assert_refused(error, path, payload_name)
    assert not marker.exists()


def test_every_reading_entry_of_the_pickle_module_is_restricted(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    data = pickle.dumps(payload("builtins.exec", marker), protocol=2)
    for read in (lambda: RESTRICTED_PICKLE.loads(data),
                 lambda: RESTRICTED_PICKLE.load(io.BytesIO(data)),
                 lambda: RESTRICTED_PICKLE.Unpickler(io.BytesIO(data)).load()):
        with pytest.raises(ForbiddenGlobalError, match=r"builtins\.exec"):
            read()
    assert not marker.exists()
    assert not hasattr(RESTRICTED_PICKLE, "dump") and not hasattr(RESTRICTED_PICKLE, "Pickler")


@pytest.mark.parametrize("module", ["os", "posix", "nt", "subprocess", "sys", "shutil",
                                    "importlib", "importlib.util", "runpy", "socket", "ctypes",
                                    "pickle", "marshal", "code", "webbrowser", "builtins",
                                    "torch.hub", "torch.jit._serialization"])
def test_modules_that_can_run_code_are_forbidden(module: str) -> None:
    assert is_forbidden(module)


@pytest.mark.parametrize("module", ["argparse", "torch.nn.modules.linear", "timm.models.vits",
                                    "vits", "ssit", "numpy.random._pickle", "osmosis",
                                    "system"])
def test_model_and_config_modules_become_stand_ins(module: str) -> None:
    assert not is_forbidden(module)


def legacy_weights() -> dict:
    torch.manual_seed(0)
    return {"model": OrderedDict(w=torch.randn(3, 2), b=torch.arange(3)),
            "meta": {"steps": [1, 2], "shape": (3, 2), "name": "x", "rate": 0.5},
            "half": torch.randn(4).half()}


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_legacy_files_of_tensors_and_containers_load_with_their_values(
        tmp_path: Path, protocol: int) -> None:
    expected = legacy_weights()
    path = tmp_path / "legacy.pt"
    torch.save(expected, path, _use_new_zipfile_serialization=False, pickle_protocol=protocol)
    assert not path.read_bytes().startswith(b"PK")
    for loaded in (restricted_load(path), read_checkpoint(path)):
        assert isinstance(loaded["model"], OrderedDict)
        assert torch.equal(loaded["model"]["w"], expected["model"]["w"])
        assert torch.equal(loaded["model"]["b"], expected["model"]["b"])
        assert loaded["half"].dtype == torch.float16
        assert torch.equal(loaded["half"], expected["half"])
        assert loaded["meta"] == expected["meta"]


def test_legacy_file_with_a_namespace_reads_through_stand_ins(tmp_path: Path) -> None:
    expected = legacy_weights()
    path = tmp_path / "legacy-args.pt"
    torch.save({**expected, "args": argparse.Namespace(lr=0.1)}, path,
               _use_new_zipfile_serialization=False)
    loaded = read_checkpoint(path)
    assert isinstance(loaded["args"], ForeignObject)
    assert loaded["args"].foreign_class == "argparse.Namespace"
    assert torch.equal(loaded["model"]["w"], expected["model"]["w"])


def test_torchscript_archives_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    for read in (restricted_load, read_checkpoint):
        with pytest.raises(CheckpointError, match=f"{path}.*TorchScript"):
            read(path)


def nested_lists_pickle(depth: int) -> bytes:
    """A protocol-2 pickle of lists nested ``depth`` deep (written by hand: pickle.dumps
    would recurse)."""
    return b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."


@pytest.mark.parametrize("depth", [MAX_NESTING + 5, 20_000])
def test_contents_nested_too_deep_are_refused_in_one_line(tmp_path: Path, depth: int) -> None:
    path = tmp_path / "deep.pt"
    path.write_bytes(legacy_with_object_pickle(nested_lists_pickle(depth)))
    with pytest.raises(CheckpointError, match=f"{path}.*nested more than {MAX_NESTING}") as error:
        read_checkpoint(path)
    assert "\n" not in str(error.value)


def test_nesting_up_to_the_limit_still_reads(tmp_path: Path) -> None:
    path = tmp_path / "nested.pt"
    path.write_bytes(legacy_with_object_pickle(nested_lists_pickle(MAX_NESTING - 5)))
    with pytest.raises(CheckpointError, match="not a mapping"):
        read_checkpoint(path)


def test_a_cyclic_pickled_model_is_refused_in_one_line(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Sequential(torch.nn.ReLU()))
    model[1].add_module("back", model)
    path = tmp_path / "cyclic.pt"
    torch.save(model, path)
    with pytest.raises(CheckpointError, match="cyclic") as error:
        read_checkpoint(path)
    assert "\n" not in str(error.value)


def test_a_pickled_model_nested_thousands_deep_is_refused(tmp_path: Path) -> None:
    import sys

    model = inner = torch.nn.Sequential()
    for _ in range(2000):
        child = torch.nn.Sequential()
        inner.add_module("0", child)
        inner = child
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(50_000)
    try:
        torch.save(model, tmp_path / "deep-model.pt")
    finally:
        sys.setrecursionlimit(limit)
    with pytest.raises(CheckpointError, match="nested more than"):
        read_checkpoint(tmp_path / "deep-model.pt")
