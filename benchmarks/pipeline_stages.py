"""Stage-by-stage CPU cost of the two input pipelines on the same samples.

Each stage of the augmentation table is timed on its own, on inputs of the size it sees in the
pipeline (decoding on the shards' bytes, the crop on 512x512 images, everything after it on
224x224 views), for both views, with each operation's probability in effect. DALI stages run
our own graph functions (`ssit.data.augment`) in a one-thread CPU pipeline of batch 32, less
the cost of the same pipeline passing its inputs through; reference stages run the reference's
methods (`benchmarks.reference_pipeline`) one sample at a time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks import reference_pipeline as reference

BATCH = 32
RUNS = 10


@dataclass(frozen=True)
class StageCost:
    """CPU milliseconds per sample (both views) of one stage in each pipeline."""

    stage: str
    dali_ms: float
    reference_ms: float
    detail: str = ""

    @property
    def label(self) -> str:
        """The stage with its detail (what it covers), for the table."""
        return f"{self.stage} ({self.detail})" if self.detail else self.stage


def _dali_ms(inputs: Sequence[list[np.ndarray]], layouts: Sequence[str], graph: Callable) -> float:
    """CPU ms per sample of `graph(*inputs)` in a one-thread CPU pipeline, pass-through removed."""
    from nvidia.dali import fn, pipeline_def

    def per_sample(body: Callable) -> float:
        @pipeline_def(
            batch_size=BATCH, num_threads=1, device_id=None, seed=7, enable_conditionals=True
        )
        def pipe():
            nodes = [
                fn.external_source(source=_constant(inputs[k]), batch=True, layout=layouts[k])
                for k in range(len(inputs))
            ]
            return tuple(body(*nodes))

        built = pipe()
        built.build()
        for _ in range(3):
            built.run()
        start = time.process_time()
        for _ in range(RUNS):
            built.run()
        return 1000.0 * (time.process_time() - start) / (RUNS * BATCH)

    return max(0.0, per_sample(graph) - per_sample(lambda *nodes: nodes))


def _constant(batch: list[np.ndarray]) -> Callable[[], list[np.ndarray]]:
    return lambda: batch


def _reference_ms(step: Callable[[int], object]) -> float:
    """CPU ms per sample of `step(i)` over the batch's samples, RUNS times."""
    start = time.process_time()
    for _ in range(RUNS):
        for i in range(BATCH):
            step(i)
    return 1000.0 * (time.process_time() - start) / (RUNS * BATCH)


