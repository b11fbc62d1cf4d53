"""The methods table: every hosted method pre-trains the same backbone with the same budget on
the same synthetic set and is graded by kNN and a linear probe on the same held-out set.

The pre-training set and the labelled grading set are two synthetic sets made with other seeds
(no image in common). Each run is planned and validated exactly as ``launch/pretrain.py`` and
``launch/grade.py`` do it, then trained in this process, one run after the other (two runs side
by side on two cores are slower than one after the other, and a fresh process per run costs
10-15 s of start-up). A random encoder of the same architecture is the floor; a method with a
backbone of its own (MsSSL's hybrid) also gets its own floor, its model as initialised. Floors
are graded with ``encoder.refresh_batchnorm``: a BatchNorm backbone's running statistics are
re-estimated on the grading set's training images first, so that the calibration they bring is
not credited to pre-training (a ViT has none, and is graded as it is). Three
seeds give a mean and a spread (the sample standard deviation): the pre-training seed, and for a
floor the seed that initialises it.

Settings (``SSIT_METHODS_SCALE``, or ``--scale``): ``cpu`` (default without CUDA) trains 3
epochs of a 4-block ViT-Ti (about 22 minutes on two cores); ``cpu-long`` trains a 2-block
ViT-Ti for 10 epochs (the contrastive methods with milder views) and is the CPU setting chosen
on the validation split by ``benchmarks.methods_sweep``. Both grade with a linear probe of 300
epochs (``CPU_PROBE``). ``gpu`` (default with CUDA) is ViT-S/16 at 224 px with a larger set
and budget and the papers' recipes unchanged; ``smoke`` checks the wiring only (its numbers
mean nothing). A setting may change a method's recipe (``method_changes``); the table names
every such change in its last column.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
COMMAND = "python -m benchmarks.methods_table --scale {scale} --out BENCHMARKS.md"
PROTOCOLS = ("knn", "linear")
RANDOM = "random encoder"
# How every floor is graded: BatchNorm statistics re-estimated on the grading training images.
FLOOR_GRADING = ("encoder.refresh_batchnorm=true",)


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
    hybrid: tuple[str, ...]  # the same for the hybrid methods: their ViT branch, their CNN
    grade_overrides: tuple[str, ...]
    random_encoder: tuple[str, ...] = ()  # the floor's architecture, where not grade_demo_cpu's
    # method -> overrides of its paper recipe at this setting (chosen on the validation split
    # by benchmarks.methods_sweep); the table names each of them
    method_changes: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def section_key(self) -> str:
        """The BENCHMARKS.md section this setting writes."""
        return f"methods_table_{self.name.replace('-', '_')}"


TINY_VIT = ("backbone.arch=vit_tiny_patch16_224", "backbone.img_size=96",
            "backbone.kwargs={depth: 4}")
# A 2-block ViT-Ti (the demo's 4 blocks halved): about half the arithmetic of a step, so that
# the `cpu-long` table fits its time.
TWO_BLOCKS = "{depth: 2}"
TWO_BLOCK_VIT = (*TINY_VIT[:2], f"backbone.kwargs={TWO_BLOCKS}")
SMALL_VIT = ("backbone.arch=vit_small_patch16_224", "backbone.img_size=224",
             "backbone.kwargs={}")
CPU_RUN = ("data.num_threads=2",)
GPU_RUN = ("device=cuda", "precision=auto", "data.num_threads=4")
# MobileNetV3-Small keeps MsSSL's CNN branch affordable on two cores: with it a step of MsSSL
# costs under twice SSiT's at 96 px, with ResNet-18 about six times. The GPU setting keeps the
# demo's ResNet-18.
CPU_HYBRID = (*TINY_VIT, "backbone.cnn_arch=mobilenetv3_small_100", *CPU_RUN)
TWO_BLOCK_HYBRID = (*TWO_BLOCK_VIT, *CPU_HYBRID[len(TINY_VIT):])
# The CPU settings' linear probe: grade_demo_cpu's 15 epochs at 1e-2 leave it unconverged on
# these features (validation kappa still rising); 300 epochs at 3e-2 were chosen on the
# validation split (benchmarks.methods_sweep, probe sweep). Features are computed once, so the
# longer probe costs seconds.
CPU_PROBE = ("train.epochs=300", "train.lr=0.03")
# Mild views for the methods that take view overrides: resized crop 0.5-1 and flip only (no
# colour jitter, grayscale or blur), where telling images apart is easy.
MILD_VIEWS = "{crop_scale: [0.5, 1.0], jitter_p: 0.0, grayscale_p: 0.0, blur_p: 0.0}"
# The same crops in grey: colour, which tells these synthetic images apart without their
# lesions, is gone from both views.
GREY_VIEWS = "{crop_scale: [0.5, 1.0], jitter_p: 0.0, grayscale_p: 1.0, blur_p: 0.0}"
SCALES = {
    "cpu": Scale("cpu", 600, 1000, 3, (0, 1, 2), True, ("backbone.name=vit", *TINY_VIT,
                                                       *CPU_RUN), CPU_HYBRID, CPU_PROBE),
    # every paper's recipe on a 2-block ViT, but where the validation split chose otherwise:
    # the contrastive methods see milder views, MoCo v3 in colour and SimCLR and GraVIS in grey
    # (with their papers' colour views their losses stay at chance)
    "cpu-long": Scale("cpu-long", 600, 1000, 10, (0, 1, 2), True,
                      ("backbone.name=vit", *TWO_BLOCK_VIT, *CPU_RUN), TWO_BLOCK_HYBRID,
                      CPU_PROBE, random_encoder=(f"encoder.model_kwargs={TWO_BLOCKS}",),
                      method_changes={
                          "MoCo v3": (f"method.view1_augmentation={MILD_VIEWS}",
                                      f"method.view2_augmentation={MILD_VIEWS}"),
                          "SimCLR": (f"method.augmentation={GREY_VIEWS}",),
                          "GraVIS": (f"method.augmentation={GREY_VIEWS}",)}),
    "gpu": Scale("gpu", 4000, 2000, 50, (0, 1, 2), False,
                 ("backbone.name=vit", *SMALL_VIT, *GPU_RUN), (*SMALL_VIT, *GPU_RUN),
                 ("encoder.img_size=224", "train.device=cuda", "data.num_workers=8"),
                 ("encoder.arch=vit_small_patch16_224", "encoder.model_kwargs={}")),
    "smoke": Scale("smoke", 64, 100, 1, (0,), True, ("backbone.name=vit", *TINY_VIT),
                   (*TINY_VIT, "backbone.cnn_arch=mobilenetv3_small_100"), ()),
}

# method: (packaged config, overrides that make it that method). MoCo v3 is SSiT without
# key-patch selection, masking or the saliency head. Each demo config follows its paper's
# learning-rate rule (SSiT, MoCo v3, SimCLR, MsSSL with the SSiT objective, DINO and MAE scale
# it linearly with the batch): at the demo's small batches an unscaled rate ruins SSiT's
# features.
METHODS = {
    "SSiT": ("demo_ssit_cpu", ()),
    "MoCo v3": ("demo_ssit_cpu", ("method.mask_ratio=0.0", "method.pool=null",
                                  "method.segmentation=false", "method.w_ss=0.0")),
    "SimCLR": ("simclr_demo_cpu", ()),
    "GraVIS": ("gravis_demo_cpu", ()),
    "MsSSL": ("msssl_demo_cpu", ()),
    # DINO's local crops keep the released 96/224 ratio of the global size (48 px at 96).
    "DINO": ("dino_demo_cpu", ("method.local_crops_size=48",)),
    "MAE": ("mae_demo_cpu", ()),
}
HYBRID_METHODS = {"MsSSL"}  # their own backbone (ViT + CNN): only the ViT branch is shared


def default_scale() -> Scale:
    """``SSIT_METHODS_SCALE``, else ``gpu`` where CUDA is available and ``cpu`` elsewhere."""
    import torch

    name = os.environ.get("SSIT_METHODS_SCALE", "gpu" if torch.cuda.is_available() else "cpu")
    if name not in SCALES:
        raise SystemExit(f"SSIT_METHODS_SCALE={name!r} is not one of {', '.join(SCALES)}")
    return SCALES[name]


def section_key() -> str:
    """The BENCHMARKS.md section ``benchmarks.run`` writes for this machine's setting."""
    return default_scale().section_key


