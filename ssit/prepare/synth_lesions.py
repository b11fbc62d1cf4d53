"""Diabetic-retinopathy lesions painted onto a synthetic fundus, by grade.

Counts follow the international clinical DR scale and sizes those of real photographs: a
45-degree field painted at :data:`RENDER_SIZE` pixels across is about 16 micrometres per pixel,
and the optic disc about 110 px across.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["RENDER_SIZE", "paint_lesions", "to_pixels"]

RENDER_SIZE = 768  # the fundus is painted at this diameter, then resized to its final size


@dataclass(frozen=True)
class _Lesions:
    """(min, max) number of each lesion kind in one image of a grade; ``laser_scars`` is the
    chance that a proliferative eye has had panretinal photocoagulation."""

    microaneurysms: tuple[int, int]
    dot_blot: tuple[int, int]
    flame: tuple[int, int]
    exudate_clusters: tuple[int, int]
    cotton_wool: tuple[int, int]
    new_vessels: tuple[int, int]
    laser_scars: float = 0.0


# Counts follow the international clinical DR scale: mild = microaneurysms only; moderate =
# more than that (a few haemorrhages, exudates, now and then a cotton-wool spot); severe =
# many haemorrhages in every quadrant (the 4-2-1 rule) with exudates and cotton-wool spots;
# proliferative = new vessels at the disc or elsewhere, often with laser scars.
_LESIONS_BY_GRADE = (
    _Lesions((0, 0), (0, 0), (0, 0), (0, 0), (0, 0), (0, 0)),
    _Lesions((2, 10), (0, 0), (0, 0), (0, 0), (0, 0), (0, 0)),
    _Lesions((8, 25), (3, 12), (0, 3), (1, 4), (0, 2), (0, 0)),
    _Lesions((15, 40), (25, 60), (3, 8), (2, 6), (2, 6), (0, 0)),
    _Lesions((15, 40), (15, 50), (2, 8), (2, 6), (1, 5), (1, 3), laser_scars=0.5),
)

# Lesion sizes in pixels of the RENDER_SIZE rendering.
_MICROANEURYSM_RADIUS = (2, 4)  # 30-120 micrometres
_BLOT_RADIUS = (4, 16)  # dot to blot haemorrhages, up to about a third of the disc diameter
_FLAME_LENGTH = (25, 55)  # splinter haemorrhages along the nerve fibres
_EXUDATE_CLUSTER_RADIUS = (12, 45)  # clusters and partial rings of hard exudates
_COTTON_WOOL_RADIUS = (10, 22)
_LASER_SCAR_RADIUS = (7, 12)


def to_pixels(point: tuple[float, float]) -> tuple[int, int]:
    """Unit-circle coordinates to pixel coordinates of the rendering."""
    half = RENDER_SIZE / 2
    return round(point[0] * half + half), round(point[1] * half + half)


def _lesion_sites(
    rng: np.random.Generator, count: int, disc: tuple[float, float], spread: float = 0.8
) -> list[tuple[int, int]]:
    """Random points inside the fundus, away from the optic disc."""
    sites: list[tuple[int, int]] = []
    while len(sites) < count:
        r = spread * math.sqrt(rng.random())
        theta = rng.uniform(0, 2 * np.pi)
        point = (r * math.cos(theta), r * math.sin(theta))
        if (point[0] - disc[0]) ** 2 + (point[1] - disc[1]) ** 2 > 0.15**2:
            sites.append(to_pixels(point))
    return sites


def _blend(image: np.ndarray, mask: np.ndarray, colour: Sequence[float], strength: float) -> None:
    alpha = (strength * mask)[..., None]
    image *= 1 - alpha
    image += alpha * np.asarray(colour, np.float32)


def paint_lesions(
    image: np.ndarray, rng: np.random.Generator, grade: int, disc: tuple[float, float]
) -> None:
    """Paint the lesions of ``grade`` in place onto the float RGB fundus ``image``, away from
    the optic disc at ``disc`` (unit-circle coordinates)."""
    plan = _LESIONS_BY_GRADE[grade]
    size = image.shape[0]

    def count(bounds: tuple[int, int]) -> int:
        return int(rng.integers(bounds[0], bounds[1] + 1))

    def radius(bounds: tuple[int, int]) -> int:
        return int(rng.integers(bounds[0], bounds[1] + 1))

    if plan.laser_scars and rng.random() < plan.laser_scars:
        _paint_laser_scars(image, rng, disc)
    dark = np.zeros((size, size), np.float32)
    for centre in _lesion_sites(rng, count(plan.microaneurysms), disc):
        cv2.circle(dark, centre, radius(_MICROANEURYSM_RADIUS), 1.0, -1, cv2.LINE_AA)
    for centre in _lesion_sites(rng, count(plan.dot_blot), disc, spread=0.9):
        r = radius(_BLOT_RADIUS)
        axes = (r, max(2, round(r * rng.uniform(0.6, 1.0))))
        cv2.ellipse(dark, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1, cv2.LINE_AA)
    for centre in _lesion_sites(rng, count(plan.flame), disc, spread=0.7):
        _draw_flame(dark, rng, centre, disc)
    for _ in range(count(plan.new_vessels)):
        _draw_new_vessels(dark, rng, disc)
    if dark.any():
        _blend(image, cv2.GaussianBlur(dark, (0, 0), 1.2), (115, 18, 10), 0.8)

    bright = np.zeros((size, size), np.float32)
    for centre in _lesion_sites(rng, count(plan.exudate_clusters), disc, spread=0.6):
        _draw_exudate_cluster(bright, rng, centre, radius(_EXUDATE_CLUSTER_RADIUS))
    if bright.any():
        _blend(image, cv2.GaussianBlur(bright, (0, 0), 0.8), (245, 230, 140), 0.9)

    fluffy = np.zeros((size, size), np.float32)
    for centre in _lesion_sites(rng, count(plan.cotton_wool), disc, spread=0.55):
        r = radius(_COTTON_WOOL_RADIUS)
        axes = (r, max(4, round(r * rng.uniform(0.6, 0.9))))
        cv2.ellipse(fluffy, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
    if fluffy.any():
        _blend(image, cv2.GaussianBlur(fluffy, (0, 0), 4.0), (235, 215, 190), 0.75)


def _draw_flame(canvas: np.ndarray, rng: np.random.Generator, centre: tuple[int, int],
                disc: tuple[float, float]) -> None:
    """A splinter haemorrhage: a narrow streak pointing at the optic disc (nerve fibre layer)."""
    disc_x, disc_y = to_pixels(disc)
    angle = math.degrees(math.atan2(centre[1] - disc_y, centre[0] - disc_x))
    length = int(rng.integers(_FLAME_LENGTH[0], _FLAME_LENGTH[1] + 1))
    axes = (length // 2, max(3, round(length * rng.uniform(0.12, 0.2))))
    cv2.ellipse(canvas, centre, axes, angle + float(rng.normal(0, 10)), 0, 360, 1.0, -1,
                cv2.LINE_AA)


def _draw_exudate_cluster(canvas: np.ndarray, rng: np.random.Generator, centre: tuple[int, int],
                          radius: int) -> None:
    """Hard exudates: many small waxy dots in a patch or a partial (circinate) ring."""
    ring = rng.random() < 0.4
    for _ in range(int(rng.integers(6, 26))):
        if ring:
            theta = rng.uniform(0, 1.5 * np.pi)
            distance = radius * rng.uniform(0.8, 1.1)
        else:
            theta = rng.uniform(0, 2 * np.pi)
            distance = radius * math.sqrt(rng.random())
        point = (int(centre[0] + distance * math.cos(theta)),
                 int(centre[1] + distance * math.sin(theta)))
        cv2.circle(canvas, point, int(rng.integers(2, 6)), 1.0, -1, cv2.LINE_AA)


def _paint_laser_scars(image: np.ndarray, rng: np.random.Generator,
                       disc: tuple[float, float]) -> None:
    """Panretinal photocoagulation: rows of pale round burns with pigmented rims outside the
    vascular arcades."""
    size = image.shape[0]
    pale = np.zeros((size, size), np.float32)
    pigment = np.zeros((size, size), np.float32)
    sites = _lesion_sites(rng, int(rng.integers(60, 160)), disc, spread=0.95)
    for x, y in sites:
        u, v = (x - size / 2) / (size / 2), (y - size / 2) / (size / 2)
        if u * u + v * v < 0.55**2:
            continue
        r = int(rng.integers(_LASER_SCAR_RADIUS[0], _LASER_SCAR_RADIUS[1] + 1))
        cv2.circle(pigment, (x, y), r + 2, 1.0, 2, cv2.LINE_AA)
        cv2.circle(pale, (x, y), r, 1.0, -1, cv2.LINE_AA)
    _blend(image, cv2.GaussianBlur(pale, (0, 0), 1.5), (225, 200, 160), 0.6)
    _blend(image, cv2.GaussianBlur(pigment, (0, 0), 1.0), (60, 35, 25), 0.5)


def _draw_new_vessels(canvas: np.ndarray, rng: np.random.Generator, disc: tuple[float, float]
                      ) -> None:
    """A tangle of fine tortuous vessels at the optic disc or elsewhere (proliferative disease)."""
    if rng.random() < 0.6:
        point = (disc[0] + rng.uniform(-0.12, 0.12), disc[1] + rng.uniform(-0.12, 0.12))
    else:
        r, theta = rng.uniform(0.3, 0.75), rng.uniform(0, 2 * np.pi)
        point = (r * math.cos(theta), r * math.sin(theta))
    start = point
    for _ in range(int(rng.integers(4, 8))):
        point, angle = start, rng.uniform(0, 2 * np.pi)
        for _ in range(int(rng.integers(10, 25))):
            angle += rng.normal(0, 0.7)
            nxt = (point[0] + 0.015 * np.cos(angle), point[1] + 0.015 * np.sin(angle))
            cv2.line(canvas, to_pixels(point), to_pixels(nxt), 1.0, int(rng.integers(1, 3)),
                     cv2.LINE_AA)
            point = nxt
