"""Refuse images too large to decode safely, from their header alone.

A small compressed file can declare an enormous image (a 1.5 MB 16000 x 16000 16-bit PNG
decodes to 1.5 GB and needs several times that while being converted), so the pixel count is
read from the header before anything is decoded: by Pillow (which opens files lazily), or, for
formats OpenCV decodes and Pillow does not identify, from their own headers (Radiance HDR, PFM,
PAM, WebP). A file OpenCV would decode whose size none of these gives is refused: its size
cannot be known without decoding it.
"""

from __future__ import annotations

import io
import os
import re
import struct
import warnings
from pathlib import Path

import cv2
from PIL import Image

__all__ = ["DEFAULT_MAX_PIXELS", "header_size", "oversize_reason"]

DEFAULT_MAX_PIXELS = 100_000_000
"""Fundus cameras give 5-25 megapixels; 100 leaves ample room and bounds a worker's memory."""

_HEAD_BYTES = 65536
_RADIANCE = (b"#?RADIANCE", b"#?RGBE")
_RADIANCE_SIZE = re.compile(rb"-Y +(\d+) +\+X +(\d+)")
_PFM = re.compile(rb"P[Ff]\s+(\d+)\s+(\d+)\s")
_PAM_FIELD = re.compile(rb"^(WIDTH|HEIGHT)\s+(\d+)\s*$", re.MULTILINE)


def header_size(source: str | Path | bytes) -> tuple[int, int] | None:
    """(width, height) as the header of a file (a path, or its bytes) declares it, or None.

    Reads at most the first 64 KiB and decodes no pixels. Raises Pillow's
    ``DecompressionBombError`` for a header beyond twice Pillow's own limit.
    """
    if isinstance(source, bytes):
        head = source[:_HEAD_BYTES]
    else:
        try:
            with open(source, "rb") as handle:
                head = handle.read(_HEAD_BYTES)
        except OSError:
            return None
    size = _text_header_size(head) or _webp_size(head)
    if size is not None:
        return size
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opened = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
            with opened as image:
                return image.size
    except Image.DecompressionBombError:
        raise
    except Exception:  # not an image Pillow can identify
        return None


def oversize_reason(path: str | Path, max_pixels: int, data: bytes | None = None) -> str | None:
    """Why ``path`` must not be decoded (over ``max_pixels`` pixels, or a size that cannot be
    read without decoding), or None. ``data``, when given, are the file's bytes.

    Files that neither Pillow nor OpenCV can read are let through: the decoder gives their
    reason.
    """
    try:
        size = header_size(path if data is None else data)
    except Image.DecompressionBombError:
        limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        return f"image too large to decode (over {limit} pixels, Pillow's own limit)"
    if size is None:
        if not _opencv_reads(path):
            return None
        return ("image format whose size cannot be read before decoding it (convert it to PNG "
                "or JPEG)")
    width, height = size
    if width * height <= max_pixels:
        return None
    return (
        f"image too large to decode ({width}x{height} = {width * height / 1e6:.0f} megapixels, "
        f"limit {max_pixels / 1e6:g}; see --max-pixels)"
    )


def _opencv_reads(path: str | Path) -> bool:
    """Whether OpenCV recognises the file's signature (True when it cannot tell)."""
    name = str(path)
    try:
        if os.path.getsize(name) == 0:
            return False
        name.encode("utf-8")
    except OSError:
        return False  # the decoder says why the file cannot be read
    except UnicodeEncodeError:  # OpenCV crashes on such names: ask about the open file instead
        if not os.path.isdir("/proc/self/fd"):
            return True
        try:
            with open(name, "rb") as handle:
                return bool(cv2.haveImageReader(f"/proc/self/fd/{handle.fileno()}"))
        except OSError:
            return False
    return bool(cv2.haveImageReader(name))


def _text_header_size(head: bytes) -> tuple[int, int] | None:
    """The size in a Radiance HDR, PFM or PAM text header."""
    if head.startswith(_RADIANCE):
        blank = head.find(b"\n\n")
        match = _RADIANCE_SIZE.match(head, blank + 2) if blank >= 0 else None
        return (int(match[2]), int(match[1])) if match else None
    match = _PFM.match(head)
    if match:
        return int(match[1]), int(match[2])
    if head.startswith(b"P7") and b"ENDHDR" in head:
        fields = dict(_PAM_FIELD.findall(head[: head.index(b"ENDHDR")]))
        if b"WIDTH" in fields and b"HEIGHT" in fields:
            return int(fields[b"WIDTH"]), int(fields[b"HEIGHT"])
    return None


def _webp_size(head: bytes) -> tuple[int, int] | None:
    """The canvas size of a WebP file (simple lossy, lossless or extended)."""
    if len(head) < 30 or head[:4] != b"RIFF" or head[8:12] != b"WEBP":
        return None
    chunk = head[12:16]
    if chunk == b"VP8X":
        width = int.from_bytes(head[24:27], "little") + 1
        return width, int.from_bytes(head[27:30], "little") + 1
    if chunk == b"VP8L" and head[20] == 0x2F:
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and head[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", head[26:30])
        return width & 0x3FFF, height & 0x3FFF
    return None
