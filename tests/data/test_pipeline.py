"""PretrainPipeline on CPU operators, on real shards: outputs, ranks, epochs, state, errors.

These use the default recipe (the two SSiT views with maps); other recipes: test_views.py.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from ssit.data import (
    EYEPACS_MEAN,
    EYEPACS_STD,
    VIEW1,
    VIEW2,
    MissingSaliencyError,
    NoShardsError,
    PipelineStateError,
    PretrainPipeline,
    TooFewSamplesError,
    ViewBatch,
    epoch_batches,
    rank_seed,
)
from ssit.data.pipeline import reader_epoch_batches
from tests.data.conftest import noise_samples

SIZE = 32


def make(shards: Path | str, batch_size: int = 4, **kwargs: object) -> PretrainPipeline:
    kwargs = {"device": "cpu", "img_size": SIZE, "num_threads": 1, **kwargs}
    return PretrainPipeline(shards, batch_size, **kwargs)  # type: ignore[arg-type]


def tensors_of(batch: ViewBatch) -> list[torch.Tensor]:
    """Images then maps of every view, cloned (DALI may reuse the memory)."""
    return [t.clone() for t in (*batch.images, *batch.maps) if t is not None]


def keys_of(pipe: PretrainPipeline) -> list[str]:
    return [source.rsplit(":", 1)[-1].split(".", 1)[0] for source in pipe.last_sources]


def epoch_keys(pipe: PretrainPipeline) -> list[str]:
    keys: list[str] = []
    for _ in pipe:
        keys += keys_of(pipe)
    return keys


def test_epoch_length_formulas() -> None:
    assert epoch_batches(24, 2, 4) == 3
    assert epoch_batches(23, 2, 4) == 2  # ranks hold 11 and 12 samples
    assert reader_epoch_batches(23, 2, 4) == 3
    assert epoch_batches(7, 2, 4) == 0
    assert reader_epoch_batches(24, 2, 4) == 3


def test_rank_seeds_differ_and_are_stable() -> None:
    seeds = {rank_seed(0, r) for r in range(64)}
    assert len(seeds) == 64
    assert rank_seed(3, 1) == rank_seed(3, 1) != rank_seed(4, 1)
    assert all(0 <= s < 2**31 for s in seeds)


def test_outputs_shapes_dtypes_ranges(noise_shards: Path) -> None:
    pipe = make(noise_shards, batch_size=6)
    assert len(pipe) == 4
    batches = list(pipe)
    assert len(batches) == 4
    lo = min((0 - m) / s for m, s in zip(EYEPACS_MEAN, EYEPACS_STD, strict=True))
    hi = max((1 - m) / s for m, s in zip(EYEPACS_MEAN, EYEPACS_STD, strict=True))
    for batch in batches:
        assert isinstance(batch, ViewBatch)
        (x1, x2), (m1, m2) = batch
        for x in (x1, x2):
            assert x.shape == (6, 3, SIZE, SIZE) and x.dtype == torch.float32
            assert x.device.type == "cpu"
            assert lo - 1e-4 <= float(x.min()) and float(x.max()) <= hi + 1e-4
        for m in (m1, m2):
            assert m.shape == (6, 1, SIZE, SIZE) and m.dtype == torch.float32
            assert float(m.min()) >= 0.0 and float(m.max()) <= 1.0
            assert float(m.max()) > 0.2  # the maps are not empty
        assert not torch.equal(x1, x2)
    # per-channel normalisation: undoing it gives values in [0, 1]
    mean = torch.tensor(EYEPACS_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(EYEPACS_STD).view(1, 3, 1, 1)
    raw = batches[0].images[1] * std + mean
    assert float(raw.min()) >= -1e-4 and float(raw.max()) <= 1 + 1e-4


def test_glob_and_list_specs_read_the_same_samples(noise_shards: Path) -> None:
    tars = sorted(noise_shards.glob("*.tar"))
    by_glob = make(str(noise_shards / "*.tar"), with_source=True)
    by_list = make([str(t) for t in tars], with_source=True)
    assert sorted(epoch_keys(by_glob)) == sorted(epoch_keys(by_list))
    assert len(by_glob.shard_set.tar_paths) == 3


@pytest.mark.parametrize("batch_size", [4, 3])
def test_two_ranks_disjoint_and_cover_each_epoch(noise_shards: Path, batch_size: int) -> None:
    everything = {f"s{k:05d}" for k in range(24)}
    ranks = [
        make(noise_shards, batch_size, rank=r, world_size=2, seed=5, with_source=True)
        for r in range(2)
    ]
    assert len(ranks[0]) == len(ranks[1]) == epoch_batches(24, 2, batch_size)
    seen_per_epoch = []
    for _ in range(3):
        keys = [epoch_keys(pipe) for pipe in ranks]
        assert [len(k) for k in keys] == [len(ranks[0]) * batch_size] * 2
        assert len(set(keys[0])) == len(keys[0]) and len(set(keys[1])) == len(keys[1])
        assert not set(keys[0]) & set(keys[1])
        union = set(keys[0]) | set(keys[1])
        assert union <= everything
        if 12 % batch_size == 0:
            assert union == everything
        seen_per_epoch.append(keys)
    # the ranks do not read the same part every epoch
    assert {frozenset(k[0]) for k in seen_per_epoch} != {frozenset(seen_per_epoch[0][0])}


def test_uneven_ranks_yield_equal_batch_counts(tmp_path: Path, shard_writer) -> None:
    shards = shard_writer(tmp_path, [noise_samples(0, 13), noise_samples(13, 10)])
    ranks = [make(shards, 4, rank=r, world_size=3, with_source=True) for r in range(3)]
    assert {len(p) for p in ranks} == {epoch_batches(23, 3, 4)} == {1}
    for _ in range(3):
        keys = [epoch_keys(p) for p in ranks]
        assert [len(k) for k in keys] == [4, 4, 4]
        flat = [k for rank_keys in keys for k in rank_keys]
        assert len(set(flat)) == len(flat)


def test_state_restores_mid_epoch_exactly(noise_shards: Path) -> None:
    pipe = make(noise_shards, 4, seed=3)
    it = iter(pipe)
    for _ in range(2):
        next(it)
    state = pipe.state_dict()
    assert (pipe.epoch, pipe.batches_seen) == (0, 2)
    expected = [tensors_of(b) for b in it] + [tensors_of(b) for b in pipe]
    assert len(expected) == 4 + 6

    resumed = make(noise_shards, 4, seed=3, state=state)
    assert (resumed.epoch, resumed.batches_seen) == (0, 2)
    got = [tensors_of(b) for b in resumed] + [tensors_of(b) for b in resumed]
    assert len(got) == len(expected)
    for a, b in zip(expected, got, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))

    other = make(noise_shards, 4, seed=3)
    other.load_state_dict(state)
    first = tensors_of(next(iter(other)))
    assert all(torch.equal(x, y) for x, y in zip(first, expected[0], strict=True))


def test_state_at_epoch_end_starts_next_epoch(noise_shards: Path) -> None:
    pipe = make(noise_shards, 5, seed=1)  # 24 samples: 4 batches, 1 padded batch drained
    it = iter(pipe)
    for _ in range(len(pipe)):
        next(it)
    state = pipe.state_dict()
    expected = [b.images[0].clone() for b in pipe]
    resumed = make(noise_shards, 5, seed=1, state=state)
    got = [b.images[0].clone() for b in resumed]
    assert resumed.epoch == pipe.epoch == 2
    assert all(torch.equal(a, b) for a, b in zip(expected, got, strict=True))


def test_seeds_change_the_augmentation(noise_shards: Path) -> None:
    a = next(iter(make(noise_shards, 4, seed=0))).images[0]
    b = next(iter(make(noise_shards, 4, seed=0))).images[0]
    c = next(iter(make(noise_shards, 4, seed=1))).images[0]
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_bad_states_are_rejected(noise_shards: Path) -> None:
    state = make(noise_shards, 4, seed=3).state_dict()
    with pytest.raises(PipelineStateError, match="another setup"):
        make(noise_shards, 4, seed=4, state=state)
    with pytest.raises(PipelineStateError, match="another setup"):
        make(noise_shards, 4, seed=3, rank=1, world_size=2, state=state)
    with pytest.raises(PipelineStateError, match="damaged"):
        make(noise_shards, 4, seed=3, state="not a state")
    with pytest.raises(PipelineStateError):
        make(noise_shards, 4, seed=3, state=state.replace('"format": 1', '"format": 9'))


def test_no_shards_found(tmp_path: Path) -> None:
    with pytest.raises(NoShardsError):
        make(tmp_path)
    with pytest.raises(NoShardsError):
        make(str(tmp_path / "*.tar"))
    with pytest.raises(NoShardsError):
        make([tmp_path / "missing.tar"])


def test_shards_without_saliency(tmp_path: Path, shard_writer) -> None:
    shards = shard_writer(tmp_path, [noise_samples(0, 8)], with_maps=False)
    with pytest.raises(MissingSaliencyError, match=r"sal\.png"):
        make(shards)


def test_too_few_samples(noise_shards: Path) -> None:
    with pytest.raises(TooFewSamplesError, match="ranks"):
        make(noise_shards, 1, rank=0, world_size=25)
    with pytest.raises(TooFewSamplesError, match="no full batch"):
        make(noise_shards, 13, rank=1, world_size=2)


def test_bad_arguments(noise_shards: Path) -> None:
    with pytest.raises(ValueError, match="device"):
        make(noise_shards, device="tpu")
    with pytest.raises(ValueError, match="rank"):
        make(noise_shards, rank=2, world_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        make(noise_shards, batch_size=0)
    with pytest.raises(ValueError, match="mean and std"):
        make(noise_shards, std=(0.2, 0.2))
    with pytest.raises(ValueError, match="views"):
        make(noise_shards, views=())
    with pytest.raises(ValueError, match="views"):
        make(noise_shards, views=[VIEW1, VIEW2])  # augmentations, not ViewSpecs


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_cuda_without_gpu_is_a_clear_error(noise_shards: Path) -> None:
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        PretrainPipeline(noise_shards, 4, device="cuda")


def test_corrupt_samples_are_skipped_or_replaced(
    tmp_path: Path, shard_writer, caplog: pytest.LogCaptureFixture
) -> None:
    shards = shard_writer(tmp_path, [noise_samples(0, 12)])
    tar_path = shards / "test-000000.tar"
    index = (shards / "test-000000.idx").read_text().splitlines()
    data = bytearray(tar_path.read_bytes())
    # sample 3: scramble the JPEG body (markers intact: only the decoder notices)
    jpg3 = next(t for t in zip(*[iter(index[4].split())] * 4, strict=True) if t[0] == "jpg")
    start, size = int(jpg3[1]), int(jpg3[2])
    rng = np.random.default_rng(0)
    data[start + 3 : start + size - 2] = rng.integers(0, 256, size - 5, dtype=np.uint8).tobytes()
    # sample 7: cut the PNG short (an incomplete file, caught before reading)
    png7 = next(t for t in zip(*[iter(index[8].split())] * 4, strict=True) if t[0] == "sal.png")
    start, size = int(png7[1]), int(png7[2])
    data[start + size - 12 : start + size] = bytes(12)
    tar_path.write_bytes(bytes(data))

    with caplog.at_level(logging.WARNING, logger="ssit.data"):
        pipe = make(shards, 4, with_source=True)
        assert pipe.shard_set.num_samples == 11
        assert "s00007" in caplog.text and "sal.png truncated" in caplog.text
        keys = [epoch_keys(pipe) for _ in range(2)]
    assert all(len(k) == 8 for k in keys)
    assert "undecodable" in caplog.text and "s00003" in caplog.text
    assert not any("s00007" in k for k in keys)
