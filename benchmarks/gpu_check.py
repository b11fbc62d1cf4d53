"""The GPU path in one command: measure and check it, write gpu-check.json and BENCHMARKS.md.

    python -m benchmarks.gpu_check --out gpu-check.json --benchmarks BENCHMARKS.md  # make gpu-check
    python -m benchmarks.gpu_check --cpu-smoke --out /tmp/smoke.json --benchmarks /tmp/B.md

On one GPU, within a time budget (8 minutes by default), on synthetic shards it makes itself:

1. pipeline: DALI with ``device="cuda"``, SSiT views at per-GPU batch 64 and 128: images/s,
   device memory, a kept batch left intact, image/map geometric agreement, CPU vs GPU outputs;
2. model: the ViT-S/16 SSiT training step in bf16 at batch 64 and 128: images/s, peak memory,
   share of the GPU's bf16 peak; the same with ``torch.compile``;
3. pretrain: ``launch/pretrain.py --local`` for 200 steps, preempted by USR2 mid-run, requeued,
   resumed and completed; the restored pipeline gives the uninterrupted pipeline's batches;
4. grade: one short fine-tuning job through ``launch/grade.py --local``.

Each part is guarded: a failure is recorded in the JSON and the next part still runs. Without a
GPU it prints one line and exits 0 having measured nothing; ``--cpu-smoke`` runs every part on
the CPU with tiny sizes instead, to prove the check itself works.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks.gpu_job_check import JobSizes, grading, preempted_pretraining
from benchmarks.gpu_model_check import ModelSizes, run_model_check
from benchmarks.gpu_pipeline_check import PipelineSizes, run_pipeline_check
from benchmarks.gpu_report import format_section
from benchmarks.run import replace_section

log = logging.getLogger(__name__)

NO_GPU_LINE = "gpu-check: no CUDA GPU on this machine; nothing measured (use --cpu-smoke to test)"
SECTION = "gpu-check"


@dataclass(frozen=True)
class CheckSizes:
    """Everything that differs between a real GPU check and the CPU smoke run."""

    samples: int
    shard_size: int
    pipeline: PipelineSizes
    model: ModelSizes
    jobs: JobSizes
    budgets_s: dict[str, float]
    total_s: float


GPU_SIZES = CheckSizes(
    samples=640,
    shard_size=160,
    pipeline=PipelineSizes(batches=(64, 128), img_size=224, timed_epochs=4, threads=4,
                           stat_batches=2),
    model=ModelSizes(config="ssit_vits16_eyepacs", overrides=(), batches=(64, 128),
                     warmup_steps=5, timed_steps=20, precision="bf16", compile=True),
    jobs=JobSizes(
        pretrain_config="ssit_vits16_eyepacs",
        # 640 samples at 64 per step: 10 steps per epoch, 200 steps in 20 epochs.
        pretrain_overrides=("optim.epochs=20", "optim.warmup_epochs=2", "optim.batch_size=64",
                            "checkpoint.every_minutes=null", "checkpoint.every_epochs=null",
                            "checkpoint.keep=50", "log.every_steps=5",
                            "log.image_every_steps=100", "log.progress_bar=false"),
        signal_after_step=83,
        grade_config="grade_paper",
        grade_overrides=("train.epochs=1", "data.num_workers=4"),
        cpu=False,
    ),
    budgets_s={"shards": 90, "pipeline": 75, "model": 150, "pretrain": 170, "grade": 90},
    total_s=470,
)

SMOKE_SIZES = CheckSizes(
    samples=48,
    shard_size=16,
    pipeline=PipelineSizes(batches=(8,), img_size=64, timed_epochs=1, threads=1,
                           stat_batches=2),
    model=ModelSizes(config="demo_tiny_cpu", overrides=(), batches=(4,), warmup_steps=1,
                     timed_steps=2, precision="fp32", compile=False),
    jobs=JobSizes(
        pretrain_config="demo_tiny_cpu",
        # 48 samples at 8 per step: 6 steps per epoch, 12 steps in 2 epochs.
        pretrain_overrides=("optim.epochs=2", "optim.warmup_epochs=1", "optim.batch_size=8",
                            "checkpoint.every_minutes=null", "checkpoint.every_epochs=null",
                            "checkpoint.keep=50", "log.every_steps=1",
                            "log.image_every_steps=null", "log.progress_bar=false",
                            "data.num_threads=1"),
        signal_after_step=3,
        grade_config="grade_tiny_cpu",
        grade_overrides=("train.epochs=1",),
        cpu=True,
    ),
    budgets_s={"shards": 120, "pipeline": 60, "model": 60, "pretrain": 150, "grade": 120},
    total_s=420,
)


def make_shards(root: Path, sizes: CheckSizes) -> Path:
    """Synthetic graded photographs -> labelled shards (what `ssit synth` + `ssit shards` do)."""
    from ssit.prepare.shards import write_shards
    from ssit.prepare.synth import synthesize

    raw = root / "raw"
    jobs = min(16, os.cpu_count() or 1)
    labels = synthesize(raw, sizes.samples, seed=0, height_range=(600, 800), jobs=jobs,
                        progress=False)
    out = root / "shards"
    write_shards(raw, out, labels=labels, dataset="check", shard_size=sizes.shard_size,
                 jobs=jobs, progress=False)
    return out


class CheckRun:
    """The check's record, saved after every part so that a killed run keeps what it measured."""

    def __init__(self, out: Path, mode: str, total_s: float) -> None:
        self.out = out
        self.started = time.monotonic()
        self.deadline = self.started + total_s
        self.record: dict[str, object] = {
            "mode": mode,
            "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": machine_description(),
            "budget_s": total_s,
            "parts": {},
        }

    def part(self, name: str, budget_s: float, work: Callable[[dict, float], object]) -> object:
        """Run one part with its own deadline; record its result, error or skip."""
        part: dict[str, object] = {}
        self.record["parts"][name] = part  # type: ignore[index]
        now = time.monotonic()
        if now >= self.deadline:
            part.update({"passed": False, "skipped": "the check's time budget is spent"})
            self.save()
            return None
        print(f"gpu-check: {name} ...", flush=True)
        result = None
        try:
            result = work(part, min(self.deadline, now + budget_s))
            part.setdefault("passed", True)
        except Exception as error:  # a part's failure is data; the next part still runs
            part.update({"passed": False, "error": f"{type(error).__name__}: {error}"[:500],
                         "traceback": traceback.format_exc()[-3000:]})
        part["seconds"] = round(time.monotonic() - now, 1)
        print(f"gpu-check: {name} {'passed' if part['passed'] else 'FAILED'} "
              f"({part['seconds']} s)", flush=True)
        self.save()
        return result

    def save(self) -> None:
        self.record["seconds"] = round(time.monotonic() - self.started, 1)
        self.record["passed"] = all(p.get("passed") for p in self.record["parts"].values())
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(self.record, indent=2, default=str) + "\n")


