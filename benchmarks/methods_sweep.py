"""The sweep behind a methods-table setting: each point pre-trains one method with a few
overrides on the table's pre-training set and grades it with one linear-probe setting (a
"probe") on the grading set's validation split.

Points are chosen by validation kappa only (the test kappa is recorded beside it, and read only
for the finished table). Results go to ``runs/bench-methods-sweep/results.jsonl``, one line per
point and probe; a pair already there is not run again, and a point pre-trained once is only
graded again under another probe, so the sweep can be stopped and resumed. Every point and
probe is written down below; ``--out BENCHMARKS.md`` writes the whole record, and ``--from
BENCHMARKS.md`` takes the pairs a results file lacks from that record (a fresh clone has no
results file: without it, the next ``--out`` would write only the points run since).
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
    GREY_VIEWS,
    MILD_VIEWS,
    REPO,
    SCALES,
    TWO_BLOCKS,
    Scale,
    _grade,
    _initial_checkpoint,
    _make_sets,
    _pretrain,
)

logger = logging.getLogger(__name__)

COMMAND = ("python -m benchmarks.methods_sweep --probe PROBE --point NAME... "
           "--out BENCHMARKS.md")
SECTION_KEY = "methods_sweep"
STEP_LINE = re.compile(r"step (\d+) epoch ([\d.]+) loss ([-\d.e+]+)")
PROBE_LINE = re.compile(r"^Probe `([^`]+)`:")
CODE = re.compile(r"`([^`]+)`")

# name: (method, epochs, overrides). The table's `cpu` backbone and sets; only what a point
# changes is listed. Views are given as overrides of the method's own recipe.
WEAK_COLOUR = ("{crop_scale: [0.3, 1.0], brightness: 0.4, contrast: 0.4, saturation: 0.2, "
               "hue: 0.05, grayscale_p: 0.0, blur_p: 0.0}")
# Crop-only views: the paper's smaller crops, no colour jitter, grayscale or blur.
CROP_ONLY = "{crop_scale: [0.2, 1.0], jitter_p: 0.0, grayscale_p: 0.0, blur_p: 0.0}"
# Linear-probe settings (grading overrides of grade_demo_cpu, which trains 15 epochs at 1e-2:
# on these features that probe has not converged, its validation kappa still rising).
PROBES: dict[str, tuple[str, ...]] = {
    "probe-15": (),
    "probe-100": ("train.epochs=100",),
    "probe-100-lr0.1": ("train.epochs=100", "train.lr=0.1"),
    "probe-300-lr0.03": ("train.epochs=300", "train.lr=0.03"),
    "probe-1000-lr0.03": ("train.epochs=1000", "train.lr=0.03"),
}
DEFAULT_PROBE = "probe-300-lr0.03"
# Floors: the random encoder graded with these encoder settings; `random-msssl...` is MsSSL's
# hybrid as initialised (at the size it is graded at).
FLOORS: dict[str, tuple[str, ...]] = {
    "random": (),
    "random-128px": ("encoder.img_size=128",),
    "random-64px": ("encoder.img_size=64",),
    "random-msssl": (),
    "random-msssl-64px": ("encoder.img_size=64",),
    "random-d2": (f"encoder.model_kwargs={TWO_BLOCKS}",),
    "random-msssl-d2": (f"encoder.model_kwargs={TWO_BLOCKS}",),
}
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
    "gravis-lr10-5": ("GraVIS", 5, ("optim.lr=1.0e-2",)),
    "simclr-weakcolour-lr10-20": ("SimCLR", 20, ("optim.lr=1.0e-2", f"method.augmentation="
                                                 f"{WEAK_COLOUR}")),
    "simclr-mild-lr10-20": ("SimCLR", 20, ("optim.lr=1.0e-2", f"method.augmentation={MILD_VIEWS}")),
    "simclr-mild-10": ("SimCLR", 10, (f"method.augmentation={MILD_VIEWS}",)),
    "simclr-128px-weakcolour-lr10-20": ("SimCLR", 20, (
        "backbone.img_size=128", "optim.lr=1.0e-2", f"method.augmentation={WEAK_COLOUR}")),
    "simclr-weakcolour-lr30-20": ("SimCLR", 20, ("optim.lr=3.0e-2",
                                                 f"method.augmentation={WEAK_COLOUR}")),
    "simclr-weakcolour-t05-lr10-20": ("SimCLR", 20, ("optim.lr=1.0e-2", "method.temperature=0.5",
                                                     f"method.augmentation={WEAK_COLOUR}")),
    "simclr-weakcolour-lr10-60": ("SimCLR", 60, ("optim.lr=1.0e-2",
                                                 f"method.augmentation={WEAK_COLOUR}")),
    "mae-lr3-20": ("MAE", 20, ("optim.lr=1.0e-3",)),
    "ssit-paper-10": ("SSiT", 10, ()),
    "msssl-paper-10": ("MsSSL", 10, ()),
    "dino-paper-20": ("DINO", 20, ()),
    "mocov3-mild-lr10-20": ("MoCo v3", 20, ("optim.lr=1.0e-2",
                                            f"method.view1_augmentation={MILD_VIEWS}",
                                            f"method.view2_augmentation={MILD_VIEWS}")),
    "mocov3-mild-10": ("MoCo v3", 10, (f"method.view1_augmentation={MILD_VIEWS}",
                                       f"method.view2_augmentation={MILD_VIEWS}")),
    "gravis-paper-10": ("GraVIS", 10, ()),
    "gravis-lr10-10": ("GraVIS", 10, ("optim.lr=1.0e-2",)),
    "gravis-mild-lr10-10": ("GraVIS", 10, ("optim.lr=1.0e-2", f"method.augmentation={MILD_VIEWS}")),
    "simclr-croponly-10": ("SimCLR", 10, (f"method.augmentation={CROP_ONLY}",)),
    "simclr-mild-20": ("SimCLR", 20, (f"method.augmentation={MILD_VIEWS}",)),
    "mocov3-croponly-10": ("MoCo v3", 10, (f"method.view1_augmentation={CROP_ONLY}",
                                           f"method.view2_augmentation={CROP_ONLY}")),
    "simclr-grey-10": ("SimCLR", 10, (f"method.augmentation={GREY_VIEWS}",)),
    "mocov3-grey-10": ("MoCo v3", 10, (f"method.view1_augmentation={GREY_VIEWS}",
                                       f"method.view2_augmentation={GREY_VIEWS}")),
    "gravis-grey-10": ("GraVIS", 10, (f"method.augmentation={GREY_VIEWS}",)),
    "mocov3-mild-b16-10": ("MoCo v3", 10, ("optim.batch_size=16",
                                           f"method.view1_augmentation={MILD_VIEWS}",
                                           f"method.view2_augmentation={MILD_VIEWS}")),
    "mocov3-mild-20": ("MoCo v3", 20, (f"method.view1_augmentation={MILD_VIEWS}",
                                       f"method.view2_augmentation={MILD_VIEWS}")),
    # the `cpu-long` choices at 64 px (fewer tokens: about half the compute of a step)
    "ssit-64px-10": ("SSiT", 10, ("backbone.img_size=64",)),
    "mocov3-64px-mild-20": ("MoCo v3", 20, ("backbone.img_size=64",
                                            f"method.view1_augmentation={MILD_VIEWS}",
                                            f"method.view2_augmentation={MILD_VIEWS}")),
    "simclr-64px-grey-10": ("SimCLR", 10, ("backbone.img_size=64",
                                           f"method.augmentation={GREY_VIEWS}")),
    "gravis-64px-grey-10": ("GraVIS", 10, ("backbone.img_size=64",
                                           f"method.augmentation={GREY_VIEWS}")),
    "msssl-64px-10": ("MsSSL", 10, ("backbone.img_size=64",)),
    "dino-64px-20": ("DINO", 20, ("backbone.img_size=64", "method.local_crops_size=32")),
    "mae-64px-10": ("MAE", 10, ("backbone.img_size=64",)),
    # the `cpu-long` choices with a 2-block ViT (MsSSL: its ViT branch)
    "ssit-d2-10": ("SSiT", 10, (f"backbone.kwargs={TWO_BLOCKS}",)),
    "mocov3-d2-mild-20": ("MoCo v3", 20, (f"backbone.kwargs={TWO_BLOCKS}",
                                          f"method.view1_augmentation={MILD_VIEWS}",
                                          f"method.view2_augmentation={MILD_VIEWS}")),
    "simclr-d2-grey-10": ("SimCLR", 10, (f"backbone.kwargs={TWO_BLOCKS}",
                                         f"method.augmentation={GREY_VIEWS}")),
    "gravis-d2-grey-10": ("GraVIS", 10, (f"backbone.kwargs={TWO_BLOCKS}",
                                         f"method.augmentation={GREY_VIEWS}")),
    "msssl-d2-10": ("MsSSL", 10, (f"backbone.kwargs={TWO_BLOCKS}",)),
    "dino-d2-20": ("DINO", 20, (f"backbone.kwargs={TWO_BLOCKS}",)),
    "dino-d2-10": ("DINO", 10, (f"backbone.kwargs={TWO_BLOCKS}",)),
    "mocov3-d2-mild-10": ("MoCo v3", 10, (f"backbone.kwargs={TWO_BLOCKS}",
                                          f"method.view1_augmentation={MILD_VIEWS}",
                                          f"method.view2_augmentation={MILD_VIEWS}")),
    "mae-d2-10": ("MAE", 10, (f"backbone.kwargs={TWO_BLOCKS}",)),
}
# grading keys a floor's overrides use -> the pre-training keys that build the same model
GRADING_TO_PRETRAINING = {"encoder.img_size": "backbone.img_size",
                          "encoder.model_kwargs": "backbone.kwargs"}


def _last_epoch_loss(run: Path, epochs: int) -> float | None:
    """Mean of the logged losses of the last epoch (from the run's ``log.txt``)."""
    log = run / "log.txt"
    if not log.is_file():
        return None
    losses = [float(m.group(3)) for m in map(STEP_LINE.search, log.read_text().splitlines())
              if m and float(m.group(2)) > epochs - 1]
    return statistics.mean(losses) if losses else None


def _renamed(overrides: tuple[str, ...], key: str, as_key: str) -> tuple[str, ...]:
    """The overrides of ``key`` among ``overrides``, given as overrides of ``as_key``."""
    return tuple(f"{as_key}={o.split('=', 1)[1]}" for o in overrides if o.startswith(f"{key}="))


def _point_scale(scale: Scale, epochs: int, overrides: tuple[str, ...]) -> Scale:
    """``scale`` with a point's epochs and overrides, graded by the probe alone."""
    return Scale(**{**scale.__dict__, "epochs": epochs, "grade_overrides": (),
                    "backbone": (*scale.backbone, *overrides),
                    "hybrid": (*scale.hybrid, *overrides)})


def run_point(name: str, probe: str, scale: Scale, work: Path, sets: tuple[Path, Path]) -> dict:
    """Pre-train one point (unless done before) and grade it with ``probe``; its record."""
    method, epochs, overrides = SWEEP[name]
    point_scale = _point_scale(scale, epochs, overrides)
    run = work / name
    started = time.perf_counter()
    done = sorted((run / "pretrain" / "checkpoints").glob("checkpoint-*.pt"))
    if done and (run / "pretrain" / "done.json").is_file():
        checkpoint = str(done[-1])
    else:
        checkpoint = _pretrain(point_scale, method, 0, run / "pretrain", shards=sets[0])
        (run / "pretrain" / "done.json").write_text(json.dumps({"checkpoint": checkpoint}))
    trained = time.perf_counter()
    # grading sees the images at the size the point pre-trained at
    sizes = _renamed(overrides, "backbone.img_size", "encoder.img_size")
    graded = _grade(point_scale, checkpoint, 0, sets[1], run / f"grade-{probe}",
                    (*sizes, *PROBES[probe]))
    return {"point": name, "probe": probe, "method": method, "epochs": epochs,
            "overrides": list(overrides), "kappa": graded,
            "last_epoch_loss": _last_epoch_loss(run / "pretrain", epochs),
            "pretrain_min": (trained - started) / 60,
            "grade_min": (time.perf_counter() - trained) / 60}


def floor_record(name: str, probe: str, scale: Scale, work: Path,
                 sets: tuple[Path, Path]) -> dict:
    """The random encoder of floor point ``name`` graded the same way (seed 0)."""
    overrides = FLOORS[name]
    encoder = "random"
    hybrid = name.startswith("random-msssl")
    if hybrid:
        model = tuple(o for key, as_key in GRADING_TO_PRETRAINING.items()
                      for o in _renamed(overrides, key, as_key))
        encoder = _initial_checkpoint(_point_scale(scale, scale.epochs, model), "MsSSL", 0,
                                      work / name / "initial", shards=sets[0])
    started = time.perf_counter()
    graded = _grade(_point_scale(scale, 0, ()), encoder, 0, sets[1],
                    work / name / f"grade-{probe}", (*FLOOR_GRADING, *overrides, *PROBES[probe]))
    kind = "random MsSSL backbone" if hybrid else "random encoder"
    return {"point": name, "probe": probe, "method": kind, "epochs": 0,
            "overrides": list(overrides), "kappa": graded, "last_epoch_loss": None,
            "pretrain_min": 0.0, "grade_min": (time.perf_counter() - started) / 60}


def format_section(records: list[dict]) -> str:
    """Markdown record of every point and probe, grouped by probe in the order run."""
    lines = [
        "## Methods sweep at CPU scale (validation split)",
        "",
        f"Command: `{COMMAND}`. The `cpu` table's backbone (4-block ViT-Ti/16 at 96 px; MsSSL "
        "its hybrid) and sets; seed 0; each point changes only what it lists; floors graded with "
        "`encoder.refresh_batchnorm=true`. Selection reads the validation kappa; the test kappa "
        "is shown for the record. Minutes are what the row cost on the 2 cores (a point graded "
        "again under another probe only grades; other commands ran beside some rows).",
    ]
    for probe in dict.fromkeys(r["probe"] for r in records):
        lines += [
            "",
            f"Probe `{probe}`: `{' '.join(PROBES[probe]) or 'grade_demo_cpu as it is'}`.",
            "",
            "| point | method | epochs | changes | val linear | test linear | val kNN | "
            "last-epoch loss | min |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in (r for r in records if r["probe"] == probe):
            loss = "-" if r["last_epoch_loss"] is None else f"{r['last_epoch_loss']:.3f}"
            k = r["kappa"]
            changes = " ".join(f"`{o}`" for o in r["overrides"])
            lines.append(
                f"| {r['point']} | {r['method']} | {r['epochs']} | "
                f"{changes or ('-' if r['epochs'] == 0 else 'paper recipe')} | "
                f"{k['linear']['val']:.3f} | {k['linear']['test']:.3f} | {k['knn']['val']:.3f} "
                f"| {loss} | {r['pretrain_min'] + r['grade_min']:.1f} |")
    return "\n".join(lines)


def records_from_section(text: str) -> list[dict]:
    """The records a section written by :func:`format_section` shows, in its order.

    The section rounds kappas to 3 decimals and minutes to 1, and shows neither the test kNN
    kappa (None here) nor how the minutes split (all counted as pre-training).
    """
    records: list[dict] = []
    probe = None
    for line in text.splitlines():
        if found := PROBE_LINE.match(line):
            probe = found.group(1)
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        if probe is None or len(cells) != 9 or cells[0] in ("point", "---"):
            continue
        name, method, epochs, changes, val, test, knn, loss, minutes = cells
        records.append({
            "point": name, "probe": probe, "method": method, "epochs": int(epochs),
            "overrides": CODE.findall(changes),
            "kappa": {"linear": {"val": float(val), "test": float(test)},
                      "knn": {"val": float(knn), "test": None}},
            "last_epoch_loss": None if loss == "-" else float(loss),
            "pretrain_min": float(minutes), "grade_min": 0.0})
    return records


def main(argv: list[str] | None = None) -> int:
    from benchmarks.run import read_section, replace_section

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--point", nargs="*", default=[*FLOORS, *SWEEP],
                        choices=[*FLOORS, *SWEEP])
    parser.add_argument("--probe", default=DEFAULT_PROBE, choices=PROBES)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--from", dest="record", type=Path, default=None,
                        help="a BENCHMARKS.md whose sweep section gives the pairs not run here")
    args = parser.parse_args(argv)
    written = None
    if args.record is not None:
        if not args.record.is_file():
            parser.error(f"--from {args.record}: no such file")
        written = read_section(args.record.read_text(), SECTION_KEY)
        if written is None:
            parser.error(f"{args.record} has no {SECTION_KEY} section")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    scale = SCALES["cpu"]
    work = REPO / "runs" / "bench-methods-sweep"
    work.mkdir(parents=True, exist_ok=True)
    sets = _make_sets(scale, REPO / "runs" / f"bench-methods-{scale.name}")
    results = work / "results.jsonl"
    records = [json.loads(line) for line in
               (results.read_text().splitlines() if results.is_file() else [])]
    done = {(r["point"], r["probe"]) for r in records}
    for record in records_from_section(written or ""):
        if (record["point"], record["probe"]) not in done:
            done.add((record["point"], record["probe"]))
            records.append(record)
            with results.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
    for name in args.point:
        if (name, args.probe) in done:
            continue
        try:
            record = (floor_record(name, args.probe, scale, work, sets) if name in FLOORS
                      else run_point(name, args.probe, scale, work, sets))
        except Exception:
            logger.exception("point %s failed; the sweep goes on", name)
            continue
        logger.info("%s %s: %s", name, args.probe, record["kappa"])
        records.append(record)
        with results.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
    section = format_section(records)
    print(section)
    if args.out is not None:
        args.out.write_text(replace_section(args.out.read_text(), SECTION_KEY, section))
    return 0


if __name__ == "__main__":
    sys.exit(main())