def _run(argv: list[str], log: Path) -> None:
    """Run a command, its output into ``log``; raise with the log's end when it fails."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as handle:
        done = subprocess.run(argv, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT)
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


def _pretrain_plan(scale: Scale, method: str, seed: int, shards: Path, run: Path,
                   overrides: tuple[str, ...] = ()) -> Any:
    """The run planned and validated as ``launch/pretrain.py --local`` would plan it, with
    ``overrides`` after the table's own."""
    from ssit.cluster.submit import add_pretrain_arguments, plan_pretrain

    config, method_overrides = METHODS[method]
    backbone = scale.hybrid if method in HYBRID_METHODS else scale.backbone
    parser = argparse.ArgumentParser()
    add_pretrain_arguments(parser)
    return plan_pretrain(parser.parse_args([
        "--local", *(["--cpu"] if scale.cpu else []), "--config", config, "--output", str(run),
        f"data.shards={shards}", f"seed={seed}", f"optim.epochs={scale.epochs}",
        "optim.warmup_epochs=1", "log.progress_bar=false", "log.image_every_steps=null",
        *method_overrides, *backbone, *scale.method_changes.get(method, ()), *overrides]))


def _pretrain(scale: Scale, method: str, seed: int, run: Path, *, shards: Path) -> str:
    """Pre-train ``method`` in this process; the final checkpoint."""
    from ssit.train.engine import pretrain

    plan = _pretrain_plan(scale, method, seed, shards, run)
    outcome = pretrain(plan.config, plan.run_dir)
    if outcome.status != "completed" or outcome.checkpoint is None:
        raise RuntimeError(f"{method} seed {seed} stopped at step {outcome.step} ({run})")
    return str(outcome.checkpoint)


