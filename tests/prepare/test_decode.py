from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from ssit.prepare.decode import BadImageError, load_image


def gradient_image(width: int, height: int) -> np.ndarray:
    """Smooth RGB test picture: red ramps left to right, green top to bottom, blue constant."""
    xx = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    yy = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    return np.stack([xx, yy, np.full_like(xx, 90)], axis=2).astype(np.uint8)


def save_pil(image: Image.Image, path: Path, **options) -> Path:
    image.save(path, **options)
    return path


def test_rgb_jpeg_decodes_unchanged(tmp_path):
    rgb = gradient_image(300, 200)
    path = save_pil(Image.fromarray(rgb), tmp_path / "a.jpeg", quality=98)
    decoded = load_image(path)
    assert decoded.original_size == (300, 200)
    assert decoded.scale == 1
    assert decoded.converted is None
    assert decoded.rgb.shape == (200, 300, 3)
    assert np.abs(decoded.rgb.astype(int) - rgb).mean() < 2


@pytest.mark.parametrize(
    ("size", "target", "scale"),
    [((2600, 1950), 512, 2), ((4000, 3000), 512, 4), ((1700, 1300), 128, 8),
     ((1200, 700), 512, 1)],
)
def test_large_jpegs_decode_at_reduced_scale_keeping_enough_pixels(tmp_path, size, target,
                                                                   scale):
    small = Image.fromarray(gradient_image(size[0] // 10, size[1] // 10))
    path = save_pil(small.resize(size, Image.BILINEAR), tmp_path / "big.jpg", quality=80)
    decoded = load_image(path, target=target)
    assert decoded.scale == scale
    assert decoded.original_size == size
    # the crop (at least 0.8 of the shorter side) must still have `target` pixels
    assert 0.8 * min(decoded.rgb.shape[:2]) >= min(target, 0.8 * min(size))
    assert decoded.rgb.shape[:2] == (-(-size[1] // scale), -(-size[0] // scale))
    full = load_image(path, target=None)
    assert full.scale == 1 and full.rgb.shape[:2] == size[::-1]


def test_empty_file(tmp_path):
    (tmp_path / "empty.jpeg").write_bytes(b"")
    with pytest.raises(BadImageError, match="empty file"):
        load_image(tmp_path / "empty.jpeg")


def test_truncated_jpeg(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(gradient_image(400, 300)).save(buffer, "JPEG", quality=90)
    (tmp_path / "cut.jpeg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(BadImageError, match="truncated or corrupt JPEG"):
        load_image(tmp_path / "cut.jpeg")


def test_text_file_with_an_image_name(tmp_path):
    (tmp_path / "notes.jpeg").write_text("patient 10, left eye: retake\n")
    with pytest.raises(BadImageError, match="not a readable image"):
        load_image(tmp_path / "notes.jpeg")


def test_missing_file(tmp_path):
    with pytest.raises(BadImageError, match="cannot read file"):
        load_image(tmp_path / "nowhere.jpeg")


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_colour_is_scaled_to_8_bit(tmp_path, suffix):
    rgb = gradient_image(200, 120)
    deep = rgb.astype(np.uint16) * 257  # 255 -> 65535
    path = tmp_path / f"deep{suffix}"
    assert cv2.imwrite(str(path), cv2.cvtColor(deep, cv2.COLOR_RGB2BGR))
    decoded = load_image(path)
    assert decoded.converted == "16-bit -> 8-bit"
    assert np.array_equal(decoded.rgb, rgb)


def test_16_bit_grayscale_png(tmp_path):
    gray = (np.arange(256, dtype=np.uint16)[None, :].repeat(80, 0) * 257)
    path = tmp_path / "gray16.png"
    assert cv2.imwrite(str(path), gray)
    decoded = load_image(path)
    assert decoded.converted == "16-bit -> 8-bit, grayscale -> RGB"
    assert np.array_equal(decoded.rgb[..., 0], np.arange(256)[None, :].repeat(80, 0))
    assert np.array_equal(decoded.rgb[..., 0], decoded.rgb[..., 2])


@pytest.mark.parametrize("suffix", [".jpeg", ".png"])
def test_grayscale_becomes_rgb(tmp_path, suffix):
    gray = gradient_image(200, 120)[..., 0]
    path = save_pil(Image.fromarray(gray, "L"), tmp_path / f"gray{suffix}")
    decoded = load_image(path)
    assert decoded.converted == "grayscale -> RGB"
    assert decoded.rgb.shape == (120, 200, 3)
    assert np.abs(decoded.rgb[..., 1].astype(int) - gray).mean() < 2


def test_cmyk_jpeg_becomes_rgb_with_the_right_colours(tmp_path):
    rgb = gradient_image(200, 120)
    path = save_pil(Image.fromarray(rgb).convert("CMYK"), tmp_path / "print.jpeg", quality=98)
    decoded = load_image(path)
    assert decoded.converted == "CMYK -> RGB"
    assert np.abs(decoded.rgb.astype(int) - rgb).mean() < 4


def test_rgba_png_is_composited_on_black(tmp_path):
    rgba = np.zeros((100, 160, 4), np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[:, :80, 3] = 255
    rgba[:, 80:, 3] = 0  # transparent half
    path = save_pil(Image.fromarray(rgba, "RGBA"), tmp_path / "alpha.png")
    decoded = load_image(path)
    assert decoded.converted == "RGBA -> RGB (alpha composited on black)"
    assert tuple(decoded.rgb[50, 10]) == (200, 100, 50)
    assert tuple(decoded.rgb[50, 150]) == (0, 0, 0)


def test_palette_png_becomes_rgb(tmp_path):
    rgb = gradient_image(160, 100)
    path = save_pil(Image.fromarray(rgb).convert("P"), tmp_path / "palette.png")
    decoded = load_image(path)
    assert decoded.rgb.shape == (100, 160, 3)


@pytest.mark.parametrize("size", [(50, 40), (800, 60)])
def test_images_too_small_to_crop(tmp_path, size):
    path = save_pil(Image.fromarray(gradient_image(*size)), tmp_path / "tiny.jpeg")
    with pytest.raises(BadImageError, match="too small to crop"):
        load_image(path)


def test_tiny_png_is_also_too_small(tmp_path):
    path = save_pil(Image.fromarray(gradient_image(30, 30)), tmp_path / "tiny.png")
    with pytest.raises(BadImageError, match="too small to crop"):
        load_image(path)
