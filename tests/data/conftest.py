"""Shards written on the spot for the pipeline tests: real tars with DALI index files."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from ssit.prepare.shard_format import write_dali_index

Sample = tuple[str, np.ndarray, np.ndarray]  # key, RGB image (H, W, 3), map (H, W)
ShardWriter = Callable[..., Path]  # write_test_shards


def encode_jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=100, subsampling=0)
    return buffer.getvalue()


def encode_png(saliency: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(saliency).save(buffer, "PNG")
    return buffer.getvalue()


def write_test_shards(
    out: Path, shards: Iterable[Iterable[Sample]], with_maps: bool = True
) -> Path:
    """One tar (+ DALI index) per inner iterable of samples, named like `ssit shards` names them.

    Without `with_maps` the samples hold a `jpg` and a `cls` label but no `sal.png`.
    """
    out.mkdir(parents=True, exist_ok=True)
    for number, samples in enumerate(shards):
        tar_path = out / f"test-{number:06d}.tar"
        with wds.TarWriter(str(tar_path)) as writer:
            for key, image, saliency in samples:
                sample = {"__key__": key, "jpg": encode_jpeg(image)}
                if with_maps:
                    sample["sal.png"] = encode_png(saliency)
                else:
                    sample["cls"] = b"0"
                writer.write(sample)
        write_dali_index(tar_path, tar_path.with_suffix(".idx"))
    return out


def noise_samples(start: int, count: int, size: int = 64, seed: int = 0) -> list[Sample]:
    """Random smooth colour images whose map is their red channel, keys s<number>."""
    rng = np.random.default_rng(seed + start)
    samples = []
    for k in range(start, start + count):
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        image = np.asarray(Image.fromarray(small).resize((size, size), Image.BILINEAR))
        samples.append((f"s{k:05d}", image, image[..., 0].copy()))
    return samples


@pytest.fixture(scope="session")
def shard_writer() -> ShardWriter:
    return write_test_shards


@pytest.fixture(scope="session")
def noise_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 samples (keys s00000..s00023) in three tars of 10, 8 and 6."""
    out = tmp_path_factory.mktemp("noise_shards")
    return write_test_shards(
        out, [noise_samples(0, 10), noise_samples(10, 8), noise_samples(18, 6)]
    )
