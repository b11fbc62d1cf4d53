"""The methods table: every hosted method pre-trains the same backbone with the same budget on
the same synthetic set and is graded by kNN and a linear probe on the same held-out set.

The pre-training set and the labelled grading set are two synthetic sets made with other seeds
(no image in common). Each method runs through the real launchers: ``launch/pretrain.py
--local`` for pre-training, ``launch/grade.py --local`` for grading; a random encoder of the
same architecture is the floor. Three pre-training seeds give a mean and a spread (the sample
standard deviation). On the CPU the backbone is the 4-block ViT-Ti/16 of ``demo_ssit_cpu`` at 96
px; where CUDA is available it is ViT-S/16 at 224 px with a larger set and budget.
``SSIT_METHODS_SCALE=smoke`` runs a few images for one epoch with one seed, to check the
wiring only (its numbers mean nothing).
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ssit.prepare.workers import available_cores

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
COMMAND = "python -m benchmarks.run --only methods_table   # or: python -m benchmarks.methods_table"
PROTOCOLS = ("knn", "linear")


@dataclass(frozen=True)
class Scale:
    """Sizes of one setting of the table."""

    name: str
    pretrain_images: int
    grade_images: int
    epochs: int
    seeds: tuple[int, ...]
    cpu: bool
    backbone: tuple[str, ...]  # overrides that put every method on the same backbone
    grade_overrides: tuple[str, ...]


TINY_VIT = ("backbone.name=vit", "backbone.arch=vit_tiny_patch16_224", "backbone.img_size=96",
            "backbone.kwargs={depth: 4}")
SMALL_VIT = ("backbone.name=vit", "backbone.arch=vit_small_patch16_224",
             "backbone.img_size=224", "backbone.kwargs={}", "device=cuda", "precision=auto",
             "data.num_threads=4")
SCALES = {
    "cpu": Scale("cpu", 600, 1000, 10, (0, 1, 2), True, TINY_VIT, ()),
    "gpu": Scale("gpu", 4000, 2000, 50, (0, 1, 2), False, SMALL_VIT,
                 ("encoder.arch=vit_small_patch16_224", "encoder.img_size=224",
                  "encoder.model_kwargs={}", "train.device=cuda", "data.num_workers=8")),
    "smoke": Scale("smoke", 64, 100, 1, (0,), True, TINY_VIT, ()),
}

# method: (packaged config, overrides that make it that method). MoCo v3 is SSiT without
# key-patch selection, masking or the saliency head. The methods whose papers scale the
# learning rate linearly with the batch (SSiT, MoCo v3, SimCLR, and MsSSL with the SSiT
# objective) do so here too: at the demo's small batches an unscaled rate ruins SSiT's features.
METHODS = {
    "SSiT": ("demo_ssit_cpu", ()),
    "MoCo v3": ("demo_ssit_cpu", ("method.mask_ratio=0.0", "method.pool=null",
                                  "method.segmentation=false", "method.w_ss=0.0")),
    "SimCLR": ("simclr_demo_cpu", ("optim.scale_lr=true",)),
    "GraVIS": ("gravis_demo_cpu", ()),
    "MsSSL": ("msssl_demo_cpu", ("optim.scale_lr=true",)),
}
HYBRID_METHODS = {"MsSSL"}  # their own backbone (ViT + CNN): only the input size is shared


def _run(argv: list[str], log: Path) -> None:
    """Run a command, its output into ``log``; raise with the log's end when it fails."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as handle:
        done = subprocess.run(argv, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise RuntimeError(f"{' '.join(argv[:3])} failed ({log}):\n{tail}")


def _make_sets(scale: Scale, work: Path) -> tuple[Path, Path]:
    """The unlabelled pre-training shards (seed 0) and the labelled grading shards (seed 1)."""
    ssit = [sys.executable, "-m", "ssit"]
    made = []
    for name, n, seed, labelled in (("pretrain", scale.pretrain_images, 0, False),
                                    ("grade", scale.grade_images, 1, True)):
        raw, shards = work / f"raw-{name}", work / f"shards-{name}"
        if not (shards / "manifest.json").is_file():
            _run([*ssit, "synth", "--out", str(raw), "--n", str(n), "--seed", str(seed),
                  "--height", "400", "480"], work / f"synth-{name}.log")
            labels = ["--labels", str(raw / "labels.csv")] if labelled else []
            _run([*ssit, "shards", "--input", str(raw), *labels, "--out", str(shards),
                  "--dataset", f"methods-{name}", "--shard-size", "100"],
                 work / f"shards-{name}.log")
        made.append(shards)
    return made[0], made[1]


def _pretrain(scale: Scale, method: str, seed: int, shards: Path, run: Path) -> str:
    config, overrides = METHODS[method]
    backbone = (f"backbone.img_size={scale.backbone[2].split('=')[1]}",) \
        if method in HYBRID_METHODS else scale.backbone
    device = ["--cpu", "--tasks-per-node", "1"] if scale.cpu else ["--gpus-per-node", "1"]
    _run([sys.executable, "launch/pretrain.py", "--local", *device, "--time", "600",
          "--config", config, "--output", str(run), f"data.shards={shards}", f"seed={seed}",
          f"optim.epochs={scale.epochs}", "optim.warmup_epochs=1", "log.progress_bar=false",
          "log.image_every_steps=null", *overrides, *backbone], run.with_suffix(".log"))
    return json.loads((run / "summary.json").read_text())["final_checkpoint"]


def _grade(scale: Scale, checkpoint: str, shards: Path, run: Path) -> dict[str, float]:
    device = ["--cpu"] if scale.cpu else []
    _run([sys.executable, "launch/grade.py", "--local", *device, "--checkpoint", checkpoint,
          "--dataset", "shards", "--data", str(shards), "--protocol", *PROTOCOLS,
          "--config", "grade_demo_cpu", "--output", str(run), *scale.grade_overrides],
         run.with_suffix(".log"))
    results = json.loads((run / "summary.json").read_text())
    return {job["protocol"]: job["test"][job["selected"]]["kappa"] for job in results}


def _available_methods() -> list[str]:
    configs = resources.files("ssit") / "configs"
    return [m for m, (config, _) in METHODS.items() if (configs / f"{config}.yaml").is_file()]


def _cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def run() -> str:
    """Pre-train and grade every method; return the markdown section."""
    import torch

    scale_name = os.environ.get("SSIT_METHODS_SCALE",
                                "gpu" if torch.cuda.is_available() else "cpu")
    scale = SCALES[scale_name]
    work = REPO / "runs" / f"bench-methods-{scale.name}"
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    pretrain_shards, grade_shards = _make_sets(scale, work)

    def pretrain_and_grade(method: str, seed: int) -> tuple[dict[str, float], float]:
        run_started = time.perf_counter()
        run_dir = work / f"{method.lower().replace(' ', '')}-seed{seed}"
        checkpoint = _pretrain(scale, method, seed, pretrain_shards, run_dir / "pretrain")
        graded = _grade(scale, checkpoint, grade_shards, run_dir / "grade")
        logger.info("%s seed %d: %s", method, seed, graded)
        return graded, time.perf_counter() - run_started

    # Every job runs single-threaded, so the runs share the cores side by side.
    runs = [(method, seed) for method in _available_methods() for seed in scale.seeds]
    workers = min(available_cores(), 4) if scale.cpu else 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        floor = pool.submit(_grade, scale, "random", grade_shards, work / "grade-random")
        results = {run: pool.submit(pretrain_and_grade, *run) for run in runs}
        kappas = {"random encoder": {p: [floor.result()[p]] for p in PROTOCOLS}}
        minutes: dict[str, float] = {}
        for (method, _), future in results.items():
            graded, seconds = future.result()
            row = kappas.setdefault(method, {p: [] for p in PROTOCOLS})
            for protocol in PROTOCOLS:
                row[protocol].append(graded[protocol])
            minutes[method] = minutes.get(method, 0.0) + seconds / 60 / len(scale.seeds)
    total_min = (time.perf_counter() - started) / 60
    lines = [
        "## Methods table (same backbone, budget, data and grading)",
        "",
        f"Command: `{COMMAND}` (setting `{scale.name}`; `SSIT_METHODS_SCALE=cpu|gpu|smoke`).",
        f"Pre-training: {scale.pretrain_images} unlabelled synthetic images (seed 0), "
        f"{scale.epochs} epochs, backbone `{' '.join(scale.backbone[:4])}` (MsSSL: its "
        "hybrid backbone at the same input size). Grading: "
        f"{scale.grade_images} other labelled synthetic images (seed 1), split 50/20/30 "
        "(the test split is never used for selection), `grade_demo_cpu`. Test quadratic kappa, "
        f"mean ± standard deviation over pre-training seeds {list(scale.seeds)}. "
        f"Whole table: {total_min:.1f} min.",
        "",
        f"| encoder | kNN kappa | linear kappa | min per seed (pre-train + grade, {workers} "
        "side by side) |",
        "| --- | --- | --- | --- |",
    ]
    for name, by_protocol in kappas.items():
        spent = f"{minutes[name]:.1f}" if name in minutes else "-"
        lines.append(f"| {name} | {_cell(by_protocol['knn'])} | "
                     f"{_cell(by_protocol['linear'])} | {spent} |")
    return "\n".join(lines)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(run())
