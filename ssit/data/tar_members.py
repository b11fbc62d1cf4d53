"""The tar member whose data starts at a given offset, read from the header just before it.

A tar member is a 512-byte header followed by its data, so the header of the member an index
entry points at sits at ``offset - 512``. Names too long for the header's 100-byte field are
carried by an extension header in front of it (GNU ``././@LongLink``, type ``L``, or a POSIX
pax header, type ``x``, with a ``path`` record); those are found by stepping back over the
extension's data blocks. Reading one header costs a 512-byte slice, never the member's data.
"""

from __future__ import annotations

import mmap
import tarfile
from typing import NamedTuple

BLOCK = tarfile.BLOCKSIZE
MAX_NAME_BLOCKS = 32
"""Longest extension header data looked for, in blocks (names up to 16 KiB)."""
_NAME_FIELD = 100
_EXTENSION_TYPES = (tarfile.GNUTYPE_LONGNAME, tarfile.XHDTYPE)


class TarMember(NamedTuple):
    """A member's full name and data size as its tar headers give them."""

    name: str
    size: int


def member_at(data: bytes | mmap.mmap, offset: int, expected: str | None = None
              ) -> TarMember | None:
    """The regular file member whose data starts at ``offset`` in tar bytes, or None.

    ``expected`` is the name the caller believes is there: when the header's own name differs
    (or may have been cut to 100 bytes), an extension header carrying the full name is looked
    for. None when no valid header of a regular file ends at ``offset``.
    """
    if offset < BLOCK or offset % BLOCK or offset > len(data):
        return None
    header = _header(data, offset - BLOCK)
    if header is None or not header.isreg():
        return None
    name = header.name
    # A cut name fills the field; a pax writer puts "?" for characters ustar cannot hold.
    shortened = len(name.encode("utf-8", "surrogateescape")) >= _NAME_FIELD - 1 or "?" in name
    if name != expected and (expected is not None or shortened):
        name = _extended_name(data, offset - BLOCK) or name
    return TarMember(name, header.size)


def _header(data: bytes | mmap.mmap, position: int) -> tarfile.TarInfo | None:
    if position < 0:
        return None
    try:
        return tarfile.TarInfo.frombuf(data[position : position + BLOCK], "utf-8",
                                       "surrogateescape")
    except tarfile.HeaderError:
        return None


def _extended_name(data: bytes | mmap.mmap, header_position: int) -> str | None:
    """The full name an extension header in front of the header at ``header_position`` gives."""
    for blocks in range(1, MAX_NAME_BLOCKS + 1):
        position = header_position - BLOCK * (blocks + 1)
        extension = _header(data, position)
        if extension is None or extension.type not in _EXTENSION_TYPES:
            continue
        if -(-extension.size // BLOCK) != blocks:
            continue
        payload = bytes(data[position + BLOCK : position + BLOCK + extension.size])
        if extension.type == tarfile.GNUTYPE_LONGNAME:
            return payload.rstrip(b"\0").decode("utf-8", "surrogateescape")
        return _pax_path(payload)
    return None


def _pax_path(payload: bytes) -> str | None:
    """The ``path`` record of a pax extended header (records ``<length> <key>=<value>\\n``)."""
    position = 0
    while position < len(payload):
        space = payload.find(b" ", position)
        if space < 0 or not payload[position:space].isdigit():
            return None
        length = int(payload[position:space])
        if length <= 0:
            return None
        record = payload[space + 1 : position + length].rstrip(b"\n")
        key, _, value = record.partition(b"=")
        if key == b"path":
            return value.decode("utf-8", "surrogateescape")
        position += length
    return None