def machine_description() -> dict[str, object]:
    gpu = torch.cuda.is_available()
    return {
        "gpu": torch.cuda.get_device_name(0) if gpu else None,
        "gpu_memory_gib": (torch.cuda.get_device_properties(0).total_memory / 2**30
                           if gpu else None),
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "cpu_cores": os.cpu_count(),
        "host": platform.node(),
    }


def run_check(root: Path, out: Path, smoke: bool,
              given_shards: Path | None = None) -> dict[str, object]:
    """Run every part in ``root`` (a scratch folder) and save the record to ``out``.

    ``given_shards`` (labelled shards, e.g. the demo's) replaces the synthetic ones.
    """
    sizes = SMOKE_SIZES if smoke else GPU_SIZES
    device = torch.device("cpu" if smoke else "cuda")
    if device.type == "cuda":
        from ssit.train.gpu_settings import enable_tf32

        enable_tf32()
    run = CheckRun(out, "cpu-smoke" if smoke else "gpu", sizes.total_s)
    budgets = sizes.budgets_s

    def shards_part(part: dict, _: float) -> Path:
        path = given_shards or make_shards(root, sizes)
        part.update({"made": given_shards is None, "path": str(path)})
        return path

    shards = run.part("shards", budgets["shards"], shards_part)
    if shards is None:
        return run.record
    run.part("pipeline", budgets["pipeline"], lambda part, _: run_pipeline_check(
        shards, root, device.type, sizes.pipeline, part))
    run.part("model", budgets["model"], lambda part, deadline: run_model_check(
        device, sizes.model, part, deadline))
    final = run.part("pretrain", budgets["pretrain"], lambda part, deadline: preempted_pretraining(
        shards, root, sizes.jobs, part, deadline))
    run.part("grade", budgets["grade"], lambda part, deadline: grading(
        final, shards, root, sizes.jobs, part, deadline))
    return run.record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu-check.json"))
    parser.add_argument("--benchmarks", type=Path, default=Path("BENCHMARKS.md"),
                        help="markdown file whose 'GPU check' section is rewritten")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="run every part on the CPU with tiny sizes (tests the check)")
    parser.add_argument("--shards", type=Path,
                        help="labelled shards to use instead of making synthetic ones")
    parser.add_argument("--work-dir", type=Path,
                        help="scratch folder for shards and runs (default: a temporary one)")
    args = parser.parse_args(argv)
    if not args.cpu_smoke and not torch.cuda.is_available():
        print(NO_GPU_LINE)
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    with tempfile.TemporaryDirectory(prefix="ssit-gpu-check-") as scratch:
        root = args.work_dir or Path(scratch)
        root.mkdir(parents=True, exist_ok=True)
        record = run_check(root, args.out, args.cpu_smoke, args.shards)
    document = args.benchmarks.read_text() if args.benchmarks.exists() else "# Benchmarks\n"
    args.benchmarks.write_text(replace_section(document, SECTION, format_section(record)))
    print(f"gpu-check: {'passed' if record['passed'] else 'FAILED'}; details in {args.out}")
    return 0 if record["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
