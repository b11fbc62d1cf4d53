"""Synthetic graded fundus photographs, EyePACS-like, for demos and tests.

Each image is a fundus disc on a wide black canvas (aspect 1.3-1.5, sometimes clipped at the
top and bottom, like EyePACS), made either from the photograph scikit-image ships
(``skimage.data.retina()``, varied by rotation, mirroring, scale, colour and illumination) or by
a procedural generator (orange-red background with vignetting, optic disc, macula and a
branching vessel tree). Lesions are painted according to the grade: microaneurysms from grade 1,
haemorrhages and hard exudates from grade 2, cotton-wool spots now and then at grade 2 and always
from grade 3, and new vessels at grade 4, more of them as the grade rises. The same seed gives the
same bytes.
"""

from __future__ import annotations

import csv
import functools
import io
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from ssit.prepare.synth_lesions import RENDER_SIZE as _RENDER_SIZE
from ssit.prepare.synth_lesions import paint_lesions, to_pixels
from ssit.prepare.workers import available_cores, parallel_map

__all__ = [
    "EYEPACS_GRADE_FREQUENCIES",
    "EYEPACS_SIZES",
    "grade_counts",
    "parse_sizes",
    "synthesize",
]

logger = logging.getLogger(__name__)

EYEPACS_GRADE_FREQUENCIES = (0.735, 0.07, 0.15, 0.025, 0.02)
"""Approximate share of grades 0-4 in the EyePACS training set."""

EYEPACS_SIZES = ((2592, 1944), (2816, 1880), (3504, 2336), (3888, 2592), (4752, 3168),
                 (4928, 3264))
"""Common (width, height) of EyePACS photographs, 5 to 16 megapixels."""

_MIN_SIDE = 128
_RETINA_SHARE = 0.4  # fraction of images made from the scikit-image photograph
_JPEG_QUALITY = 95


def grade_counts(n: int, frequencies: Sequence[float] = EYEPACS_GRADE_FREQUENCIES) -> list[int]:
    """Split ``n`` images over the grades by largest remainder; every grade appears if n >= 5."""
    if n < 0:
        raise ValueError(f"number of images must be >= 0, got {n}")
    floor_counts = [math.floor(n * p) for p in frequencies]
    remainders = sorted(
        range(len(frequencies)), key=lambda g: (-(n * frequencies[g] - floor_counts[g]), g)
    )
    for grade in remainders[: n - sum(floor_counts)]:
        floor_counts[grade] += 1
    if n >= len(frequencies):
        for grade, count in enumerate(floor_counts):
            if count == 0:
                floor_counts[grade] = 1
                floor_counts[int(np.argmax(floor_counts))] -= 1
    return floor_counts


