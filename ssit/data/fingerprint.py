"""A short fingerprint of the shards a run reads, so a resumed run can tell it has other data.

Shard folders written by ``ssit shards`` record each tar's sha256 in ``manifest.json``; the
fingerprint hashes those checksums with the tar names, in reading order, so it costs one small
file read per folder and never re-hashes a tar. Tars without a manifest entry stand in with the
sha256 of their DALI index (offsets, sizes and member names of every sample) and their size.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ssit.data.shard_index import index_path_for, resolve_shards
from ssit.prepare.shard_format import PrepareError, read_manifest

__all__ = ["shard_fingerprint"]


def shard_fingerprint(spec: str | Path | Sequence[str | Path]) -> dict[str, str]:
    """``{"digest": <sha256 hex>, "source": <where the checksums came from>}`` for the shards
    named by ``spec`` (a folder, glob, tar or list of tars, as the pipeline reads them)."""
    tars = resolve_shards(spec)
    checksums: dict[Path, dict[str, str]] = {}
    sources: dict[str, list[str]] = {}
    lines = []
    for tar in tars:
        folder = tar.parent
        if folder not in checksums:
            checksums[folder] = _manifest_checksums(folder)
        checksum = checksums[folder].get(tar.name)
        if checksum is None:
            checksum = _index_checksum(tar)
            sources.setdefault(f"index files in {folder}", []).append(tar.name)
        else:
            sources.setdefault(f"manifest.json of {folder}", []).append(tar.name)
        lines.append(f"{tar.name} {checksum}\n")
    digest = hashlib.sha256("".join(lines).encode("utf-8", "surrogateescape")).hexdigest()
    source = "; ".join(f"{where} ({len(names)} shard{'s' * (len(names) != 1)})"
                       for where, names in sources.items())
    return {"digest": digest, "source": source}


def _manifest_checksums(folder: Path) -> dict[str, str]:
    """Tar name -> sha256 as the folder's manifest records it (empty without a manifest)."""
    if not (folder / "manifest.json").is_file():
        return {}
    try:
        manifest: dict[str, Any] = read_manifest(folder)
    except PrepareError:
        return {}
    return {entry["name"]: entry["sha256"] for entry in manifest["shards"]
            if isinstance(entry.get("sha256"), str) and entry["sha256"]}


def _index_checksum(tar: Path) -> str:
    index = index_path_for(tar)
    digest = hashlib.sha256(index.read_bytes() if index.is_file() else b"")
    digest.update(str(tar.stat().st_size).encode())
    return "index:" + digest.hexdigest()
