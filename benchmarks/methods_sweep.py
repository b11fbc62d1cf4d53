"""The sweep behind a methods-table setting: each point pre-trains one method with a few
overrides on the table's pre-training set and grades it on the grading set's validation split.

Points are chosen by validation kappa only (the test kappa is recorded beside it, and read only
for the finished table). Results go to ``runs/bench-methods-sweep/results.jsonl``, one line per
point; a point already there is not run again, so the sweep can be stopped and resumed. Each
point is written down in ``SWEEP`` below; ``--out BENCHMARKS.md`` writes the whole record.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import statistics
import sys
import time
from pathlib import Path

from benchmarks.methods_table import (
    FLOOR_GRADING,
    REPO,
    SCALES,
    Scale,
    _grade,
    _make_sets,
    _pretrain,
)

logger = logging.getLogger(__name__)

COMMAND = "python -m benchmarks.methods_sweep --point NAME... --out BENCHMARKS.md"
SECTION_KEY = "methods_sweep"
STEP_LINE = re.compile(r"step (\d+) epoch ([\d.]+) loss ([-\d.e+]+)")

# name: (method, epochs, overrides). The table's `cpu` backbone and sets; only what a point
# changes is listed. Views are given as overrides of the method's own recipe.
WEAK_COLOUR = ("{crop_scale: [0.3, 1.0], brightness: 0.4, contrast: 0.4, saturation: 0.2, "
               "hue: 0.05, grayscale_p: 0.0, blur_p: 0.0}")
MILD = "{crop_scale: [0.5, 1.0], jitter_p: 0.0, grayscale_p: 0.0, blur_p: 0.0}"
SWEEP: dict[str, tuple[str, int, tuple[str, ...]]] = {
    "simclr-paper-10": ("SimCLR", 10, ()),
    "simclr-lr10-10": ("SimCLR", 10, ("optim.lr=1.0e-2",)),
    "simclr-b64-lr10-10": ("SimCLR", 10, ("optim.batch_size=64", "optim.lr=1.0e-2")),
    "mocov3-paper-10": ("MoCo v3", 10, ()),
    "mocov3-lr10-10": ("MoCo v3", 10, ("optim.lr=1.0e-2",)),
    "dino-paper-10": ("DINO", 10, ()),
    "dino-lr10-10": ("DINO", 10, ("optim.lr=1.0e-2",)),
    "mae-paper-10": ("MAE", 10, ()),
    "mae-lr10-10": ("MAE", 10, ("optim.lr=3.0e-3",)),
    "gravis-paper-5": ("GraVIS", 5, ()),
    "simclr-crop30-lr10-20": ("SimCLR", 20, ("optim.lr=1.0e-2",
                                             "method.augmentation={crop_scale: [0.3, 1.0]}")),
    "simclr-weakcolour-lr10-20": ("SimCLR", 20, ("optim.lr=1.0e-2", f"method.augmentation="
                                                 f"{WEAK_COLOUR}")),
    "simclr-mild-lr10-20": ("SimCLR", 20, ("optim.lr=1.0e-2", f"method.augmentation={MILD}")),
    "mae-lr10-30": ("MAE", 30, ("optim.lr=3.0e-3",)),
}


def _last_epoch_loss(run: Path, epochs: int) -> float | None:
    """Mean of the logged losses of the last epoch (from the run's ``log.txt``)."""
    log = run / "log.txt"
    if not log.is_file():
        return None
    losses = [float(m.group(3)) for m in map(STEP_LINE.search, log.read_text().splitlines())
              if m and float(m.group(2)) > epochs - 1]
    return statistics.mean(losses) if losses else None


def run_point(name: str, scale: Scale, work: Path, sets: tuple[Path, Path]) -> dict:
    """Pre-train and grade one point; its record."""
    method, epochs, overrides = SWEEP[name]
    point_scale = Scale(**{**scale.__dict__, "epochs": epochs,
                           "backbone": (*scale.backbone, *overrides),
                           "hybrid": (*scale.hybrid, *overrides)})
    run = work / name
    started = time.perf_counter()
    checkpoint = _pretrain(point_scale, method, 0, run / "pretrain", shards=sets[0])
    trained = time.perf_counter()
    graded = _grade(point_scale, checkpoint, 0, sets[1], run / "grade")
    return {"point": name, "method": method, "epochs": epochs, "overrides": list(overrides),
            "kappa": graded, "last_epoch_loss": _last_epoch_loss(run / "pretrain", epochs),
            "pretrain_min": (trained - started) / 60,
            "grade_min": (time.perf_counter() - trained) / 60}


def floor_record(scale: Scale, work: Path, sets: tuple[Path, Path]) -> dict:
    """The random encoder graded the same way (seed 0)."""
    graded = _grade(scale, "random", 0, sets[1], work / "random" / "grade", FLOOR_GRADING)
    return {"point": "random", "method": "random encoder", "epochs": 0, "overrides": [],
            "kappa": graded, "last_epoch_loss": None, "pretrain_min": 0.0, "grade_min": 0.0}


def format_section(records: list[dict]) -> str:
    """Markdown record of every point, in the order run."""
    lines = [
        "## Methods sweep at CPU scale (validation split)",
        "",
        f"Command: `{COMMAND}`. Table `cpu` backbone (4-block ViT-Ti/16 at 96 px) and sets; "
        "seed 0; each point changes only what it lists. Selection reads the validation "
        "kappa; the test kappa is shown for the record.",
        "",
        "| point | method | epochs | changes | val linear | val kNN | test linear | "
        "last-epoch loss | min |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in records:
        loss = "-" if r["last_epoch_loss"] is None else f"{r['last_epoch_loss']:.3f}"
        k = r["kappa"]
        lines.append(
            f"| {r['point']} | {r['method']} | {r['epochs']} | "
            f"{' '.join(f'`{o}`' for o in r['overrides']) or 'paper recipe'} | "
            f"{k['linear']['val']:.3f} | {k['knn']['val']:.3f} | {k['linear']['test']:.3f} | "
            f"{loss} | {r['pretrain_min'] + r['grade_min']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from benchmarks.run import replace_section

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--point", nargs="*", default=list(SWEEP), choices=SWEEP)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    scale = SCALES["cpu"]
    work = REPO / "runs" / "bench-methods-sweep"
    work.mkdir(parents=True, exist_ok=True)
    sets = _make_sets(scale, REPO / "runs" / f"bench-methods-{scale.name}")
    results = work / "results.jsonl"
    done = {json.loads(line)["point"]: json.loads(line)
            for line in (results.read_text().splitlines() if results.is_file() else [])}
    if "random" not in done:
        done["random"] = floor_record(scale, work, sets)
        with results.open("a") as handle:
            handle.write(json.dumps(done["random"]) + "\n")
    for name in args.point:
        if name in done:
            continue
        try:
            record = run_point(name, scale, work, sets)
        except Exception:
            logger.exception("point %s failed; the sweep goes on", name)
            continue
        logger.info("%s: %s", name, record["kappa"])
        done[name] = record
        with results.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
    section = format_section(list(done.values()))
    print(section)
    if args.out is not None:
        args.out.write_text(replace_section(args.out.read_text(), SECTION_KEY, section))
    return 0


if __name__ == "__main__":
    sys.exit(main())
