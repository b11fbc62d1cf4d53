"""Offline stage: `ssit shards` (default and --fast) against the authors' two-step scripts.

Baseline, the SSiT authors' preprocessing as they run it, with the same number of workers:
  step 1 (their crop.py): decode each photograph fully, Pillow BLUR, find the fundus box with
          NumPy comparisons, crop, resize to 512 (Lanczos), save a quality-100 4:4:4 JPEG;
  step 2 (their saliency_detect.py): read each crop with OpenCV, enhance, grey circle, JPEG
          round trip, OpenCV's fine-grained saliency, radius-240 circle, float32 ``.npy``.
`ssit shards` (default): the same maps and crops in one pass, fast exact saliency, tar shards.
`ssit shards --fast`: reduced-scale decoding, no JPEG round trip; IoU of its maps > 0.5 with
the default's is reported.

Inputs: synthetic photographs at EyePACS's camera sizes (``ssit synth --sizes eyepacs``, each
size in turn). End to end: each recipe on every image with 2 workers, CPU time of this process
and its workers; a warm-up round on a few images first, then rounds alternating the recipes,
the median of the rounds. Steady state and stages: one warmed-up process, a subset of the
images covering every size.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageFilter

from ssit.prepare.crop import crop_fundus, find_fundus_box_paper
from ssit.prepare.decode import load_full_image, load_image
from ssit.prepare.saliency import saliency_map, saliency_map_paper
from ssit.prepare.sample import encode_sample, preprocess_image
from ssit.prepare.shard_format import iter_samples, list_shards
from ssit.prepare.shards import write_shards
from ssit.prepare.synth import EYEPACS_SIZES, synthesize
from ssit.prepare.workers import available_cores, parallel_map

IMAGES = 100
STEADY_IMAGES = 24  # 4 of each size
WARM_UP_IMAGES = 12
ROUNDS = 3
COMMAND = "python -m benchmarks.prepare"
RECIPES = ("baseline", "default", "fast")


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
    crop = image.crop(box).resize((512, 512), Image.LANCZOS)
    crop.save(target, "JPEG", quality=100, subsampling=0)


_BASELINE_CIRCLE = cv2.circle(np.zeros((512, 512)), (256, 256), 240, 1, -1)


def _baseline_saliency(task: tuple[str, str]) -> None:
    source, target = task
    image = cv2.imread(source)
    mask = np.zeros(image.shape)
    cv2.circle(mask, (256, 256), int(512 / 2 * 0.98), (1, 1, 1), -1, 8, 0)
    weighted = cv2.addWeighted(image, 4, cv2.GaussianBlur(image, (0, 0), 512 / 30), -4, 128)
    processed = (weighted * mask + 128 * (1 - mask)).astype(np.uint8)
    processed = cv2.imdecode(cv2.imencode(".jpeg", processed)[1], cv2.IMREAD_COLOR)
    _, saliency = cv2.saliency.StaticSaliencyFineGrained_create().computeSaliency(processed)
    saliency *= _BASELINE_CIRCLE
    np.save(target, saliency)


def _measured(work: Callable[[], None]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (this process + finished worker processes) of ``work``."""
    def cpu() -> float:
        own = resource.getrusage(resource.RUSAGE_SELF)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime

    wall, used = time.perf_counter(), cpu()
    work()
    return time.perf_counter() - wall, cpu() - used


def _process_cpu_ms(work: Callable[[Path], object], sources: list[Path]) -> float:
    """CPU milliseconds per image of ``work`` in this process, after one warm-up call."""
    work(sources[0])  # imports, numba's cache, lookup tables
    start = time.process_time()
    for path in sources:
        work(path)
    return 1000 * (time.process_time() - start) / len(sources)


def per_image_cpu(sources: list[Path], out: Path) -> dict[str, float]:
    """CPU milliseconds per image of each recipe's per-image work, in this process, warmed up.

    No worker start-up and no file listing: the steady state of a long run. Baseline: both
    scripts' functions; ours: decode to encoded members.
    """
    out.mkdir(parents=True)

    def baseline(path: Path) -> None:
        crop = out / f"{path.stem}.jpeg"
        _baseline_crop((str(path), str(crop)))
        _baseline_saliency((str(crop), str(out / f"{path.stem}.npy")))

    def ours(fast: bool) -> Callable[[Path], None]:
        def work(path: Path) -> None:
            encode_sample(preprocess_image(path, fast=fast), source=path.name, grade=0,
                          dataset="bench")
        return work

    with _one_opencv_thread():
        return {"baseline": _process_cpu_ms(baseline, sources),
                "default": _process_cpu_ms(ours(False), sources),
                "fast": _process_cpu_ms(ours(True), sources)}


@contextlib.contextmanager
def _one_opencv_thread() -> Iterator[None]:
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(threads)


