"""Views of different sizes in one recipe (DINO's 2 global + local crops), bicubic crops, and
the fingerprint of the recipes that use neither."""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from ssit.data import (
    SSIT_VIEWS,
    VIEW1,
    AugmentationConfigError,
    PipelineStateError,
    PretrainPipeline,
    ViewBatch,
    ViewSpec,
)
from ssit.data.views import views_fingerprint
from tests.data.conftest import noise_samples
from tests.data.test_augment import NO_GEOMETRY, NO_PIXEL_OPS, UNIT, crop_windows

GLOBAL, LOCAL = 32, 16
WHOLE = replace(VIEW1, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), **NO_PIXEL_OPS,
                **NO_GEOMETRY)
SMALL_CROPS = replace(WHOLE, crop_scale=(0.05, 0.4), crop_ratio=(3 / 4, 4 / 3))
MIXED = (
    ViewSpec(WHOLE),
    ViewSpec(replace(WHOLE, crop_interpolation="cubic"), with_map=True, size=LOCAL),
    ViewSpec(SMALL_CROPS, size=LOCAL),
    ViewSpec(WHOLE, size=24),
)


def make(shards: Path, batch_size: int = 4, **kwargs: object) -> PretrainPipeline:
    kwargs = {"device": "cpu", "img_size": GLOBAL, "num_threads": 1, "views": MIXED, **UNIT,
              **kwargs}
    return PretrainPipeline(shards, batch_size, **kwargs)  # type: ignore[arg-type]


def cloned(batch: ViewBatch) -> list[torch.Tensor | None]:
    return [t if t is None else t.clone() for t in (*batch.images, *batch.maps)]


@pytest.fixture(scope="module")
def coordinate_shards(tmp_path_factory: pytest.TempPathFactory, shard_writer) -> Path:
    """256x256 images whose red value is the column and green value the row; map = rows."""
    cols, rows = np.meshgrid(np.arange(256, dtype=np.uint8), np.arange(256, dtype=np.uint8))
    image = np.stack([cols, rows, np.zeros_like(cols)], axis=-1)
    samples = [(f"c{k:03d}", image, rows.copy()) for k in range(16)]
    return shard_writer(tmp_path_factory.mktemp("sized"), [samples])


def test_each_view_has_its_own_size_and_crop_geometry(coordinate_shards: Path) -> None:
    batch = next(iter(make(coordinate_shards, 8)))
    shapes = [tuple(image.shape) for image in batch.images]
    assert shapes == [(8, 3, 32, 32), (8, 3, 16, 16), (8, 3, 16, 16), (8, 3, 24, 24)]
    assert [None if m is None else tuple(m.shape) for m in batch.maps] == [
        None, (8, 1, 16, 16), None, None]
    for view, size in ((0, GLOBAL), (1, LOCAL), (3, 24)):  # the whole image at every size
        areas, ratios = crop_windows(batch.images[view].numpy(), size)
        assert np.allclose(areas, 1.0, atol=0.03) and np.allclose(ratios, 1.0, atol=0.03)
    areas, _ = crop_windows(batch.images[2].numpy(), LOCAL)  # small crops at the small size
    assert areas.min() >= 0.05 * 0.9 and areas.max() <= 0.4 * 1.1
    # the 16-px map follows its view's window: it is the green (row) channel of the image
    assert torch.allclose(batch.maps[1][:, 0], batch.images[1][:, 1], atol=2 / 255)


def test_cubic_crops_differ_from_linear_ones_only_slightly(coordinate_shards: Path) -> None:
    linear = ViewSpec(replace(WHOLE, crop_interpolation="linear"), size=LOCAL)
    cubic = ViewSpec(replace(WHOLE, crop_interpolation="cubic"), size=LOCAL)
    pipe = make(coordinate_shards, 4, views=(linear, cubic))
    first, second = next(iter(pipe)).images
    difference = (first - second).abs()
    assert 0 < difference.max() < 0.05  # a ramp downscaled: the kernels differ, the content not


def test_mixed_sizes_resume_mid_epoch_exactly(tmp_path: Path, shard_writer) -> None:
    shards = shard_writer(tmp_path, [noise_samples(0, 12)])
    pipe = make(shards, 3, seed=5)
    it = iter(pipe)
    next(it)
    state = pipe.state_dict()
    expected = [cloned(b) for b in it] + [cloned(b) for b in pipe]
    resumed = make(shards, 3, seed=5, state=state)
    got = [cloned(b) for b in resumed] + [cloned(b) for b in resumed]
    assert len(got) == len(expected) == 3 + 4
    for a, b in zip(expected, got, strict=True):
        for x, y in zip(a, b, strict=True):
            assert (x is None and y is None) or torch.equal(x, y)
    other_size = (*MIXED[:3], ViewSpec(WHOLE, size=16))
    with pytest.raises(PipelineStateError, match=r"augmentation of view\(s\) 3 differs"):
        make(shards, 3, seed=5, views=other_size, state=state)


def test_mixed_sizes_survive_an_undecodable_sample(
    tmp_path: Path, shard_writer, caplog: pytest.LogCaptureFixture
) -> None:
    shards = shard_writer(tmp_path, [noise_samples(0, 12)])
    tar_path = shards / "test-000000.tar"
    index = (shards / "test-000000.idx").read_text().splitlines()
    jpg = next(t for t in zip(*[iter(index[4].split())] * 4, strict=True) if t[0] == "jpg")
    start, size = int(jpg[1]), int(jpg[2])
    data = bytearray(tar_path.read_bytes())
    data[start + 3 : start + size - 2] = np.random.default_rng(0).integers(
        0, 256, size - 5, dtype=np.uint8).tobytes()
    tar_path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="ssit.data"):
        pipe = make(shards, 4, with_source=True)
        batches = [cloned(b) for _ in range(2) for b in pipe]
    assert "undecodable" in caplog.text and "s00003" in caplog.text
    assert len(batches) == 6
    assert all(b[1].shape == (4, 3, 16, 16) and b[3].shape == (4, 3, 24, 24) for b in batches)


def test_recipes_without_sizes_or_cubic_crops_keep_their_old_fingerprint() -> None:
    def before_sizes(views: tuple[ViewSpec, ...]) -> list[dict]:
        described = []
        for view in views:
            augmentation = dataclasses.asdict(view.augmentation)
            del augmentation["crop_interpolation"]
            described.append({"with_map": view.with_map, "augmentation": augmentation})
        return json.loads(json.dumps(described))

    assert views_fingerprint(SSIT_VIEWS) == before_sizes(SSIT_VIEWS)
    sized = views_fingerprint(MIXED)
    assert [view.get("size") for view in sized] == [None, 16, 16, 24]
    assert sized[1]["augmentation"]["crop_interpolation"] == "cubic"
    assert "crop_interpolation" not in sized[0]["augmentation"]


@pytest.mark.parametrize("size", [0, -16, 1.5, True, "96"])
def test_bad_view_sizes_are_refused(size: object) -> None:
    with pytest.raises(AugmentationConfigError, match="size must be a positive integer"):
        ViewSpec(WHOLE, size=size)  # type: ignore[arg-type]


def test_unknown_crop_interpolation_is_refused() -> None:
    with pytest.raises(AugmentationConfigError, match="crop_interpolation must be one of"):
        replace(WHOLE, crop_interpolation="nearest")
