"""View recipes other than the SSiT default: any number of views, with or without maps."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ssit.data import (
    SSIT_VIEWS,
    VIEW1,
    VIEW2,
    AugmentationConfigError,
    MissingSaliencyError,
    PipelineStateError,
    PretrainPipeline,
    ViewBatch,
    ViewSpec,
    epoch_batches,
)
from tests.data.conftest import encode_jpeg, noise_samples

SIZE = 32
UNIT = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}  # outputs are pixel / 255
# No pixel operation, no rotation or flip, the whole image: a plain resize.
STILL = replace(
    VIEW2,
    crop_scale=(1.0, 1.0),
    jitter_p=0.0,
    grayscale_p=0.0,
    blur_p=0.0,
    solarize_p=0.0,
    rotation_p=0.0,
    hflip_p=0.0,
    vflip_p=0.0,
)
THREE_VIEWS = (ViewSpec(VIEW1), ViewSpec(STILL, with_map=True), ViewSpec(VIEW2))


def make(shards: Path, batch_size: int = 4, **kwargs: object) -> PretrainPipeline:
    kwargs = {"device": "cpu", "img_size": SIZE, "num_threads": 1, **kwargs}
    return PretrainPipeline(shards, batch_size, **kwargs)  # type: ignore[arg-type]


def keys_of(pipe: PretrainPipeline) -> list[str]:
    return [source.rsplit(":", 1)[-1].split(".", 1)[0] for source in pipe.last_sources]


def resized(array: np.ndarray) -> np.ndarray:
    """What the pipeline should make of an un-augmented view: a bilinear resize, in [0, 1]."""
    return np.asarray(Image.fromarray(array).resize((SIZE, SIZE), Image.BILINEAR)) / 255.0


@pytest.fixture(scope="module")
def single_shard(tmp_path_factory: pytest.TempPathFactory, shard_writer) -> Path:
    """12 samples (s00000..s00011) in one tar, with maps (each map is its image's red channel)."""
    return shard_writer(tmp_path_factory.mktemp("views"), [noise_samples(0, 12)])


@pytest.fixture(scope="module")
def plain_shards(tmp_path_factory: pytest.TempPathFactory, shard_writer) -> Path:
    """20 samples in two tars holding only `jpg` and `cls`, no saliency map."""
    out = tmp_path_factory.mktemp("plain")
    return shard_writer(out, [noise_samples(0, 12), noise_samples(12, 8)], with_maps=False)


def test_ssit_views_are_the_paper_views() -> None:
    assert (ViewSpec(VIEW1, True), ViewSpec(VIEW2, True)) == SSIT_VIEWS
    assert ViewSpec(VIEW1).with_map is False
    with pytest.raises(AugmentationConfigError, match="ViewAugmentation"):
        ViewSpec("strong")  # type: ignore[arg-type]


def test_view_recipes_import_without_dali() -> None:
    code = (
        "import sys; from ssit.data.views import SSIT_VIEWS, ViewBatch; import ssit.data; "
        "assert not [m for m in sys.modules if m.startswith('nvidia.dali')]"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


def test_three_views_one_with_map(single_shard: Path) -> None:
    originals = {key: image for key, image, _ in noise_samples(0, 12)}
    pipe = make(single_shard, 4, views=THREE_VIEWS, with_source=True, **UNIT)
    assert len(pipe) == 3
    for batch in pipe:
        assert isinstance(batch, ViewBatch)
        assert len(batch.images) == len(batch.maps) == 3
        assert all(x.shape == (4, 3, SIZE, SIZE) for x in batch.images)
        assert batch.maps[0] is None and batch.maps[2] is None
        assert batch.maps[1].shape == (4, 1, SIZE, SIZE)
        for row, key in enumerate(keys_of(pipe)):
            # the decoded JPEG, as the pipeline sees it, resized; its map is the red channel
            decoded = np.asarray(Image.open(io.BytesIO(encode_jpeg(originals[key]))))
            still = batch.images[1][row].permute(1, 2, 0).numpy()
            assert np.abs(still - resized(decoded)).max() <= 1.5 / 255
            saliency = batch.maps[1][row, 0].numpy()
            assert np.abs(saliency - resized(originals[key][..., 0])).max() <= 1.5 / 255
        x0, x1, x2 = batch.images
        assert not torch.equal(x0, x1) and not torch.equal(x1, x2) and not torch.equal(x0, x2)


def test_eight_views_without_maps_read_shards_without_saliency(plain_shards: Path) -> None:
    """K = 8: four plain resizes that may be mirrored, four strong views; one image per row."""
    mirrored = replace(STILL, hflip_p=0.5)
    views = [ViewSpec(mirrored)] * 4 + [ViewSpec(VIEW2)] * 4
    pipe = make(plain_shards, 5, views=views, seed=2, **UNIT)
    assert len(pipe) == 4
    flips = 0
    for batch in pipe:
        assert len(batch.images) == 8 and batch.maps == [None] * 8
        assert all(x.shape == (5, 3, SIZE, SIZE) for x in batch.images)
        reference = batch.images[0]
        for view in batch.images[1:4]:
            for row in range(5):
                same = torch.allclose(view[row], reference[row], atol=1e-6)
                mirror = torch.allclose(view[row], reference[row].flip(-1), atol=1e-6)
                assert same or mirror  # the same image in every view of a row
                flips += not same
        strong = batch.images[4:]
        assert all(not torch.equal(a, b) for a in strong for b in strong if a is not b)
    assert flips > 0
    with pytest.raises(MissingSaliencyError, match=r"sal\.png"):
        make(plain_shards, 5, views=[ViewSpec(VIEW2), ViewSpec(VIEW2, with_map=True)])


def test_unread_maps_need_not_be_valid(tmp_path: Path, shard_writer) -> None:
    """A cut saliency PNG drops its sample only from recipes that read maps."""
    shards = shard_writer(tmp_path, [noise_samples(0, 12)])
    tar_path = shards / "test-000000.tar"
    index = (shards / "test-000000.idx").read_text().splitlines()
    png = next(t for t in zip(*[iter(index[3].split())] * 4, strict=True) if t[0] == "sal.png")
    data = bytearray(tar_path.read_bytes())
    end = int(png[1]) + int(png[2])
    data[end - 12 : end] = bytes(12)
    tar_path.write_bytes(bytes(data))
    assert make(shards, views=SSIT_VIEWS).shard_set.num_samples == 11
    without_maps = make(shards, views=[ViewSpec(VIEW1), ViewSpec(VIEW2)])
    assert without_maps.shard_set.num_samples == 12
    assert sum(len(batch.images[0]) for batch in without_maps) == 12


def test_multi_view_state_restores_mid_epoch_exactly(single_shard: Path) -> None:
    def tensors(batch: ViewBatch) -> list[torch.Tensor | None]:
        return [t if t is None else t.clone() for t in (*batch.images, *batch.maps)]

    pipe = make(single_shard, 3, views=THREE_VIEWS, seed=4)
    it = iter(pipe)
    next(it)
    state = pipe.state_dict()
    expected = [tensors(b) for b in it] + [tensors(b) for b in pipe]
    assert len(expected) == 3 + 4

    resumed = make(single_shard, 3, views=THREE_VIEWS, seed=4, state=state)
    got = [tensors(b) for b in resumed] + [tensors(b) for b in resumed]
    assert len(got) == len(expected)
    for a, b in zip(expected, got, strict=True):
        for x, y in zip(a, b, strict=True):
            assert (x is None and y is None) or torch.equal(x, y)


def test_state_of_another_recipe_is_refused(single_shard: Path) -> None:
    state = make(single_shard, views=THREE_VIEWS).state_dict()
    other_flags = tuple(ViewSpec(v.augmentation, not v.with_map) for v in THREE_VIEWS)
    other_parameters = (*THREE_VIEWS[:2], ViewSpec(replace(VIEW2, solarize_p=0.3)))
    cases = [
        (SSIT_VIEWS, r"views: 3 \[-M-\] vs 2 \[MM\]"),
        (THREE_VIEWS[:2], r"views: 3 \[-M-\] vs 2 \[-M\]"),
        (other_flags, r"views: 3 \[-M-\] vs 3 \[M-M\]"),
        (other_parameters, r"augmentation of view\(s\) 2 differs"),
    ]
    for views, message in cases:
        with pytest.raises(PipelineStateError, match=message):
            make(single_shard, views=views, state=state)
    assert make(single_shard, views=THREE_VIEWS, state=state).batches_seen == 0


def test_state_saved_before_recipes_counts_as_the_ssit_views(single_shard: Path) -> None:
    payload = json.loads(make(single_shard, views=SSIT_VIEWS).state_dict())
    del payload["fingerprint"]["views"]  # the state format of pipelines with two fixed views
    legacy = json.dumps(payload)
    assert make(single_shard, state=legacy).epoch == 0
    with pytest.raises(PipelineStateError, match="views"):
        make(single_shard, views=THREE_VIEWS, state=legacy)


def test_uneven_ranks_split_a_multi_view_recipe_evenly(plain_shards: Path) -> None:
    """20 samples over 3 ranks (7, 7 and 6): equal batch counts, every view the full batch."""
    views = [ViewSpec(VIEW2)] * 3
    ranks = [
        make(plain_shards, 3, views=views, rank=r, world_size=3, with_source=True) for r in range(3)
    ]
    assert [len(pipe) for pipe in ranks] == [epoch_batches(20, 3, 3)] * 3 == [2] * 3
    for _ in range(2):
        keys = []
        for pipe in ranks:
            rank_keys = []
            for batch in pipe:
                assert [len(x) for x in batch.images] == [3, 3, 3]
                rank_keys += keys_of(pipe)
            keys.append(rank_keys)
        assert [len(k) for k in keys] == [6, 6, 6]
        flat = [key for rank_keys in keys for key in rank_keys]
        assert len(set(flat)) == len(flat)