def _initial_checkpoint(scale: Scale, method: str, seed: int, run: Path, *,
                        shards: Path) -> str:
    """``method``'s model as initialised with ``seed``, untrained, as a training checkpoint:
    the floor of a method with a backbone of its own (grading reads its architecture)."""
    import torch

    from ssit.config import config_to_dict
    from ssit.train.engine import build_model

    config = _pretrain_plan(scale, method, seed, shards, run).config
    torch.manual_seed(seed)
    model = build_model(config)
    run.mkdir(parents=True, exist_ok=True)
    path = run / "initial.pt"
    torch.save({"step": 0, "method": config.method.name, "backbone": config.backbone.name,
                "model": model.state_dict(), "config": config_to_dict(config)}, path)
    return str(path)


def _grade(scale: Scale, checkpoint: str, seed: int, shards: Path, run: Path,
           overrides: tuple[str, ...] = ()) -> dict:
    """Plan the jobs as ``launch/grade.py --local`` would (with ``overrides``), then grade
    here; validation and test kappa per protocol (of the setting chosen on validation)."""
    from ssit.cluster.grading import add_grade_arguments, plan_grading, write_summary
    from ssit.evaluate.job import run_grading

    parser = argparse.ArgumentParser()
    add_grade_arguments(parser)
    args = parser.parse_args([
        "--local", *(["--cpu"] if scale.cpu else []), "--checkpoint", checkpoint,
        "--dataset", "shards", "--data", str(shards), "--protocol", *PROTOCOLS,
        "--config", "grade_demo_cpu", "--output", str(run), f"train.seed={seed}",
        *scale.grade_overrides, *(scale.random_encoder if checkpoint == "random" else ()),
        *overrides])
    plan = plan_grading(args)
    results = [run_grading(task.config, task.out_dir) for task in plan.tasks]
    write_summary(plan.run_dir, results)
    return {job["protocol"]: {split: job[split][job["selected"]]["kappa"]
                              for split in ("val", "test")} for job in results}


def _with(overrides: tuple[str, ...]) -> str:
    return f" with `{' '.join(overrides)}`" if overrides else ""


def _slug(method: str) -> str:
    return method.lower().replace(" ", "")


def _available_methods() -> list[str]:
    configs = resources.files("ssit") / "configs"
    return [m for m, (config, _) in METHODS.items() if (configs / f"{config}.yaml").is_file()]


def _cell(values: list[float], seeds: int) -> str:
    if not values:
        return "failed"
    if len(values) == 1:
        cell = f"{values[0]:.3f}"
    else:
        cell = f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"
    return cell if len(values) == seeds else f"{cell} ({len(values)} of {seeds} seeds)"