def synthesize(
    out_dir: str | Path,
    n: int,
    seed: int = 0,
    *,
    height_range: tuple[int, int] = (600, 1200),
    sizes: Sequence[tuple[int, int]] | None = None,
    jobs: int | None = None,
    progress: bool = True,
) -> Path:
    """Write ``n`` graded fundus JPEGs and an EyePACS-style ``labels.csv`` to ``out_dir``.

    Image heights are drawn from ``height_range`` (EyePACS photographs are about 1500-3500 px
    high) and widths are 1.3-1.5 times the height; ``sizes``, a list of (width, height), fixes
    the sizes instead: image i gets ``sizes[i % len(sizes)]``, so each size appears about
    equally often. Returns the path of ``labels.csv`` (header ``image,level``).
    """
    if n < 1:
        raise ValueError(f"number of images must be >= 1, got {n}")
    low, high = height_range
    if not _MIN_SIDE <= low <= high:
        raise ValueError(f"height range must satisfy 128 <= min <= max, got {low}..{high}")
    if sizes is not None:
        _check_sizes(sizes)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    grades = np.repeat(np.arange(5), grade_counts(n))
    rng.shuffle(grades)
    names = _eyepacs_names(n, rng, seed)
    tasks = [
        (str(out / f"{name}.jpeg"), int(grade), seed, index, (low, high),
         None if sizes is None else tuple(sizes[index % len(sizes)]))
        for index, (name, grade) in enumerate(zip(names, grades, strict=True))
    ]
    jobs = min(jobs or available_cores(), n)
    with tqdm(total=n, desc="synth", unit="img", disable=not progress) as bar:
        for _ in parallel_map(_write_one, tasks, jobs):
            bar.update()
    labels = out / "labels.csv"
    with labels.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["image", "level"])
        writer.writerows(zip(names, (int(g) for g in grades), strict=True))
    logger.info("wrote %d synthetic fundus images and %s", n, labels)
    return labels


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``"2592x1944,4928x3264"`` -> ``[(2592, 1944), (4928, 3264)]``, checked as
    :func:`synthesize` needs them; raises ValueError with a one-line reason."""
    sizes = []
    for part in text.split(","):
        width, sep, height = part.strip().lower().partition("x")
        if not (sep and width.isdigit() and height.isdigit()):
            raise ValueError(f"expected sizes like 2592x1944,4928x3264, got {part.strip()!r}")
        sizes.append((int(width), int(height)))
    _check_sizes(sizes)
    return sizes


def _check_sizes(sizes: Sequence[tuple[int, int]]) -> None:
    if not sizes:
        raise ValueError("sizes must name at least one WIDTHxHEIGHT")
    for width, height in sizes:
        if not _MIN_SIDE <= height <= width:
            raise ValueError(
                f"each size needs 128 <= height <= width (a landscape canvas), got "
                f"{width}x{height}"
            )


def _eyepacs_names(n: int, rng: np.random.Generator, seed: int) -> list[str]:
    """Names like ``10_left``, ``10_right``, ``13_left``: patients with both eyes."""
    names = []
    patient = 10 + 100_000 * seed  # sets made with other seeds never share a name
    while len(names) < n:
        names.extend([f"{patient}_left", f"{patient}_right"])
        patient += int(rng.integers(1, 6))
    return names[:n]


def _write_one(
    task: tuple[str, int, int, int, tuple[int, int], tuple[int, int] | None],
) -> None:
    path, grade, seed, index, (low, high), size = task
    rng = np.random.default_rng([seed, index])
    left_eye = path.endswith("_left.jpeg")
    if size is None:
        image = synthesize_image(rng, grade, height=int(rng.integers(low, high + 1)),
                                 left_eye=left_eye)
    else:
        image = synthesize_image(rng, grade, height=size[1], width=size[0], left_eye=left_eye)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=_JPEG_QUALITY)
    Path(path).write_bytes(buffer.getvalue())


def synthesize_image(
    rng: np.random.Generator, grade: int, *, height: int, width: int | None = None,
    left_eye: bool = True
) -> np.ndarray:
    """One EyePACS-like RGB uint8 photograph of the given grade on a wide black canvas
    (``width`` 1.3-1.5 times ``height`` unless given)."""
    if rng.random() < _RETINA_SHARE:
        fundus = _retina_fundus(rng, left_eye)
    else:
        fundus = _procedural_fundus(rng, left_eye)
    disc_centre = _disc_centre(left_eye)
    paint_lesions(fundus, rng, grade, disc_centre)
    return _compose(fundus, rng, height, width)


# ---------------------------------------------------------------- fundus backgrounds


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates normalised so that the fundus disc is the unit circle."""
    coords = (np.arange(size, dtype=np.float32) - (size - 1) / 2) / (size / 2)
    return coords[None, :], coords[:, None]


