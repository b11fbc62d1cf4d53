"""Does each view line up with its own saliency map? A measure that runs on any pipeline output.

The shards hold "blob" images drawn from their own map (a few bright discs on black, the map
the same discs), so after any crop, rotation and flip applied alike to both, the image's grey
level and the map correlate almost perfectly; against another view's map or another sample's
map they do not. :func:`geometry_agreement` reduces that to a few numbers and a verdict.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ssit.prepare.shard_format import write_dali_index

BLOB_SIDE = 96
BLOB_SAMPLES = 48
# Thresholds of the check (the CPU tests of the augmentations use the same).
MIN_OWN_MEAN, MIN_OWN_WORST = 0.9, 0.6
MAX_OTHER_VIEW_MEAN, MAX_OTHER_SAMPLE_MEAN = 0.6, 0.5


BlobSample = tuple[str, np.ndarray, np.ndarray]


def blob_samples(count: int = BLOB_SAMPLES, seed: int = 7) -> list[BlobSample]:
    """``(key, RGB image, map)``: three discs of map value 200, image grey level 100 inside."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:BLOB_SIDE, 0:BLOB_SIDE]
    samples = []
    for k in range(count):
        saliency = np.zeros((BLOB_SIDE, BLOB_SIDE), np.uint8)
        for _ in range(3):
            cy, cx = rng.uniform(15, BLOB_SIDE - 15, size=2)
            radius = rng.uniform(6, 16)
            saliency[(yy - cy) ** 2 + (xx - cx) ** 2 < radius**2] = 200
        image = np.repeat((saliency // 2)[..., None], 3, axis=-1)
        samples.append((f"b{k:03d}", image, saliency))
    return samples


def write_blob_shards(out: Path, count: int = BLOB_SAMPLES, per_shard: int = 24) -> Path:
    """Blob samples as webdataset tars with DALI index files (``jpg`` + ``sal.png``)."""
    import webdataset as wds

    out.mkdir(parents=True, exist_ok=True)
    samples = blob_samples(count)
    for number, start in enumerate(range(0, count, per_shard)):
        tar_path = out / f"blobs-{number:06d}.tar"
        with wds.TarWriter(str(tar_path)) as writer:
            for key, image, saliency in samples[start : start + per_shard]:
                writer.write({"__key__": key, "jpg": _encode(image, "JPEG"),
                              "sal.png": _encode(saliency, "PNG")})
        write_dali_index(tar_path, tar_path.with_suffix(".idx"))
    return out


def _encode(array: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    options = {"quality": 100, "subsampling": 0} if fmt == "JPEG" else {}
    Image.fromarray(array).save(buffer, fmt, **options)
    return buffer.getvalue()


def map_correlations(images: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """|Pearson r| between each image's channel mean ``(B, 3, S, S)`` and its map ``(B, 1, S, S)``.

    NaN where either is flat (a crop that missed every disc).
    """
    out = []
    for image, saliency in zip(images, maps, strict=True):
        a, b = image.mean(axis=0).ravel(), saliency[0].ravel()
        if a.std() < 1e-6 or b.std() < 1e-6:
            out.append(np.nan)
        else:
            out.append(abs(np.corrcoef(a, b)[0, 1]))
    return np.array(out)


@dataclass(frozen=True)
class GeometryAgreement:
    """How well views follow their own maps, and how badly they follow the wrong ones."""

    own_mean: float
    own_worst: float
    valid_share: float
    other_view_mean: float
    other_sample_mean: float

    @property
    def passed(self) -> bool:
        return (self.own_mean > MIN_OWN_MEAN and self.own_worst > MIN_OWN_WORST
                and self.valid_share > 0.9 and self.other_view_mean < MAX_OTHER_VIEW_MEAN
                and self.other_sample_mean < MAX_OTHER_SAMPLE_MEAN)

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "passed": self.passed}


def geometry_agreement(
    x1: np.ndarray, x2: np.ndarray, m1: np.ndarray, m2: np.ndarray
) -> GeometryAgreement:
    """Agreement of two views of blob images with their maps (numpy, ``(B, C, S, S)`` each)."""
    own = np.concatenate([map_correlations(x1, m1), map_correlations(x2, m2)])
    other_view = np.concatenate([map_correlations(x1, m2), map_correlations(x2, m1)])
    other_sample = np.concatenate([map_correlations(x1, np.roll(m1, 1, axis=0)),
                                   map_correlations(x2, np.roll(m2, 1, axis=0))])
    return GeometryAgreement(
        own_mean=float(np.nanmean(own)),
        own_worst=float(np.nanmin(own)),
        valid_share=float(np.mean(~np.isnan(own))),
        other_view_mean=float(np.nanmean(other_view)),
        other_sample_mean=float(np.nanmean(other_sample)),
    )
