"""GPU check, part 1: the DALI pipeline producing the SSiT views on the GPU (``device="cuda"``).

Measures images per second (each image gives two views and their maps) and the device memory
the pipeline holds; checks that a batch handed out stays intact while the next ones are made,
that each view lines up with its own map (blob shards, :mod:`benchmarks.view_geometry`), and
that CPU and GPU pipelines give statistically alike outputs (value ranges, per-channel means).
With ``device="cpu"`` every function runs the same on the CPU pipeline (the smoke mode).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks.view_geometry import geometry_agreement, write_blob_shards
from ssit.data import PretrainPipeline

# Identity normalisation for the geometry check, so outputs are pixel / 255.
UNIT = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
# CPU and GPU pipelines decode and resample differently; their per-channel means of normalised
# values (unit: one standard deviation of the data) may differ by this much.
MEAN_TOLERANCE = 0.15


@dataclass(frozen=True)
class PipelineSizes:
    batches: tuple[int, ...]
    img_size: int
    timed_epochs: int
    threads: int
    stat_batches: int


def _device_memory_used(device: str) -> int | None:
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    free, total = torch.cuda.mem_get_info()
    return total - free


def throughput(shards: Path, batch: int, device: str, sizes: PipelineSizes) -> dict[str, object]:
    """Images per second over ``timed_epochs`` epochs after one warm-up epoch, and memory."""
    before = _device_memory_used(device)
    pipe = PretrainPipeline(shards, batch, device=device, img_size=sizes.img_size,
                            num_threads=sizes.threads, seed=0)
    try:
        for _ in pipe:  # warm-up: allocations, decoder start
            pass
        if device == "cuda":
            torch.cuda.synchronize()
        images, started = 0, time.perf_counter()
        for _ in range(sizes.timed_epochs):
            for out in pipe:
                images += out.images[0].shape[0]
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        after = _device_memory_used(device)
        return {
            "batch": batch,
            "images": images,
            "seconds": seconds,
            "images_per_s": images / seconds,
            "device_memory_gib": None if after is None else (after - before) / 2**30,
        }
    finally:
        pipe.close()


def held_batch_stays_intact(shards: Path, batch: int, device: str, sizes: PipelineSizes) -> dict:
    """A batch kept while the pipeline makes the next two must not change (buffer reuse)."""
    pipe = PretrainPipeline(shards, batch, device=device, img_size=sizes.img_size,
                            num_threads=sizes.threads, seed=1)
    try:
        batches = iter(pipe)
        held = next(batches)
        copies = [t.clone() for t in (*held.images, *held.maps) if t is not None]
        for _ in range(2):
            next(batches, None)
        if device == "cuda":
            torch.cuda.synchronize()
        now = [t for t in (*held.images, *held.maps) if t is not None]
        changed = [i for i, (a, b) in enumerate(zip(copies, now, strict=True))
                   if not torch.equal(a, b)]
        return {"passed": not changed, "changed_outputs": changed}
    finally:
        pipe.close()


def view_geometry(root: Path, device: str, threads: int) -> dict[str, object]:
    """The image/map agreement of both views, measured on this device's pipeline outputs."""
    shards = root / "blobs"
    if not shards.exists():
        write_blob_shards(shards)
    pipe = PretrainPipeline(shards, 24, device=device, img_size=48, num_threads=threads,
                            seed=0, **UNIT)
    try:
        outs: list[list[np.ndarray]] = [[], [], [], []]
        for batch in pipe:
            for store, tensor in zip(outs, [*batch.images, *batch.maps], strict=True):
                store.append(tensor.float().cpu().numpy())
    finally:
        pipe.close()
    x1, x2, m1, m2 = (np.concatenate(store) for store in outs)
    return geometry_agreement(x1, x2, m1, m2).as_dict()


def output_statistics(shards: Path, batch: int, device: str, sizes: PipelineSizes) -> dict:
    """Per view: per-channel mean/std, value range of the images; mean and range of the maps."""
    pipe = PretrainPipeline(shards, batch, device=device, img_size=sizes.img_size,
                            num_threads=sizes.threads, seed=3)
    try:
        collected: list[list[torch.Tensor]] = []
        for index, out in enumerate(pipe):
            if index >= sizes.stat_batches:
                break
            collected.append([t.float().cpu() for t in (*out.images, *out.maps)])
    finally:
        pipe.close()
    views = [torch.cat(parts) for parts in zip(*collected, strict=True)]
    half = len(views) // 2
    stats = {}
    for number, (image, saliency) in enumerate(zip(views[:half], views[half:], strict=True), 1):
        stats[f"view{number}"] = {
            "channel_mean": image.mean(dim=(0, 2, 3)).tolist(),
            "channel_std": image.std(dim=(0, 2, 3)).tolist(),
            "min": image.min().item(),
            "max": image.max().item(),
            "map_mean": saliency.mean().item(),
            "map_min": saliency.min().item(),
            "map_max": saliency.max().item(),
        }
    return stats


def compare_statistics(cpu: dict, gpu: dict, tolerance: float = MEAN_TOLERANCE) -> dict:
    """Largest per-channel mean gap between two pipelines' outputs, and whether ranges agree."""
    worst_gap, problems = 0.0, []
    for view in cpu:
        a, b = cpu[view], gpu[view]
        gap = max(abs(x - y) for x, y in zip(a["channel_mean"], b["channel_mean"], strict=True))
        worst_gap = max(worst_gap, gap)
        if gap > tolerance:
            problems.append(f"{view}: channel means differ by {gap:.3f}")
        if abs(a["map_mean"] - b["map_mean"]) > 0.1:
            problems.append(f"{view}: map means {a['map_mean']:.3f} vs {b['map_mean']:.3f}")
        for name, low, high in (("images", "min", "max"), ("maps", "map_min", "map_max")):
            span = max(a[high] - a[low], 1e-6)
            if abs(a[low] - b[low]) > 0.2 * span or abs(a[high] - b[high]) > 0.2 * span:
                problems.append(f"{view}: {name} range [{a[low]:.2f}, {a[high]:.2f}] vs "
                                f"[{b[low]:.2f}, {b[high]:.2f}]")
    return {"worst_channel_mean_gap": worst_gap, "problems": problems, "passed": not problems}


def run_pipeline_check(shards: Path, root: Path, device: str, sizes: PipelineSizes,
                       record: dict) -> None:
    """Fill ``record`` part by part (so that a failure keeps what was measured before it)."""
    record["device"] = device
    record["throughput"] = []
    for batch in sizes.batches:
        record["throughput"].append(throughput(shards, batch, device, sizes))
    record["held_batch"] = held_batch_stays_intact(shards, sizes.batches[0], device, sizes)
    record["geometry"] = view_geometry(root, device, sizes.threads)
    reference = output_statistics(shards, sizes.batches[0], "cpu", sizes)
    measured = output_statistics(shards, sizes.batches[0], device, sizes)
    record["statistics"] = {"cpu": reference, device: measured,
                            "comparison": compare_statistics(reference, measured)}