def _timed(clock: dict[str, float], name: str, work: Callable[[], Any]) -> Any:
    """``work()``, adding its CPU seconds to ``clock[name]``."""
    start = time.process_time()
    result = work()
    clock[name] = clock.get(name, 0.0) + time.process_time() - start
    return result


def _default_stages(path: Path, clock: dict[str, float]) -> None:
    """The default recipe step by step (as :func:`preprocess_image` runs it), timed."""
    timed = functools.partial(_timed, clock)

    image = timed("full-resolution decode (Pillow)", lambda: load_full_image(path)[0])
    box = timed("the authors' crop box", lambda: find_fundus_box_paper(image)[0])
    crop = timed("crop and Lanczos resize to 512",
                 lambda: np.asarray(image.crop(box).resize((512, 512), Image.LANCZOS)))
    jpeg = io.BytesIO()

    def round_trip() -> np.ndarray:
        Image.fromarray(crop).save(jpeg, "JPEG", quality=100, subsampling=0)
        return cv2.imdecode(np.frombuffer(jpeg.getbuffer(), np.uint8), cv2.IMREAD_COLOR)

    bgr = timed("quality-100 JPEG and its decode", round_trip)
    saliency = timed("saliency (exact)", lambda: saliency_map_paper(bgr))
    timed("PNG of the map", lambda: cv2.imencode(".png", saliency))


def _fast_stages(path: Path, clock: dict[str, float]) -> None:
    """The --fast recipe step by step, timed."""
    timed = functools.partial(_timed, clock)

    rgb = timed("reduced-scale decode", lambda: load_image(path, target=512).rgb)
    crop = timed("crop box and area resize", lambda: crop_fundus(rgb).image)
    saliency = timed("saliency (background blurred at 1/4)", lambda: saliency_map(crop))
    timed("quality-95 JPEG and PNG of the map",
          lambda: (Image.fromarray(crop).save(io.BytesIO(), "JPEG", quality=95),
                   cv2.imencode(".png", saliency)))


def stage_costs(sources: list[Path]) -> dict[str, dict[str, float]]:
    """CPU milliseconds per image of each stage of both recipes, in this process, warmed up."""
    costs = {}
    with _one_opencv_thread():
        for name, stages in (("default", _default_stages), ("fast", _fast_stages)):
            stages(sources[0], {})
            clock: dict[str, float] = {}
            for path in sources:
                stages(path, clock)
            costs[name] = {k: 1000 * v / len(sources) for k, v in clock.items()}
    return costs


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


def run_stage(raw: Path, out: Path, jobs: int, fast: bool) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds and bytes of ``ssit shards`` (tars, indexes, manifest)."""
    def work() -> None:
        write_shards(raw, out, labels=raw / "labels.csv", dataset="bench", shard_size=1000,
                     jobs=jobs, progress=False, fast=fast)

    wall, cpu = _measured(work)
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    return wall, cpu, size


def _run_recipe(name: str, raw: Path, out: Path, jobs: int) -> tuple[float, float, int]:
    if name == "baseline":
        return run_baseline(raw, out, jobs)
    return run_stage(raw, out, jobs, fast=name == "fast")


def _maps(shards: Path) -> dict[str, np.ndarray]:
    return {s["__key__"]: np.asarray(Image.open(io.BytesIO(s["sal.png"])))
            for s in iter_samples(list_shards(shards))}


def map_agreement(default: Path, fast: Path, baseline_maps: Path) -> tuple[float, float, int]:
    """Median and minimum IoU (maps > 0.5) of --fast against the default, and how many default
    maps differ from the baseline's (rounded to 8 bits)."""
    ours, quick = _maps(default), _maps(fast)
    ious = []
    for key, saliency in ours.items():
        a, b = saliency > 127, quick[key] > 127
        ious.append((a & b).sum() / max(1, (a | b).sum()))
    differing = sum(
        not np.array_equal(np.rint(np.load(baseline_maps / f"{key}.npy") * 255), saliency)
        for key, saliency in ours.items()
    )
    return float(np.median(ious)), float(np.min(ious)), differing


def _subset(raw: Path, names: list[str], out: Path) -> Path:
    """A folder of hard links to some of ``raw``'s photographs, with their labels."""
    out.mkdir()
    for name in names:
        os.link(raw / f"{name}.jpeg", out / f"{name}.jpeg")
    lines = (raw / "labels.csv").read_text().splitlines()
    wanted = set(names)
    (out / "labels.csv").write_text("\n".join(
        [lines[0], *(line for line in lines[1:] if line.split(",")[0] in wanted)]) + "\n")
    return out


