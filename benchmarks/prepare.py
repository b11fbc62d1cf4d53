"""Offline stage: `ssit shards` against the original two-step recipe, same images and cores.

Baseline (the recipe this stage replaces, written the way it was run before: Pillow and NumPy
at full resolution), with the same number of worker processes:
  step 1: decode each photograph fully, blur it, find the fundus box with NumPy comparisons,
          crop, resize to 512 (Lanczos) and save a quality-100 JPEG;
  step 2: read each crop, compute its saliency map and save it as a float32 ``.npy``.
This stage: one pass per image (JPEG decoded at reduced scale, crop, saliency, 8-bit PNG map)
straight into tar shards with DALI index files. Both compute the same saliency map.
"""

from __future__ import annotations

import io
import logging
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from ssit.prepare.crop import crop_fundus
from ssit.prepare.decode import load_image
from ssit.prepare.saliency import saliency_float
from ssit.prepare.shard_format import iter_samples, list_shards
from ssit.prepare.shards import write_shards
from ssit.prepare.synth import synthesize
from ssit.prepare.workers import available_cores, parallel_map

IMAGES = 48
HEIGHTS = (1450, 1550)  # with aspect 1.3-1.5: about 3 MP, like EyePACS
COMMAND = "python -m benchmarks.prepare"


def _baseline_crop(task: tuple[str, str]) -> None:
    source, target = task
    image = Image.open(source).convert("RGB")
    pixels = np.array(image.filter(ImageFilter.BLUR))
    height, width, _ = pixels.shape
    box = None
    if width > 1.2 * height:
        strip = width // 32
        background = np.maximum(pixels[:, :strip].max(axis=(0, 1)).astype(int),
                                pixels[:, -strip:].max(axis=(0, 1)).astype(int))
        foreground = (pixels > background + 10).any(axis=2).astype(np.uint8)
        box = Image.fromarray(foreground).getbbox()
        if box and (box[2] - box[0] < 0.8 * height or box[3] - box[1] < 0.8 * height):
            box = None
    if box is None:
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        box = (left, top, left + side, top + side)
    image.crop(box).resize((512, 512), Image.LANCZOS).save(target, "JPEG", quality=100)


def _baseline_saliency(task: tuple[str, str]) -> None:
    source, target = task
    crop = np.asarray(Image.open(source).convert("RGB"))
    np.save(target, saliency_float(crop))


