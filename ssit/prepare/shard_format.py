"""The on-disk shard format: what a shard directory holds and how to read it back.

The files of a shard directory that readers use (:func:`ssit.prepare.shards.write_shards` also
leaves ``skipped.csv`` and a ``.state/`` folder for resuming)::

    <dataset>-000000.tar   samples of consecutive members that share a key, in the order
                           <key>.cls (grade digit, only with labels), <key>.jpg (crop),
                           <key>.json (source, crop box, grade, ...), <key>.sal.png (saliency)
    <dataset>-000000.idx   DALI index of that tar for ``fn.readers.webdataset(index_paths=...)``,
                           format v1.2 as ``wds2idx`` writes it
    ...
    manifest.json          format version, shards in order with sample counts and sha256,
                           channel mean/std of the crops, grade counts, number skipped

A member's extension starts at the first dot of its file name, as WebDataset and DALI read it,
so sample keys hold no dots (nor whitespace, which would break the index). Readers refuse a
manifest whose ``format`` is not :data:`MANIFEST_FORMAT`. ``manifest.json`` is written last, so
a folder with the ``.state/`` folder of ``ssit shards`` but no manifest is unfinished: listing it
is refused (naming its tar files explicitly is not).
"""

from __future__ import annotations

import glob
import json
import re
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "MANIFEST_FORMAT",
    "STATE_DIR",
    "PrepareError",
    "iter_samples",
    "list_shards",
    "read_grade_member",
    "read_manifest",
    "recipe_name",
    "split_member_name",
    "write_dali_index",
]

MANIFEST_FORMAT = 1
_GRADE_MEMBER = re.compile(rb"[0-9]{1,6}\n?")
STATE_DIR = ".state"
"""The folder ``ssit shards`` keeps its resume records and lock in, from its first moment."""


def recipe_name(fast: bool) -> str:
    """The per-image recipe as recorded in the manifest and in each shard's identity; the
    ``--fast`` name changes whenever its output does, so a resumed run redoes older shards."""
    return "fast-2" if fast else "paper"


class PrepareError(ValueError):
    """A wrong argument or unusable input detected before any work starts."""


def read_manifest(shard_dir: str | Path) -> dict[str, Any]:
    """The ``manifest.json`` of a shard directory, checked to list files of that directory.

    Raises :class:`PrepareError` (one line) for a missing or unreadable manifest, another
    format, or a ``shards`` entry without a plain file name (no folders, ``..`` or absolute paths).
    """
    path = Path(shard_dir) / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise PrepareError(
            f"no manifest.json in {shard_dir} (not a finished shard directory)"
        ) from None
    except (OSError, ValueError) as error:
        raise PrepareError(f"cannot read {path}: {error}") from error
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise PrepareError(f"{path}: unsupported manifest format {found!r}")
    _check_manifest_shards(manifest, path)
    return manifest


def _check_manifest_shards(manifest: dict[str, Any], path: Path) -> None:
    """Refuse a manifest whose ``shards`` is not a list of entries naming files in its folder."""
    shards = manifest.get("shards")
    if not isinstance(shards, list):
        raise PrepareError(f"{path}: 'shards' must be a list of shard entries, got "
                           f"{type(shards).__name__ if 'shards' in manifest else 'nothing'}")
    for number, entry in enumerate(shards, start=1):
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name:
            raise PrepareError(f"{path}: shard entry {number} has no 'name'")
        if name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
            raise PrepareError(f"{path}: shard entry {number} names {name!r}, not a file in "
                               "the manifest's own folder")


