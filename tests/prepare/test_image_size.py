"""The pixel bound holds for the formats OpenCV decodes that Pillow does not identify."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from ssit.prepare.decode import BadImageError, load_image
from ssit.prepare.image_size import DEFAULT_MAX_PIXELS, header_size, oversize_reason

WIDTH, HEIGHT = 96, 80


def _float_image() -> np.ndarray:
    return np.random.default_rng(0).random((HEIGHT, WIDTH, 3)).astype(np.float32)


def _written(path: Path, ext: str, image: np.ndarray, *params: int) -> Path:
    """``image`` encoded by OpenCV as ``ext`` and saved under ``path`` (any name)."""
    ok, encoded = cv2.imencode(ext, image, list(params))
    assert ok
    path.write_bytes(encoded.tobytes())
    return path


def _patched(path: Path, old: bytes, new: bytes) -> Path:
    data = path.read_bytes()
    assert data.count(old) >= 1
    path.write_bytes(data.replace(old, new, 1))
    return path


def hdr(path: Path) -> Path:
    return _written(path, ".hdr", _float_image())


def pfm(path: Path) -> Path:
    return _written(path, ".pfm", _float_image())


def pam(path: Path) -> Path:
    return _written(path, ".pam", (_float_image() * 255).astype(np.uint8))


HEADERS = {  # format -> (writer, how the size appears in its header, with %d for w and h)
    "hdr": (hdr, b"-Y %d +X %d", True),
    "pfm": (pfm, b"%d %d", False),
    "pam": (pam, b"WIDTH %d\nHEIGHT %d", False),
}


@pytest.mark.parametrize("kind", sorted(HEADERS))
def test_size_is_read_from_the_header_of_formats_pillow_does_not_identify(tmp_path, kind):
    writer, _, _ = HEADERS[kind]
    path = writer(tmp_path / "photo.png")
    assert header_size(path) == (WIDTH, HEIGHT)
    assert header_size(path.read_bytes()) == (WIDTH, HEIGHT)
    assert oversize_reason(str(path), DEFAULT_MAX_PIXELS) is None
    assert "limit 0.001; see --max-pixels" in oversize_reason(str(path), 1000)


@pytest.mark.parametrize("kind", sorted(HEADERS))
def test_a_small_file_declaring_a_huge_image_is_refused_before_decoding(tmp_path, kind):
    writer, layout, height_first = HEADERS[kind]
    size = (HEIGHT, WIDTH) if height_first else (WIDTH, HEIGHT)
    huge = (20000, 15000) if height_first else (15000, 20000)
    path = _patched(writer(tmp_path / "photo.png"), layout % size, layout % huge)
    expected = ("image too large to decode (15000x20000 = 300 megapixels, limit 100; see "
                "--max-pixels)")
    assert oversize_reason(str(path), DEFAULT_MAX_PIXELS) == expected
    with pytest.raises(BadImageError, match=r"15000x20000 = 300 megapixels"):
        load_image(path, max_pixels=DEFAULT_MAX_PIXELS)


def test_a_size_that_cannot_be_read_cheaply_is_refused(tmp_path):
    path = hdr(tmp_path / "photo.png")
    data = path.read_bytes()
    path.write_bytes(data.replace(b"\n", b"\n#" + b" " * 70000 + b"\n", 1))
    assert cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_UNCHANGED
                        ).shape == (HEIGHT, WIDTH, 3)  # OpenCV still decodes it
    assert header_size(path) is None
    assert oversize_reason(str(path), DEFAULT_MAX_PIXELS).startswith(
        "image format whose size cannot be read before decoding it")


@pytest.mark.parametrize("params", [[cv2.IMWRITE_WEBP_QUALITY, 101],
                                    [cv2.IMWRITE_WEBP_QUALITY, 80]])
def test_webp_size_is_read_from_its_header(tmp_path, params):
    image = (_float_image() * 255).astype(np.uint8)
    path = _written(tmp_path / "photo.webp", ".webp", image, *params)
    assert header_size(path) == (WIDTH, HEIGHT)
    assert "limit 0.001" in oversize_reason(str(path), 1000)


def test_files_no_decoder_reads_are_left_to_the_decoder(tmp_path):
    path = tmp_path / "notes.png"
    path.write_bytes(b"not an image at all")
    assert header_size(path) is None
    assert oversize_reason(str(path), 1000) is None
    with pytest.raises(BadImageError, match="not a readable image file"):
        load_image(path, max_pixels=1000)


def test_names_that_are_not_utf8_are_checked_without_crashing_opencv(tmp_path):
    import os

    path = hdr(tmp_path / os.fsdecode(b"radi\xffance.png"))
    path.write_bytes(path.read_bytes().replace(b"\n", b"\n#" + b" " * 70000 + b"\n", 1))
    assert oversize_reason(str(path), DEFAULT_MAX_PIXELS).startswith(
        "image format whose size cannot be read before decoding it")
    empty = tmp_path / os.fsdecode(b"empty_\xff.png")
    empty.write_bytes(b"")
    assert oversize_reason(str(empty), DEFAULT_MAX_PIXELS) is None