def _measured(work: Callable[[], None]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (this process + finished worker processes) of ``work``."""
    def cpu() -> float:
        own = resource.getrusage(resource.RUSAGE_SELF)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime

    wall, used = time.perf_counter(), cpu()
    work()
    return time.perf_counter() - wall, cpu() - used


def run_baseline(raw: Path, out: Path, jobs: int) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds and bytes of the two-step recipe on every JPEG of ``raw``."""
    crops, maps = out / "crops", out / "saliency"
    crops.mkdir(parents=True)
    maps.mkdir()
    step1 = [(str(p), str(crops / f"{p.stem}.jpeg")) for p in sorted(raw.glob("*.jpeg"))]
    step2 = [(target, str(maps / f"{Path(target).stem}.npy")) for _, target in step1]

    def work() -> None:
        for _ in parallel_map(_baseline_crop, step1, jobs):
            pass
        for _ in parallel_map(_baseline_saliency, step2, jobs):
            pass

    wall, cpu = _measured(work)
    size = sum(p.stat().st_size for p in [*crops.iterdir(), *maps.iterdir()])
    return wall, cpu, size


def run_stage(raw: Path, out: Path, jobs: int) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds and bytes of ``ssit shards`` (tars, indexes, manifest)."""
    def work() -> None:
        write_shards(raw, out, labels=raw / "labels.csv", dataset="bench", shard_size=1000,
                     jobs=jobs, progress=False)

    wall, cpu = _measured(work)
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    return wall, cpu, size


def saliency_quantisation_error(raw: Path, shards: Path, count: int = 4) -> float:
    """Largest |PNG map / 255 - float map| over a few samples: 0.5/255 when stored losslessly."""
    worst = 0.0
    for sample in list(iter_samples(list_shards(shards)))[:count]:
        source = raw / f"{sample['__key__']}.jpeg"
        crop = crop_fundus(load_image(source).rgb).image
        stored = np.asarray(Image.open(io.BytesIO(sample["sal.png"]))).astype(np.float64) / 255
        worst = max(worst, float(np.abs(stored - saliency_float(crop)).max()))
    return worst


def saliency_cpu_ms(raw: Path, repeats: int = 10) -> float:
    """CPU milliseconds of one saliency map on one core (the cost both recipes share)."""
    crop = crop_fundus(load_image(next(iter(sorted(raw.glob("*.jpeg"))))).rgb).image
    saliency_float(crop)
    started = time.process_time()
    for _ in range(repeats):
        saliency_float(crop)
    return 1000 * (time.process_time() - started) / repeats


def run() -> str:
    """Markdown section with the throughput and size of both recipes."""
    jobs = min(2, available_cores())
    with tempfile.TemporaryDirectory(prefix="ssit-bench-prepare-") as tmp:
        root = Path(tmp)
        raw = root / "raw"
        synthesize(raw, IMAGES, seed=0, height_range=HEIGHTS, jobs=jobs, progress=False)
        megapixels = np.mean([np.prod(Image.open(p).size) / 1e6 for p in raw.glob("*.jpeg")])
        raw_bytes = sum(p.stat().st_size for p in raw.glob("*.jpeg")) / IMAGES
        # Warm the page cache and the worker imports once so both runs start equal.
        for path in raw.iterdir():
            path.read_bytes()
        base_wall, base_cpu, base_bytes = run_baseline(raw, root / "baseline", jobs)
        stage_wall, stage_cpu, stage_bytes = run_stage(raw, root / "shards", jobs)
        error = saliency_quantisation_error(raw, root / "shards")
        saliency_ms = saliency_cpu_ms(raw)
        shutil.rmtree(root / "baseline")

    base_rate, stage_rate = IMAGES / base_wall, IMAGES / stage_wall
    base_ms, stage_ms = 1000 * base_cpu / IMAGES, 1000 * stage_cpu / IMAGES
    base_per, stage_per = base_bytes / IMAGES, stage_bytes / IMAGES
    verdict = "met" if stage_rate >= 5 * base_rate else "not met"
    lines = [
        f"{IMAGES} synthetic EyePACS-like photographs, {megapixels:.1f} MP on average "
        f"({raw_bytes / 1e6:.2f} MB JPEG each), {jobs} worker processes for both recipes, "
        f"{os.cpu_count()} CPU cores on the machine. CPU time is summed over all processes "
        "(steadier than wall time on a shared machine).",
        "",
        "| recipe | images/s (wall) | CPU ms/image | bytes/sample | saliency stored as |",
        "| --- | ---: | ---: | ---: | --- |",
        f"| two-step baseline (full decode, q100 JPEG, float32 .npy) | {base_rate:.2f} | "
        f"{base_ms:.0f} | {base_per / 1e3:,.0f} kB | float32 .npy |",
        f"| `ssit shards` (reduced-scale decode, one pass, tar shards) | {stage_rate:.2f} | "
        f"{stage_ms:.0f} | {stage_per / 1e3:,.0f} kB | 8-bit PNG |",
        f"| ratio | **{stage_rate / base_rate:.1f}x** | **{base_ms / stage_ms:.1f}x** | "
        f"**1/{base_per / stage_per:.1f}** | |",
        "",
        f"Largest difference between a stored 8-bit map and the float map: {error * 255:.2f}/255 "
        "(OpenCV's fine-grained saliency has 256 levels, so the PNG is lossless).",
        "",
        f"Goals: at most 1/6 of the bytes: {'met' if base_per >= 6 * stage_per else 'not met'}; "
        f"at least 5x the throughput: {verdict}. Both recipes compute the same saliency map, "
        f"which alone costs {saliency_ms:.0f} CPU ms per image here, so no data-flow change "
        f"can bring the baseline's {base_ms:.0f} ms below that: the attainable ratio on these "
        f"images is about {base_ms / saliency_ms:.1f}x. Reduced-scale decoding, a single "
        "decode and a single pass remove most of everything else.",
        "",
        f"Command: `{COMMAND}` (or `make bench`).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    print(run())