def list_shards(spec: str | Path | Sequence[str | Path]) -> list[Path]:
    """Tar shards named by a directory, a glob pattern, a single tar or a list of tar paths.

    A directory with a manifest lists its shards in manifest order, otherwise its ``*.tar``
    files sorted by name. Raises :class:`PrepareError` when nothing is found, or when the
    directory is an unfinished ``ssit shards`` output (its shards would be only part of the data).
    """
    if isinstance(spec, (str, Path)):
        text = str(spec)
        path = Path(text)
        if path.is_dir():
            if (path / "manifest.json").is_file():
                shards = [path / s["name"] for s in read_manifest(path)["shards"]]
            elif (path / STATE_DIR).is_dir():
                raise PrepareError(
                    f"{path} is an unfinished `ssit shards` output (no manifest.json): re-run "
                    "`ssit shards` to finish it, or name its .tar files explicitly"
                )
            else:
                shards = sorted(path.glob("*.tar"))
            if not shards:
                raise PrepareError(f"no .tar shards in directory {path}")
        elif glob.has_magic(text):
            shards = [Path(p) for p in sorted(glob.glob(text))]
            if not shards:
                raise PrepareError(f"no shards match {text}")
        else:
            shards = [path]
    else:
        shards = [Path(p) for p in spec]
        if not shards:
            raise PrepareError("empty list of shards")
    missing = [str(p) for p in shards if not p.is_file()]
    if missing:
        raise PrepareError(f"shard not found: {missing[0]}")
    return shards


def read_grade_member(data: bytes, sample: str) -> int:
    """The grade a ``cls`` member holds: ASCII digits as :mod:`ssit.prepare.sample` writes
    them, optionally followed by one newline. Anything else (other digits, signs, spaces,
    decimals, text that is not UTF-8) raises :class:`PrepareError` naming ``sample``."""
    if _GRADE_MEMBER.fullmatch(data):
        return int(data)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise PrepareError(f"sample {sample}: its cls member is not UTF-8 text") from None
    raise PrepareError(f"sample {sample}: cls {text[:20]!r} is not a grade (ASCII digits only)")


def split_member_name(name: str) -> tuple[str, str]:
    """A tar member's sample key and extension.

    ``d/10_left.sal.png`` gives ``("d/10_left", "sal.png")``: the extension starts at the first
    dot of the file name, as WebDataset and DALI read it.
    """
    directory, _, base = name.rpartition("/")
    key, _, extension = base.partition(".")
    return (f"{directory}/{key}" if directory and key else key), extension


def write_dali_index(tar_path: str | Path, index_path: str | Path) -> int:
    """Write the DALI index (format v1.2, as made by ``wds2idx``) of a WebDataset tar.

    Each line lists one sample's members as ``extension offset size name``, with the offset of
    the member's data. Returns the number of samples.
    """
    samples: list[list[str]] = []
    last_key = None
    with tarfile.open(tar_path, "r:") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, extension = split_member_name(member.name)
            if not key or not extension:
                continue
            entry = f"{extension} {member.offset_data} {member.size} {member.name}"
            if key != last_key:
                samples.append([entry])
                last_key = key
            else:
                samples[-1].append(entry)
    if not samples:
        raise PrepareError(f"{tar_path} holds no samples")
    with open(index_path, "w") as handle:
        handle.write(f"v1.2 {len(samples)}\n")
        handle.writelines(" ".join(entries) + "\n" for entries in samples)
    return len(samples)


def iter_samples(shards: Iterable[str | Path]) -> Iterator[dict[str, Any]]:
    """Samples of tar shards as dicts ``{"__key__": key, extension: bytes, ...}``, in order."""
    for shard in shards:
        try:
            yield from _tar_samples(Path(shard))
        except tarfile.TarError as error:
            raise PrepareError(f"cannot read shard {shard}: {error}") from None


def _tar_samples(shard: Path) -> Iterator[dict[str, Any]]:
    with tarfile.open(shard, "r:") as tar:
        sample: dict[str, Any] = {}
        for member in tar:
            if not member.isfile():
                continue
            key, extension = split_member_name(member.name)
            if sample and sample["__key__"] != key:
                yield sample
                sample = {}
            sample["__key__"] = key
            handle = tar.extractfile(member)
            sample[extension] = handle.read() if handle else b""
        if sample:
            yield sample
