"""The view augmentations, measured on pipeline outputs from purpose-built shards."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.view_geometry import blob_samples, map_correlations
from ssit.data import (
    VIEW1,
    VIEW2,
    AugmentationConfigError,
    PretrainPipeline,
    ViewAugmentation,
    ViewSpec,
)

# Identity normalisation, so outputs are pixel / 255.
UNIT = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
NO_PIXEL_OPS = {"jitter_p": 0.0, "grayscale_p": 0.0, "blur_p": 0.0, "solarize_p": 0.0}
NO_GEOMETRY = {"rotation_p": 0.0, "hflip_p": 0.0, "vflip_p": 0.0}


def run_views(
    shards: Path,
    batches: int,
    batch_size: int,
    view1: ViewAugmentation = VIEW1,
    view2: ViewAugmentation = VIEW2,
    **kwargs: object,
) -> list[np.ndarray]:
    """x1, x2, m1, m2 of a two-view recipe with maps, `batches` batches concatenated, as numpy."""
    views = (ViewSpec(view1, with_map=True), ViewSpec(view2, with_map=True))
    kwargs = {"device": "cpu", "num_threads": 1, **UNIT, "views": views, **kwargs}
    pipe = PretrainPipeline(shards, batch_size, **kwargs)  # type: ignore[arg-type]
    out: list[list[torch.Tensor]] = [[], [], [], []]
    while sum(len(x) for x in out[0]) < batches * batch_size:
        for batch in pipe:
            for store, tensor in zip(out, [*batch.images, *batch.maps], strict=True):
                store.append(tensor.clone())
            if sum(len(x) for x in out[0]) >= batches * batch_size:
                break
    return [torch.cat(store)[: batches * batch_size].numpy() for store in out]


def test_spec_defaults() -> None:
    assert VIEW1.crop_scale == (0.08, 0.8) and VIEW2.crop_scale == (0.8, 1.0)
    assert VIEW1.blur_p == 1.0 and VIEW2.blur_p == 0.1
    assert VIEW1.solarize_p == 0.0 and VIEW2.solarize_p == 0.2
    for view in (VIEW1, VIEW2):
        assert view.crop_ratio == pytest.approx((3 / 4, 4 / 3))
        assert (view.jitter_p, view.grayscale_p, view.rotation_p) == (0.8, 0.2, 0.8)
        assert (view.brightness, view.contrast, view.saturation, view.hue) == (0.4, 0.4, 0.2, 0.1)
        assert view.blur_sigma == (0.1, 2.0) and view.rotation_degrees == 180.0
        assert (view.hflip_p, view.vflip_p, view.solarize_threshold) == (0.5, 0.5, 128)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"blur_p": 1.5}, "blur_p"),
        ({"solarize_p": -0.1}, "solarize_p"),
        ({"crop_scale": (0.9, 0.5)}, "crop_scale"),
        ({"crop_scale": (0.0, 0.5)}, "crop_scale"),
        ({"crop_ratio": (2.0, 1.0)}, "crop_ratio"),
        ({"blur_sigma": (0.0, 1.0)}, "blur_sigma"),
        ({"brightness": 1.0}, "brightness"),
        ({"hue": 0.6}, "hue"),
        ({"solarize_threshold": 300}, "solarize_threshold"),
    ],
)
def test_bad_parameters_are_rejected(change: dict, message: str) -> None:
    with pytest.raises(AugmentationConfigError, match=message):
        replace(VIEW2, **change)


# ---------------------------------------------------------------- crop areas


@pytest.fixture(scope="module")
def coordinate_shards(tmp_path_factory: pytest.TempPathFactory, shard_writer) -> Path:
    """256x256 images whose red value is the column and green value the row."""
    cols, rows = np.meshgrid(np.arange(256, dtype=np.uint8), np.arange(256, dtype=np.uint8))
    image = np.stack([cols, rows, np.zeros_like(cols)], axis=-1)
    samples = [(f"c{k:03d}", image, rows.copy()) for k in range(32)]
    return shard_writer(tmp_path_factory.mktemp("coordinates"), [samples])


def crop_windows(views: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Area fraction and aspect ratio of each crop window, recovered from the coordinate ramps.

    The output pixel i samples the source at x0 + (i + 0.5) w / size, where the ramp reads
    x - 0.5; a line fitted to the interior of the middle row / column gives x0 and w.
    """
    interior = np.arange(2, size - 2)
    areas, ratios = [], []
    for view in views * 255.0:
        w_slope = np.polyfit(interior, view[0, size // 2, interior], 1)[0]
        h_slope = np.polyfit(interior, view[1, interior, size // 2], 1)[0]
        width, height = w_slope * size, h_slope * size
        areas.append(width * height / 256**2)
        ratios.append(width / height)
    return np.array(areas), np.array(ratios)


def test_crop_areas_measured(coordinate_shards: Path) -> None:
    size = 48
    views = {
        "view1": replace(VIEW1, **NO_PIXEL_OPS, **NO_GEOMETRY),
        "view2": replace(VIEW2, **NO_PIXEL_OPS, **NO_GEOMETRY),
    }
    x1, x2, _, _ = run_views(
        coordinate_shards, 8, 32, img_size=size, view1=views["view1"], view2=views["view2"]
    )
    for x, (lo, hi) in ((x1, VIEW1.crop_scale), (x2, VIEW2.crop_scale)):
        areas, ratios = crop_windows(x, size)
        assert areas.min() >= lo * 0.97 and areas.max() <= hi * 1.03, (areas.min(), areas.max())
        assert ratios.min() >= 0.75 * 0.97 and ratios.max() <= 4 / 3 * 1.03
        # the draws spread over the range rather than sitting at one value
        assert areas.max() - areas.min() > 0.5 * (hi - lo)
    assert np.median(crop_windows(x1, size)[0]) < 0.6 < np.median(crop_windows(x2, size)[0])


# ---------------------------------------------------------------- geometry


@pytest.fixture(scope="module")
def blob_shards(tmp_path_factory: pytest.TempPathFactory, shard_writer) -> Path:
    """Images drawn from their own map: a few discs of value 100 on black, grey in RGB."""
    samples = blob_samples()
    return shard_writer(tmp_path_factory.mktemp("blobs"), [samples[:24], samples[24:]])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_image_and_map_share_the_geometry(blob_shards: Path, seed: int) -> None:
    """All augmentations on: each view still lines up with its own map, not another's."""
    x1, x2, m1, m2 = run_views(blob_shards, 2, 24, img_size=48, seed=seed)
    for x, m, other in ((x1, m1, m2), (x2, m2, m1)):
        own = map_correlations(x, m)
        valid = ~np.isnan(own)
        assert valid.mean() > 0.9
        assert np.nanmin(own) > 0.6, np.nanmin(own)
        assert np.nanmean(own) > 0.9
        # the same measure on the other view's map, or on another sample's, falls apart
        assert np.nanmean(map_correlations(x, other)) < 0.6
        assert np.nanmean(map_correlations(x, np.roll(m, 1, axis=0))) < 0.5


def test_rotation_and_flips_move_the_content(blob_shards: Path) -> None:
    """With crop and pixel ops neutral, rotation/flips change the map (and only those)."""
    still = replace(VIEW2, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), **NO_PIXEL_OPS)
    fixed = replace(still, **NO_GEOMETRY)
    _, moved, _, moved_map = run_views(blob_shards, 1, 24, img_size=48, view1=fixed, view2=still)
    _, plain, _, plain_map = run_views(blob_shards, 1, 24, img_size=48, view1=fixed, view2=fixed)
    changed = [not np.allclose(a, b, atol=0.02) for a, b in zip(moved_map, plain_map, strict=True)]
    assert 0.75 < np.mean(changed) <= 1.0  # P(no rotation, no flip) = 0.2 * 0.25 = 0.05
    assert np.nanmin(map_correlations(moved, moved_map)) > 0.9
    # un-augmented image and map are the image drawn from its map
    assert np.allclose(plain.mean(axis=1) * 2, plain_map[:, 0], atol=0.03)


# ---------------------------------------------------------------- frequencies


@pytest.fixture(scope="module")
def colour_shards(tmp_path_factory: pytest.TempPathFactory, shard_writer) -> Path:
    """Flat orange images (250, 150, 60): luma 170, so grey stays above 128 until solarized."""
    image = np.empty((48, 48, 3), np.uint8)
    image[:] = (250, 150, 60)
    saliency = np.full((48, 48), 255, np.uint8)
    samples = [(f"o{k:03d}", image, saliency) for k in range(50)]
    return shard_writer(tmp_path_factory.mktemp("colour"), [samples])


def test_grayscale_and_solarize_frequencies(colour_shards: Path) -> None:
    view1 = replace(VIEW1, jitter_p=0.0)
    view2 = replace(VIEW2, jitter_p=0.0)
    x1, x2, _, _ = run_views(colour_shards, 10, 40, img_size=16, view1=view1, view2=view2)
    n = len(x1)
    assert n == 400
    for x, solarize_p in ((x1, 0.0), (x2, 0.2)):
        centre = x[:, :, 6:10, 6:10].mean(axis=(2, 3)) * 255  # inside any rotation
        grey = (centre.max(axis=1) - centre.min(axis=1)) < 3
        solarized = centre.mean(axis=1) < 128
        assert abs(grey.mean() - 0.2) < 0.07, grey.mean()
        assert abs(solarized.mean() - solarize_p) < 0.07, solarized.mean()
    assert not (x1[:, :, 6:10, 6:10].mean(axis=(1, 2, 3)) * 255 < 128).any()


def test_probability_one_and_zero_isolate_operations(colour_shards: Path) -> None:
    always = replace(
        VIEW2, jitter_p=0.0, grayscale_p=1.0, solarize_p=1.0, blur_p=0.0, **NO_GEOMETRY
    )
    never = replace(VIEW2, **NO_PIXEL_OPS, **NO_GEOMETRY)
    x1, x2, _, _ = run_views(colour_shards, 1, 16, img_size=16, view1=never, view2=always)
    assert np.allclose(x1 * 255, np.array([250, 150, 60]).reshape(1, 3, 1, 1), atol=2)
    luma = 0.299 * 250 + 0.587 * 150 + 0.114 * 60
    assert np.allclose(x2 * 255, 255 - luma, atol=2)


def test_colour_jitter_changes_colour(colour_shards: Path) -> None:
    jitter = replace(VIEW2, jitter_p=1.0, grayscale_p=0.0, solarize_p=0.0, **NO_GEOMETRY)
    never = replace(VIEW2, **NO_PIXEL_OPS, **NO_GEOMETRY)
    _, x2, _, _ = run_views(colour_shards, 1, 40, img_size=16, view1=never, view2=jitter)
    centre = x2[:, :, 8, 8] * 255
    spread = centre.std(axis=0)
    assert (spread > 5).all(), spread  # every channel varies between samples
    assert (np.abs(centre - [250, 150, 60]).max(axis=1) > 3).mean() > 0.9


def test_blur_softens_edges(blob_shards: Path) -> None:
    sharp = replace(VIEW2, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), **NO_PIXEL_OPS)
    sharp = replace(sharp, **NO_GEOMETRY)
    blurred = replace(sharp, blur_p=1.0, blur_sigma=(2.0, 2.0))
    x1, x2, m1, m2 = run_views(blob_shards, 1, 24, img_size=96, view1=sharp, view2=blurred)

    def edge_energy(x: np.ndarray) -> float:
        return float((np.diff(x, axis=-1) ** 2).mean())  # falls as a step is spread out

    assert edge_energy(x2) < 0.5 * edge_energy(x1)
    assert np.array_equal(m1, m2)  # blur is a pixel operation: maps untouched


def test_view_augmentation_is_frozen() -> None:
    with pytest.raises(AttributeError):
        VIEW1.blur_p = 0.5  # type: ignore[misc]
    assert isinstance(replace(VIEW1, blur_p=0.5), ViewAugmentation)
