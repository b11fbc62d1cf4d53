"""Weights files that try to run code when read: each payload would create a marker file.

Payloads name ``os.system`` (pickled as ``posix.system``), ``builtins.eval``, ``builtins.exec``,
``builtins.getattr`` (on ``__import__('os')``) and ``subprocess.Popen``. Layouts put one in a
plain pickle, in torch's legacy (pre-1.6) format (inside the object, nested in containers, or
as one of the records around the object: magic number, protocol, system information, storage
keys) and in torch's zip format.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import subprocess
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

# payload name -> the global the refusal must name
PAYLOAD_GLOBALS = {
    "os.system": "posix.system" if os.name == "posix" else "nt.system",
    "builtins.eval": "builtins.eval",
    "builtins.exec": "builtins.exec",
    "builtins.getattr": "builtins.getattr",
    "subprocess.Popen": "subprocess.Popen",
}
LEGACY_RECORDS = ("magic", "protocol", "sys_info", "storage_keys")


class Call:
    """Pickles as ``function(*args)``; ``function`` may itself be a Call."""

    def __init__(self, function: Any, *args: Any) -> None:
        self.function, self.args = function, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.function, self.args

    def __call__(self, *args: Any) -> Any:
        """Never called here; pickle only requires a reduce's function to be callable."""
        raise NotImplementedError


def payload(name: str, marker: Path) -> Call:
    """An object whose unpickling would create ``marker`` through the global ``name``."""
    write = f"open({str(marker)!r}, 'w').close()"
    if name == "os.system":
        return Call(os.system, f"touch {marker}")
    if name == "builtins.eval":
        return Call(eval, write)
    if name == "builtins.exec":
        return Call(exec, write)
    if name == "builtins.getattr":
        return Call(Call(getattr, Call(__import__, "os"), "system"), f"touch {marker}")
    if name == "subprocess.Popen":
        return Call(subprocess.Popen, ["touch", str(marker)])
    raise ValueError(name)


def weights(extra: Any = None) -> dict[str, Any]:
    """A small checkpoint: one tensor of model weights and, optionally, something else."""
    contents: dict[str, Any] = {"model": {"w": torch.arange(4.0)}}
    if extra is not None:
        contents["extra"] = extra
    return contents


def plain_pickle(path: Path, evil: Any) -> Path:
    path.write_bytes(pickle.dumps({"extra": evil, "model": [1.0, 2.0]}, protocol=2))
    return path


def legacy(path: Path, evil: Any) -> Path:
    torch.save(weights(evil), path, _use_new_zipfile_serialization=False)
    return path


def legacy_nested(path: Path, evil: Any) -> Path:
    nested = {"a": [1, OrderedDict(b=[{"c": (evil,)}])]}
    torch.save(weights(nested), path, _use_new_zipfile_serialization=False)
    return path


def zip_format(path: Path, evil: Any) -> Path:
    torch.save(weights(OrderedDict(deep=[{"x": evil}])), path)
    return path


def legacy_record(record: str) -> Callable[[Path, Any], Path]:
    """A writer of a legacy file whose ``record`` (not the object) is the payload."""

    def write(path: Path, evil: Any) -> Path:
        path.write_bytes(legacy_with_record(weights(), record, pickle.dumps(evil, protocol=2)))
        return path

    return write


def legacy_records(obj: Any) -> tuple[list[bytes], bytes]:
    """The pickle records of ``obj`` saved in torch's legacy format, and the raw bytes after."""
    buffer = io.BytesIO()
    torch.save(obj, buffer, _use_new_zipfile_serialization=False)
    raw = buffer.getvalue()
    stream, records, start = io.BytesIO(raw), [], 0
    for _ in range(5):  # magic, protocol, sys_info, object, storage keys
        for _ in pickletools.genops(stream):  # reads up to the record's STOP, runs nothing
            pass
        records.append(raw[start:stream.tell()])
        start = stream.tell()
    return records, raw[start:]


def legacy_with_record(obj: Any, record: str, replacement: bytes) -> bytes:
    """``obj`` in torch's legacy format with one record around it replaced."""
    records, data = legacy_records(obj)
    index = {"magic": 0, "protocol": 1, "sys_info": 2, "object": 3, "storage_keys": 4}[record]
    records[index] = replacement
    return b"".join(records) + data


def legacy_with_object_pickle(obj_pickle: bytes) -> bytes:
    """A legacy-format file (no tensors) whose object record is ``obj_pickle``."""
    return legacy_with_record({}, "object", obj_pickle)


LAYOUTS: dict[str, Callable[[Path, Any], Path]] = {
    "plain-pickle": plain_pickle,
    "legacy": legacy,
    "legacy-nested": legacy_nested,
    "zip": zip_format,
    **{f"legacy-{record}": legacy_record(record) for record in LEGACY_RECORDS},
}


def hostile_file(folder: Path, layout: str, payload_name: str) -> tuple[Path, Path]:
    """Write a hostile file in ``folder``; return it and the marker it would create."""
    marker = folder / f"marker-{layout}-{payload_name}"
    path = folder / f"{layout}-{payload_name}.pt"
    LAYOUTS[layout](path, payload(payload_name, marker))
    return path, marker