def end_to_end(raw: Path, root: Path, jobs: int, names: list[str]
               ) -> tuple[dict[str, tuple[float, float, int]], tuple[float, float, int]]:
    """Median (wall, CPU, bytes) of each recipe over ``ROUNDS`` alternating rounds, after a
    discarded warm-up round on a few images; and the map agreement of the last round."""
    warm = _subset(raw, names[:WARM_UP_IMAGES], root / "warm")
    for name in RECIPES:
        _run_recipe(name, warm, root / "warm-out" / name, jobs)
    runs: dict[str, list[tuple[float, float, int]]] = {name: [] for name in RECIPES}
    for round_number in range(ROUNDS):
        out = root / f"round{round_number}"
        for name in RECIPES:
            runs[name].append(_run_recipe(name, raw, out / name, jobs))
        agreement = map_agreement(out / "default", out / "fast", out / "baseline" / "saliency")
        shutil.rmtree(out)
    medians = {}
    for name, results in runs.items():
        cpu = statistics.median(r[1] for r in results)
        medians[name] = next(r for r in results if r[1] == cpu)
    return medians, agreement


NAMES = {
    "baseline": "authors' two scripts (q100 JPEG + float32 .npy)",
    "default": "`ssit shards` (authors' recipe, one pass, tar shards)",
    "fast": "`ssit shards --fast` (reduced-scale decode)",
}


def run() -> str:
    """Markdown section with the CPU cost per image of the three recipes, and of each stage."""
    jobs = min(2, available_cores())
    with tempfile.TemporaryDirectory(prefix="ssit-bench-prepare-") as tmp:
        root = Path(tmp)
        raw = root / "raw"
        synthesize(raw, IMAGES, seed=0, sizes=EYEPACS_SIZES, jobs=jobs, progress=False)
        names = [line.split(",")[0] for line in
                 (raw / "labels.csv").read_text().splitlines()[1:]]  # in the order of sizes
        paths = [raw / f"{name}.jpeg" for name in names]
        megapixels = np.mean([np.prod(Image.open(p).size) / 1e6 for p in paths])
        raw_bytes = sum(p.stat().st_size for p in paths) / IMAGES
        for path in paths:  # warm the page cache so every run starts equal
            path.read_bytes()
        steady_sources = paths[:STEADY_IMAGES]
        steady = per_image_cpu(steady_sources, root / "steady")
        stages = stage_costs(steady_sources)
        results, (iou_median, iou_min, differing) = end_to_end(raw, root, jobs, names)
    return _report(jobs, megapixels, raw_bytes, results, steady, stages,
                   (iou_median, iou_min, differing))


def _report(jobs: int, megapixels: float, raw_bytes: float,
            results: dict[str, tuple[float, float, int]], steady: dict[str, float],
            stages: dict[str, dict[str, float]], agreement: tuple[float, float, int]) -> str:
    sizes = ", ".join(f"{w}x{h}" for w, h in EYEPACS_SIZES)
    base_cpu = results["baseline"][1]
    lines = [
        f"{IMAGES} synthetic photographs at EyePACS's camera sizes ({sizes}, in equal parts), "
        f"{megapixels:.1f} MP on average ({raw_bytes / 1e6:.2f} MB JPEG each), {jobs} worker "
        f"processes for every recipe, {os.cpu_count()} CPU cores on the machine.",
        "",
        f"End to end, all {IMAGES} images: CPU time summed over this process and its workers "
        f"(worker start-up included), median of {ROUNDS} rounds alternating the recipes after "
        f"a discarded warm-up round on {WARM_UP_IMAGES} images:",
        "",
        "| recipe | CPU ms/image | vs baseline | images per CPU-second | bytes/sample |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for key, (_, cpu, size) in results.items():
        lines.append(f"| {NAMES[key]} | {1000 * cpu / IMAGES:.0f} | {base_cpu / cpu:.1f}x | "
                     f"{IMAGES / cpu:.2f} | {size / IMAGES / 1e3:,.0f} kB |")
    lines += [
        "",
        f"Steady state, per image in one warmed-up process ({STEADY_IMAGES} of the images, "
        "every size equally; no worker start-up):",
        "",
        "| recipe | CPU ms/image | vs baseline |",
        "| --- | ---: | ---: |",
    ]
    for key in RECIPES:
        lines.append(f"| {NAMES[key]} | {steady[key]:.0f} | "
                     f"{steady['baseline'] / steady[key]:.1f}x |")
    lines += ["", "Where the time goes, per image in the same process and images:", "",
              "| recipe | stage | CPU ms/image |", "| --- | --- | ---: |"]
    for recipe, costs in stages.items():
        for stage, cost in costs.items():
            lines.append(f"| {recipe} | {stage} | {cost:.1f} |")
        lines.append(f"| {recipe} | total | {sum(costs.values()):.1f} |")
    iou_median, iou_min, differing = agreement
    lines += [
        "",
        f"Default maps differing from the baseline's (8-bit): {differing} of {IMAGES}. "
        f"IoU of `--fast` maps > 0.5 against the default: median {iou_median:.3f}, "
        f"minimum {iou_min:.3f}.",
        "",
        f"Command: `{COMMAND}` (or `make bench`).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    print(run())