def _disc_centre(left_eye: bool) -> tuple[float, float]:
    """Optic disc position in unit-circle coordinates (nasal side, slightly above centre)."""
    return (-0.42 if left_eye else 0.42), -0.04


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: random values on a coarse grid, resized smoothly."""
    coarse = rng.uniform(-1, 1, (cells, cells)).astype(np.float32)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)


@functools.cache
def _retina_photograph() -> np.ndarray:
    from skimage import data

    photo = data.retina()
    return cv2.resize(photo, (_RENDER_SIZE, _RENDER_SIZE), interpolation=cv2.INTER_AREA)


def _retina_fundus(rng: np.random.Generator, left_eye: bool) -> np.ndarray:
    """The scikit-image photograph (a left eye) rotated, mirrored and recoloured; float RGB."""
    size = _RENDER_SIZE
    photo = _retina_photograph()
    if not left_eye:
        photo = photo[:, ::-1]
    angle = float(rng.uniform(-15, 15))
    matrix = cv2.getRotationMatrix2D(((size - 1) / 2, (size - 1) / 2), angle, 1.0)
    photo = cv2.warpAffine(photo, matrix, (size, size), flags=cv2.INTER_LINEAR)
    image = photo.astype(np.float32)
    x, y = _grid(size)
    gains = rng.uniform(0.8, 1.15, 3).astype(np.float32)
    direction = rng.uniform(0, 2 * np.pi)
    ramp = 1 + 0.2 * rng.uniform(0.3, 1.0) * (np.cos(direction) * x + np.sin(direction) * y)
    image *= gains * ramp[..., None]
    gamma = float(rng.uniform(0.85, 1.2))
    image = 255 * (np.clip(image, 0, 255) / 255) ** gamma
    image[x**2 + y**2 > 1] = 0
    return image


def _procedural_fundus(rng: np.random.Generator, left_eye: bool) -> np.ndarray:
    """Orange-red disc with vignetting, texture, optic disc, macula and vessels; float RGB."""
    size = _RENDER_SIZE
    x, y = _grid(size)
    radius2 = x**2 + y**2
    base = np.array(
        [rng.uniform(170, 225), rng.uniform(70, 110), rng.uniform(25, 50)], np.float32
    )
    texture = 1 + 0.06 * _smooth_noise(rng, size, 12) + 0.03 * _smooth_noise(rng, size, 40)
    vignette = 1 - 0.45 * np.clip(radius2, 0, 1) ** 1.6
    image = base * (texture * vignette)[..., None]

    disc_x, disc_y = _disc_centre(left_eye)
    macula_x = disc_x + (0.5 if left_eye else -0.5)
    macula = np.exp(-((x - macula_x) ** 2 + (y - disc_y - 0.03) ** 2) / (2 * 0.1**2))
    image *= (1 - 0.45 * macula)[..., None]

    vessels = np.zeros((size, size), np.float32)
    _draw_vessel_tree(vessels, rng, (disc_x, disc_y), left_eye)
    vessels = cv2.GaussianBlur(vessels, (0, 0), 1.0)
    vessel_colour = np.array([120, 25, 15], np.float32)
    image = image * (1 - 0.8 * vessels[..., None]) + vessel_colour * 0.8 * vessels[..., None]

    disc = np.exp(-((x - disc_x) ** 2 + (y - disc_y) ** 2) / (2 * 0.07**2))
    disc_colour = np.array([250, 215, 150], np.float32)
    image = image * (1 - 0.9 * disc[..., None]) + disc_colour * 0.9 * disc[..., None]
    image[radius2 > 1] = 0
    return image


def _draw_vessel_tree(
    canvas: np.ndarray, rng: np.random.Generator, origin: tuple[float, float], left_eye: bool
) -> None:
    """Four arcades leave the optic disc and branch as they run towards the periphery."""
    temporal = 0.0 if left_eye else np.pi
    for start_angle in (temporal - 0.9, temporal + 0.9, temporal + np.pi - 0.7,
                        temporal + np.pi + 0.7):
        _draw_branch(canvas, rng, origin, start_angle + rng.uniform(-0.2, 0.2), 7.0, 0)


def _draw_branch(
    canvas: np.ndarray,
    rng: np.random.Generator,
    start: tuple[float, float],
    angle: float,
    width: float,
    depth: int,
) -> None:
    point = start
    step = 0.04
    curl = rng.uniform(-0.08, 0.08)
    for _ in range(int(rng.integers(10, 22))):
        angle += curl + rng.normal(0, 0.12)
        nxt = (point[0] + step * np.cos(angle), point[1] + step * np.sin(angle))
        if nxt[0] ** 2 + nxt[1] ** 2 > 0.97:
            return
        cv2.line(canvas, to_pixels(point), to_pixels(nxt), 1.0, max(1, round(width)),
                 cv2.LINE_AA)
        point = nxt
        if depth < 4 and width > 1.5 and rng.random() < 0.18:
            side = 1 if rng.random() < 0.5 else -1
            _draw_branch(canvas, rng, point, angle + side * rng.uniform(0.4, 0.9),
                         width * 0.65, depth + 1)
            width *= 0.9


# ---------------------------------------------------------------- canvas


def _compose(fundus: np.ndarray, rng: np.random.Generator, height: int,
             width: int | None) -> np.ndarray:
    """Place the fundus on a black EyePACS-like canvas, with sensor noise and a dark border."""
    if width is None:
        width = round(height * rng.uniform(1.3, 1.5))
    diameter = round(height * rng.uniform(0.92, 1.12))
    disc = cv2.resize(np.clip(fundus, 0, 255).astype(np.uint8), (diameter, diameter),
                      interpolation=cv2.INTER_AREA if diameter < _RENDER_SIZE else cv2.INTER_CUBIC)
    canvas = np.zeros((height, width, 3), np.uint8)
    cx = width // 2 + int(rng.integers(-width // 40, width // 40 + 1))
    cy = height // 2 + int(rng.integers(-height // 40, height // 40 + 1))
    x0, y0 = cx - diameter // 2, cy - diameter // 2
    src_x0, src_y0 = max(0, -x0), max(0, -y0)
    dst_x0, dst_y0 = max(0, x0), max(0, y0)
    dst_x1, dst_y1 = min(width, x0 + diameter), min(height, y0 + diameter)
    canvas[dst_y0:dst_y1, dst_x0:dst_x1] = disc[
        src_y0 : src_y0 + dst_y1 - dst_y0, src_x0 : src_x0 + dst_x1 - dst_x0
    ]
    # Sensor grain at full resolution (it is what makes real photographs large as JPEGs) and
    # a faint background level in the black border.
    grain = rng.integers(-3, 4, (height, width, 1), dtype=np.int16)
    level = int(rng.integers(1, 5))
    return np.clip(canvas.astype(np.int16) + grain + level, 0, 255).astype(np.uint8)
