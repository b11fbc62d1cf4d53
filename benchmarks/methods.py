"""Training-step throughput of every hosted method in its paper configuration.

Each packaged paper configuration (SSiT, MoCo v3, DINO and MAE on ViT-S/16, SimCLR and GraVIS on
ResNet-50, all at 224; DINO's 8 local crops at 96) is built as the loop builds it and timed
on synthetic views: EMA hook, forward under the run's precision, weighted loss, backward,
clipping, the optimiser step and the hook after it (DINO's teacher EMA). The per-rank batch is
small on the CPU (the numbers are per image, and GraVIS multiplies the views by K = 20); on a
GPU it is the paper's per-GPU batch. FLOPs per image are counted with ``FlopCounterMode`` over
one forward and backward pass.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from ssit.backbones import describe_backbone
from ssit.config import load_config
from ssit.methods import Method
from ssit.train.config import PretrainConfig
from ssit.train.engine import build_model, build_optimizer, train_step

logger = logging.getLogger(__name__)

CONFIGS = ("ssit_vits16_eyepacs", "mocov3_vits16_eyepacs", "simclr_resnet50_eyepacs",
           "gravis_resnet50_eyepacs", "dino_vits16_eyepacs", "mae_vits16_eyepacs")
CPU_IMAGES = 2
GPU_IMAGES = {"ssit_vits16_eyepacs": 128, "mocov3_vits16_eyepacs": 128,
              "simclr_resnet50_eyepacs": 128, "gravis_resnet50_eyepacs": 16,
              "dino_vits16_eyepacs": 64, "mae_vits16_eyepacs": 128}
TIMED_STEPS = 2
COMMAND = "python -m benchmarks.run --only methods   # or: python -m benchmarks.methods"


@dataclass(frozen=True)
class MethodTiming:
    """One method's measured training step."""

    config: str
    method: str
    backbone: str
    views: int
    images: int
    seconds_per_step: float
    gflops_per_image: float

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds_per_step


def synthetic_batch(
    model: Method, images: int, size: int, device: torch.device
) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    """Random views and maps shaped as the pipeline would hand them to ``model``."""
    generator = torch.Generator().manual_seed(0)
    sides = [spec.output_size(size) for spec in model.views]
    views = [torch.randn(images, 3, side, side, generator=generator).to(device)
             for side in sides]
    maps = [torch.rand(images, 1, side, side, generator=generator).to(device)
            if spec.with_map else None for spec, side in zip(model.views, sides, strict=True)]
    return views, maps


def time_method(config: str, images: int, device: torch.device) -> MethodTiming:
    """Build ``config``'s method and time its training step on ``images`` images per step."""
    cfg = load_config(PretrainConfig, config)
    model = build_model(cfg).to(device)
    optimizer = build_optimizer(cfg, model)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    amp = torch.bfloat16 if device.type == "cuda" else None
    views, maps = synthetic_batch(model, images, cfg.backbone.img_size, device)

    def step() -> None:
        model.before_step(1.0, cfg.optim.epochs)
        weights = model.loss_weights(1.0, cfg.optim.epochs)
        train_step(model, optimizer, scaler, views, maps, weights, lr=1e-4, amp_dtype=amp,
                   clip_grad=cfg.optim.clip_grad, clip_mode=cfg.optim.clip_mode,
                   weight_decay=model.weight_decay(1.0, cfg.optim.epochs,
                                                   cfg.optim.weight_decay),
                   before_update=lambda: model.before_update(1.0))
        model.after_step(1.0, cfg.optim.epochs)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    sync()
    best = float("inf")
    for _ in range(TIMED_STEPS):
        started = time.perf_counter()
        step()
        sync()
        best = min(best, time.perf_counter() - started)
    logger.info("%s: %.2f s per step of %d images", config, best, images)
    return MethodTiming(config, cfg.method.name, describe_backbone(cfg.backbone),
                        len(model.views), images, best, counter.get_total_flops() / images / 1e9)


def format_section(rows: list[MethodTiming], device: str) -> str:
    """Markdown table of the measured steps."""
    lines = [
        "## Training step of each method (paper configurations)",
        "",
        f"Command: `{COMMAND}`. Device: {device}. One optimisation step on synthetic views "
        f"(best of {TIMED_STEPS} after one warm-up step that also counts the FLOPs); fp32 on "
        "the CPU, bf16 autocast on a GPU.",
        "",
        "| config | method | backbone | views per image | images per step | s per step "
        "| images/s | GFLOPs per image (fwd + bwd) |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row.config} | {row.method} | {row.backbone} | {row.views} | {row.images} | "
            f"{row.seconds_per_step:.2f} | {row.images_per_s:.2f} | {row.gflops_per_image:.1f} |"
        )
    return "\n".join(lines)


def run() -> str:
    """Markdown section for BENCHMARKS.md."""
    if torch.cuda.is_available():
        device = torch.device("cuda")
        rows = [time_method(name, GPU_IMAGES[name], device) for name in CONFIGS]
        return format_section(rows, torch.cuda.get_device_name())
    torch.manual_seed(0)
    rows = [time_method(name, CPU_IMAGES, torch.device("cpu")) for name in CONFIGS]
    return format_section(rows, f"CPU ({torch.get_num_threads()} threads)")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(run())