def run(scale: Scale | None = None, work: Path | None = None) -> str:
    """Pre-train and grade every method under ``work`` (default ``runs/bench-methods-<scale>``,
    whose sets a later run reuses); return the markdown section."""
    scale = scale or default_scale()
    work = work or REPO / "runs" / f"bench-methods-{scale.name}"
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    pretrain_shards, grade_shards = _make_sets(scale, work)
    sets_min = (time.perf_counter() - started) / 60
    # (row, run folder prefix, seed and folder -> checkpoint, is a floor): the floors are
    # untrained encoders drawn by the seed; pre-trained encoders are all graded with seed 0.
    rows: list[tuple[str, str, Callable[[int, Path], str], bool]] = [
        (RANDOM, "random", lambda seed, run: "random", True)]
    for method in sorted(HYBRID_METHODS & set(_available_methods())):
        rows.append((f"random {method} backbone", f"random-{_slug(method)}",
                     functools.partial(_initial_checkpoint, scale, method,
                                       shards=pretrain_shards), True))
    for method in _available_methods():
        rows.append((method, _slug(method), functools.partial(_pretrain, scale, method,
                                                              shards=pretrain_shards), False))
    kappas: dict[str, dict[str, list[float]]] = {}
    minutes: dict[str, list[tuple[float, float]]] = {}
    for name, prefix, checkpoint_of, floor in rows:
        kappas[name], minutes[name] = {p: [] for p in PROTOCOLS}, []
        for seed in scale.seeds:
            run_dir = work / f"{prefix}-seed{seed}"
            clock = time.perf_counter()
            try:
                checkpoint = checkpoint_of(seed, run_dir / "pretrain")
                trained = time.perf_counter()
                graded = _grade(scale, checkpoint, seed if floor else 0, grade_shards,
                                run_dir / "grade", FLOOR_GRADING if floor else ())
            except Exception:  # one broken run must not cost the rest of the table
                logger.exception("%s seed %d failed (%s); the table goes on", name, seed, run_dir)
                continue
            minutes[name].append(((trained - clock) / 60, (time.perf_counter() - trained) / 60))
            logger.info("%s seed %d: %s", name, seed, graded)
            for protocol in PROTOCOLS:
                kappas[name][protocol].append(graded[protocol]["test"])
    total_min = (time.perf_counter() - started) / 60
    floors = {name for name, _, _, floor in rows if floor}
    return format_section(scale, kappas, minutes, floors, sets_min, total_min)


def format_section(scale: Scale, kappas: dict[str, dict[str, list[float]]],
                   minutes: dict[str, list[tuple[float, float]]], floors: set[str],
                   sets_min: float, total_min: float) -> str:
    """Markdown table of the graded runs, with what each finished run cost (pre-training and
    grading minutes; the untrained ``floors`` only grade)."""
    seeds = len(scale.seeds)
    lines = [
        f"## Methods table, setting `{scale.name}` (same backbone, budget, data and grading)",
        "",
        f"Command: `{COMMAND.format(scale=scale.name)}` (or `SSIT_METHODS_SCALE={scale.name} "
        "python -m benchmarks.run --only methods_table`).",
        f"Pre-training: {scale.pretrain_images} unlabelled synthetic images (seed 0), "
        f"{scale.epochs} epoch(s) (the first a warm-up), each method's own batch and "
        f"learning-rate rule, backbone `{' '.join(scale.backbone)}`; MsSSL: its hybrid "
        f"backbone with that ViT branch (`{' '.join(scale.hybrid)}`). Grading: "
        f"{scale.grade_images} other labelled synthetic images (seed 1), split 50/20/30 (the "
        "test split is never used for selection), `grade_demo_cpu` (kNN; linear probe on "
        f"features computed once){_with(scale.grade_overrides)}. Test "
        f"quadratic kappa, mean ± standard deviation over seeds {list(scale.seeds)} (pre-training "
        "seeds; for a floor, the seed that initialises it). The floors are graded with "
        "`encoder.refresh_batchnorm=true`: a BatchNorm backbone's (MsSSL's hybrid) running "
        "statistics are first re-estimated on the grading training images, so that the "
        "calibration they bring is not credited to pre-training (the ViT has none). Whole table: "
        f"{total_min:.1f} min, of which {sets_min:.1f} min making the two sets.",
        "",
        "| encoder | kNN kappa | linear kappa | min per seed (pre-train + grade) | "
        "changes from the paper recipe at this setting |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, by_protocol in kappas.items():
        runs = minutes[name]
        pretrain_min = statistics.mean(m for m, _ in runs) if runs else 0.0
        grade_min = statistics.mean(m for _, m in runs) if runs else 0.0
        spent = f"{grade_min:.1f}" if name in floors else f"{pretrain_min:.1f} + {grade_min:.1f}"
        changes = " ".join(f"`{change}`" for change in scale.method_changes.get(name, ()))
        lines.append(f"| {name} | {_cell(by_protocol['knn'], seeds)} | "
                     f"{_cell(by_protocol['linear'], seeds)} | {spent if runs else '-'} | "
                     f"{changes or '-'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from benchmarks.run import replace_section

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=SCALES, default=None,
                        help="setting (default: SSIT_METHODS_SCALE, else gpu or cpu)")
    parser.add_argument("--out", type=Path, default=None,
                        help="also write the section into this file (e.g. BENCHMARKS.md)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    scale = SCALES[args.scale] if args.scale else default_scale()
    section = run(scale)
    print(section)
    if args.out is not None:
        document = args.out.read_text() if args.out.exists() else "# Benchmarks\n"
        args.out.write_text(replace_section(document, scale.section_key, section))
    return 0


if __name__ == "__main__":
    sys.exit(main())
