"""GPU check, part 2: the training step of the configured method, as the loop runs it.

The model is the one the pre-training job builds from its config (ViT-S/16 SSiT at 224 for
the GPU check), stepped by the loop's own ``train_step`` under bf16 autocast with a fused AdamW
on random views and maps. Measured per batch size: images per second, peak memory, model FLOPs
per image (``FlopCounterMode``, forward and backward) and their share of the GPU's dense bf16
peak; optionally again with ``torch.compile``.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from ssit.config import load_config
from ssit.train import PretrainConfig
from ssit.train.engine import build_model, train_step

# Dense bf16 tensor-core peaks from the vendors' data sheets (FLOP/s, no sparsity); the first
# key found in the device name wins, so the more specific names come first.
BF16_PEAK_FLOPS = {
    "H200": 989e12,
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H100": 989e12,
    "A100": 312e12,
}
# A batch "fits a 40 GB A100" when its peak stays below this (room for the CUDA context, DALI).
A100_40GB_BUDGET_GIB = 36.0


@dataclass(frozen=True)
class ModelSizes:
    config: str
    overrides: tuple[str, ...]
    batches: tuple[int, ...]
    warmup_steps: int
    timed_steps: int
    precision: str  # "bf16" or "fp32"
    compile: bool


def bf16_peak(device_name: str) -> float | None:
    """The dense bf16 peak of a GPU by its name (None for a GPU not in the table)."""
    for key, peak in BF16_PEAK_FLOPS.items():
        if all(part in device_name for part in key.split()):
            return peak
    return None


def random_views(batch: int, img_size: int, device: torch.device) -> tuple[list, list]:
    generator = torch.Generator().manual_seed(batch)
    images = [torch.randn(batch, 3, img_size, img_size, generator=generator) for _ in range(2)]
    maps = [torch.rand(batch, 1, img_size, img_size, generator=generator) for _ in range(2)]
    return [t.to(device) for t in images], [t.to(device) for t in maps]


def flops_per_image(model: torch.nn.Module, img_size: int, device: torch.device) -> float:
    """Model FLOPs of one image's step (forward + backward, both views), counted on a copy."""
    probe = copy.deepcopy(model)
    images, maps = random_views(4, img_size, device)
    counter = FlopCounterMode(display=False)
    with counter:
        losses = probe(images, maps)
        sum(losses.values()).backward()
    return counter.get_total_flops() / 4


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_step(cfg: PretrainConfig, batch: int, sizes: ModelSizes, device: torch.device,
                 compiled: bool) -> dict[str, object]:
    """Time ``timed_steps`` loop steps at ``batch`` after ``warmup_steps`` (compilation there)."""
    model = build_model(cfg).to(device)
    stepped = torch.compile(model) if compiled else model
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.1,
                                  fused=device.type == "cuda" or None)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    amp_dtype = torch.bfloat16 if sizes.precision == "bf16" else None
    images, maps = random_views(batch, cfg.backbone.img_size, device)
    epochs = cfg.optim.epochs

    def step(index: int) -> torch.Tensor:
        model.before_step(index / 1000, epochs)
        return train_step(stepped, optimizer, scaler, images, maps,
                          model.loss_weights(index / 1000, epochs), lr=1e-4,
                          amp_dtype=amp_dtype, clip_grad=cfg.optim.clip_grad)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    for index in range(sizes.warmup_steps):
        step(index)
    _sync(device)
    warmup_s = time.perf_counter() - started
    started = time.perf_counter()
    for index in range(sizes.timed_steps):
        losses = step(index)
    _sync(device)
    seconds = (time.perf_counter() - started) / sizes.timed_steps
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    result = {
        "batch": batch,
        "compiled": compiled,
        "warmup_s": warmup_s,
        "step_s": seconds,
        "images_per_s": batch / seconds,
        "peak_memory_gib": peak,
        "fits_a100_40gb": None if peak is None else peak < A100_40GB_BUDGET_GIB,
        "losses_finite": bool(torch.isfinite(losses).all()),
    }
    return result


def run_model_check(device: torch.device, sizes: ModelSizes, record: dict,
                    deadline: float) -> None:
    """Fill ``record`` row by row; rows that would start after ``deadline`` are skipped."""
    cfg = load_config(PretrainConfig, sizes.config, list(sizes.overrides))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = bf16_peak(name) if device.type == "cuda" else None
    flops = flops_per_image(build_model(cfg).to(device), cfg.backbone.img_size, device)
    record.update({"device": name, "config": sizes.config, "precision": sizes.precision,
                   "flops_per_image": flops, "bf16_peak_flops": peak, "rows": []})
    # torch.compile only at the largest batch: each new batch size would compile again.
    runs = [(False, batch) for batch in sizes.batches]
    runs += [(True, sizes.batches[-1])] if sizes.compile else []
    for compiled, batch in runs:
        if time.monotonic() > deadline:
            record["rows"].append({"batch": batch, "compiled": compiled,
                                   "skipped": "time budget spent"})
            continue
        row = measure_step(cfg, batch, sizes, device, compiled)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        row["model_tflops_per_s"] = flops * row["images_per_s"] / 1e12
        row["share_of_bf16_peak"] = None if peak is None else flops * row["images_per_s"] / peak
        record["rows"].append(row)