def measure_stages(samples: Sequence[dict]) -> list[StageCost]:
    """Per-stage CPU cost of the DALI pipeline's operators and of the reference's steps."""
    from nvidia.dali import fn, types

    from ssit.data.augment import (
        EYEPACS_MEAN,
        EYEPACS_STD,
        VIEW1,
        VIEW2,
        colour_jitter_grayscale,
        gaussian_blur,
        normalise_image,
        resized_crop_pair,
        rotate_flip_pair,
        saliency_to_unit,
        solarize,
    )

    samples = list(samples)[:BATCH]
    if len(samples) < BATCH:
        raise ValueError(f"need {BATCH} samples, got {len(samples)}")
    size = 224
    jpegs = [np.frombuffer(s["jpg"], dtype=np.uint8) for s in samples]
    pngs = [np.frombuffer(s["sal.png"], dtype=np.uint8) for s in samples]
    pil = [reference.decode(s) for s in samples]
    pil_small = [(im.resize((size, size)), sal.resize((size, size))) for im, sal in pil]
    images = [np.asarray(im) for im, _ in pil]
    maps = [np.asarray(sal)[:, :, None] for _, sal in pil]
    small_images = [np.asarray(im) for im, _ in pil_small]
    small_maps = [np.asarray(sal)[:, :, None] for _, sal in pil_small]
    views = (VIEW1, VIEW2)
    ref_views = (reference.VIEW1, reference.VIEW2)

    def decode(jpeg, png):
        return (
            fn.decoders.image(jpeg, device="cpu", output_type=types.RGB),
            fn.decoders.image(png, device="cpu", output_type=types.GRAY),
            fn.peek_image_shape(jpeg),
        )

    def crop(image, saliency):
        shape = image.shape()
        return [
            out
            for v in views
            for out in resized_crop_pair(image, saliency, shape, size, v.crop_scale, v.crop_ratio)
        ]

    def rotate(image, saliency):
        return [out for v in views for out in rotate_flip_pair(image, saliency, size, v)]

    def normalise(image, saliency):
        return [normalise_image(image, EYEPACS_MEAN, EYEPACS_STD), saliency_to_unit(saliency)] * 2

    def both(step):
        return lambda i: [step(view, i) for view in ref_views]

    encoded, full, small = (jpegs, pngs), (images, maps), (small_images, small_maps)
    stages = [
        (
            "decode",
            "JPEG + saliency PNG",
            _dali_ms(encoded, ("", ""), decode),
            _reference_ms(lambda i: reference.decode(samples[i])),
        ),
        (
            "resized crop to 224",
            "image + map",
            _dali_ms(full, ("HWC", "HWC"), crop),
            _reference_ms(both(lambda v, i: v.crop(*pil[i]))),
        ),
        (
            "colour jitter + grayscale",
            "p 0.8, p 0.2",
            _dali_ms(small[:1], ("HWC",), lambda x: [colour_jitter_grayscale(x, v) for v in views]),
            _reference_ms(both(lambda v, i: v.colour(pil_small[i][0]))),
        ),
        (
            "Gaussian blur",
            "view 1 always, view 2 p 0.1",
            _dali_ms(small[:1], ("HWC",), lambda x: [gaussian_blur(x, v) for v in views]),
            _reference_ms(both(lambda v, i: v.blur(pil_small[i][0]))),
        ),
        (
            "solarize",
            "view 2, p 0.2",
            _dali_ms(small[:1], ("HWC",), lambda x: [solarize(x, v) for v in views]),
            _reference_ms(both(lambda v, i: v.solarize(pil_small[i][0]))),
        ),
        (
            "rotation + flips",
            "p 0.8 and 0.5 each, image + map",
            _dali_ms(small, ("HWC", "HWC"), rotate),
            _reference_ms(both(lambda v, i: v.rotate_flip(*pil_small[i]))),
        ),
        (
            "to float + normalise",
            "image + map",
            _dali_ms(small, ("HWC", "HWC"), normalise),
            _reference_ms(both(lambda v, i: v.to_tensors(*pil_small[i]))),
        ),
    ]
    return [StageCost(name, dali, ref, detail) for name, detail, dali, ref in stages]


def load_samples(shards: Path) -> list[dict]:
    """The first BATCH samples of the shards in `shards`."""
    from ssit.prepare.shard_format import iter_samples

    samples = []
    for sample in iter_samples(sorted(shards.glob("*.tar"))):
        samples.append(sample)
        if len(samples) == BATCH:
            break
    return samples


def stage_rows(costs: Sequence[StageCost]) -> list[str]:
    """Markdown table rows: stage, DALI ms, reference ms, ratio; then the sums."""
    rows = []
    for cost in costs:
        ratio = cost.dali_ms / cost.reference_ms if cost.reference_ms > 0 else float("nan")
        rows.append(
            f"| {cost.label} | {cost.dali_ms:.2f} | {cost.reference_ms:.2f} | {ratio:.1f} |"
        )
    dali = sum(c.dali_ms for c in costs)
    ref = sum(c.reference_ms for c in costs)
    rows.append(f"| **sum of the stages** | **{dali:.1f}** | **{ref:.1f}** | {dali / ref:.1f} |")
    return rows


__all__ = ["StageCost", "load_samples", "measure_stages", "stage_rows"]


if __name__ == "__main__":
    import sys

    costs = measure_stages(load_samples(Path(sys.argv[1])))
    print("\n".join(stage_rows(costs)))
