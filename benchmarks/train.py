"""Pre-training throughput: steps per second of the tiny demo run on 1 and 2 CPU ranks.

Each measurement is a real job: one process per rank (gloo DDP for two), the `demo_tiny_cpu`
configuration on synthesised demo shards, timed by the run itself (`summary.json`'s
``elapsed_s``: from the first step to the final checkpoint, model and pipeline set-up
excluded). With a GPU, the paper's configuration (ViT-S/16 at 224, DALI on the GPU, bf16) is
also timed on one GPU at the per-GPU batch of the paper's 4-node run.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

CORES = 2
SAMPLES = 96
EPOCHS = 3
GLOBAL_BATCH = 16
GPU_BATCH = 128
GPU_SAMPLES = 512
GPU_EPOCHS = 8
COMMAND = "python -m benchmarks.run --only train   # or: python -m benchmarks.train"
REPO_ROOT = Path(__file__).resolve().parents[1]


def make_shards(root: Path, samples: int, jobs: int = CORES) -> Path:
    """``samples`` synthetic photographs -> demo shards of 48 with `ssit shards`' writer."""
    from ssit.prepare.shards import write_shards
    from ssit.prepare.synth import synthesize

    raw = root / "raw"
    synthesize(raw, samples, seed=0, height_range=(600, 800), jobs=jobs, progress=False)
    out = root / "shards"
    write_shards(raw, out, dataset="bench", shard_size=48, jobs=jobs, progress=False)
    return out


def run_job(config: str, overrides: list[str], run_dir: Path, ranks: int) -> dict:
    """Pre-train in ``ranks`` local processes (gloo when more than one); return summary.json."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = []
    for rank in range(ranks):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
        if ranks > 1:
            env.update({"RANK": str(rank), "WORLD_SIZE": str(ranks), "LOCAL_RANK": str(rank),
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "benchmarks.train", "--job", config, str(run_dir), *overrides],
            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        ))
    outputs = [proc.communicate()[0] for proc in procs]
    for rank, proc in enumerate(procs):
        if proc.returncode:
            raise RuntimeError(f"rank {rank} failed ({proc.returncode}): {outputs[rank][-2000:]}")
    return json.loads((run_dir / "summary.json").read_text())


def job(config: str, run_dir: str, overrides: list[str]) -> None:
    """One rank of a benchmark job (started by :func:`run_job`)."""
    from ssit.config import load_config
    from ssit.train import PretrainConfig, pretrain_main

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    pretrain_main(load_config(PretrainConfig, config, overrides), run_dir)


def cpu_rows(shards: Path, root: Path) -> list[str]:
    rows = []
    for ranks in (1, 2):
        overrides = [
            f"data.shards={shards}", f"optim.epochs={EPOCHS}", f"optim.batch_size={GLOBAL_BATCH}",
            "checkpoint.every_epochs=null", "checkpoint.every_minutes=null",
            "log.progress_bar=false", "log.image_every_steps=null", "log.every_steps=10",
        ]
        summary = run_job("demo_tiny_cpu", overrides, root / f"cpu-{ranks}", ranks)
        steps_per_s = summary["steps"] / summary["elapsed_s"]
        rows.append(
            f"| demo_tiny_cpu (ViT-Ti/16 depth 4 @ 64) | {ranks} x CPU"
            f"{' (gloo DDP)' if ranks > 1 else ''} | {GLOBAL_BATCH} "
            f"| {summary['steps']} | {steps_per_s:.2f} | {steps_per_s * GLOBAL_BATCH:.1f} "
            f"| {steps_per_s * GLOBAL_BATCH / ranks:.1f} |"
        )
    return rows


def gpu_row(root: Path) -> str:
    if not torch.cuda.is_available():
        return ("| ssit_vits16_eyepacs (ViT-S/16 @ 224, bf16, DALI on GPU) | 1 x GPU | "
                f"{GPU_BATCH} | - | not measured (no GPU on this machine) | - | - |")
    shards = make_shards(root / "gpu", GPU_SAMPLES, jobs=os.cpu_count() or CORES)
    overrides = [
        f"data.shards={shards}", f"optim.epochs={GPU_EPOCHS}", f"optim.batch_size={GPU_BATCH}",
        "checkpoint.every_epochs=null", "checkpoint.every_minutes=null",
        "log.progress_bar=false", "log.image_every_steps=null",
    ]
    summary = run_job("ssit_vits16_eyepacs", overrides, root / "gpu-1", 1)
    steps_per_s = summary["steps"] / summary["elapsed_s"]
    name = torch.cuda.get_device_name(0)
    return (f"| ssit_vits16_eyepacs (ViT-S/16 @ 224, bf16, DALI on GPU) | 1 x {name} | "
            f"{GPU_BATCH} | {summary['steps']} | {steps_per_s:.2f} | "
            f"{steps_per_s * GPU_BATCH:.1f} | {steps_per_s * GPU_BATCH:.1f} |")


def run() -> str:
    """Time the jobs and return the BENCHMARKS.md section."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ssit-bench-train-") as tmp:
        root = Path(tmp)
        rows = cpu_rows(make_shards(root, SAMPLES), root)
        rows.append(gpu_row(root))
    lines = [
        "### Pre-training loop throughput (tiny demo run on CPU; paper run on GPU)",
        "",
        f"Steps per second of whole training jobs ({EPOCHS} epochs of {SAMPLES} synthetic demo "
        f"samples on CPU, global batch {GLOBAL_BATCH}), timed from the first step to the final "
        "checkpoint (set-up excluded). Each rank is one process with one intra-op thread; two "
        f"ranks run DDP over gloo on the machine's {CORES} cores. The GPU row is the paper's "
        "configuration on one GPU (DALI decoding and augmenting on the GPU) at the per-GPU "
        f"batch of its 4-GPU run ({GPU_BATCH}), {GPU_EPOCHS} epochs of {GPU_SAMPLES} samples.",
        "",
        "| configuration | ranks | global batch | steps | steps/s | samples/s "
        "| samples/s per rank |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
        f"Command: `{COMMAND}` ({time.perf_counter() - started:.0f} s on this machine; "
        f"1-minute load average {os.getloadavg()[0]:.1f} at the end, on {os.cpu_count()} "
        "cores: figures taken on a busy machine are low).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--job":
        job(sys.argv[2], sys.argv[3], sys.argv[4:])
    else:
        print(run())
