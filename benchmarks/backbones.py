"""What the MsSSL hybrid's extra capacity costs against ViT-S/16, under the same SSiT objective.

For each backbone (the packaged configs ``ssit_vits16_eyepacs`` and
``msssl_vits16_r50_eyepacs``, both at 224): parameters of the backbone and of the whole SSiT
model (both encoders and heads), forward FLOPs per image of the backbone at the pre-training
size (224) and the grading size (384), and one SSiT training step as the loop runs it
(:func:`benchmarks.methods.time_method`: EMA hook, forward, weighted loss, backward, clipping,
optimiser step; FLOPs per image over forward and backward). The hybrid is a reconstruction
(see ``ssit/backbones/msssl.py``).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.methods import MethodTiming, time_method
from ssit.backbones import create_backbone
from ssit.config import load_config
from ssit.train.config import PretrainConfig
from ssit.train.engine import build_model

logger = logging.getLogger(__name__)

BACKBONES = (("ViT-S/16", "ssit_vits16_eyepacs"),
             ("MsSSL hybrid: ViT-S/16 + ResNet-50-FPN-256 + Deep Learner",
              "msssl_vits16_r50_eyepacs"))
GRADING_SIZE = 384
CPU_IMAGES = 2
GPU_IMAGES = 64
COMMAND = "python -m benchmarks.backbones   # or: python -m benchmarks.run --only backbones"


@dataclass(frozen=True)
class BackboneCost:
    """One backbone's size, forward cost and SSiT training step."""

    label: str
    backbone_params: int
    method_params: int
    gflops_224: float
    gflops_grading: float
    step: MethodTiming


def forward_gflops(model: torch.nn.Module, size: int) -> float:
    """Forward FLOPs (multiply-add = 2) of ``model`` on one ``size`` x ``size`` image, in G."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.eval()(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 1e9


def measure(label: str, config: str, images: int, device: torch.device) -> BackboneCost:
    """Size, forward FLOPs and the timed SSiT training step of ``config``'s backbone."""
    cfg = load_config(PretrainConfig, config)
    torch.manual_seed(0)
    backbone = create_backbone(cfg.backbone)
    grading = create_backbone(dataclasses.replace(cfg.backbone, img_size=GRADING_SIZE))
    method_params = sum(p.numel() for p in build_model(cfg).parameters())
    cost = BackboneCost(
        label=label,
        backbone_params=sum(p.numel() for p in backbone.parameters()),
        method_params=method_params,
        gflops_224=forward_gflops(backbone, cfg.backbone.img_size),
        gflops_grading=forward_gflops(grading, GRADING_SIZE),
        step=time_method(config, images, device),
    )
    logger.info("%s: %.1f M parameters, %.1f GFLOPs", label, cost.backbone_params / 1e6,
                cost.gflops_224)
    return cost


def format_section(rows: list[BackboneCost], device: str) -> str:
    """Markdown table of the measured backbones, with each row's ratio to the first."""
    base = rows[0]
    lines = [
        "## Backbones: the MsSSL hybrid against ViT-S/16 (SSiT objective)",
        "",
        f"Command: `{COMMAND}`. Device: {device}. Parameters of the backbone alone and of the "
        "whole SSiT model (query and momentum encoders, projector, predictor, segmentor); "
        f"backbone forward GFLOPs per image at 224 and {GRADING_SIZE}; one SSiT training step "
        f"at 224 on synthetic views ({base.step.images} images, best of the timed steps after "
        "a warm-up step), GFLOPs per image over the step's forward and backward passes. "
        "Ratios are to ViT-S/16. The hybrid is a reconstruction from the MsSSL abstract.",
        "",
        f"| backbone | backbone params (M) | SSiT model params (M) | GFLOPs fwd 224 "
        f"| GFLOPs fwd {GRADING_SIZE} | step GFLOPs per image | s per step | images/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row.label} | {row.backbone_params / 1e6:.1f} "
            f"({row.backbone_params / base.backbone_params:.2f}x) | "
            f"{row.method_params / 1e6:.1f} | {row.gflops_224:.1f} "
            f"({row.gflops_224 / base.gflops_224:.2f}x) | {row.gflops_grading:.1f} | "
            f"{row.step.gflops_per_image:.1f} | {row.step.seconds_per_step:.2f} | "
            f"{row.step.images_per_s:.3g} ({row.step.images_per_s / base.step.images_per_s:.2f}x) |"
        )
    return "\n".join(lines)


def run() -> str:
    """Markdown section for BENCHMARKS.md."""
    if torch.cuda.is_available():
        device, images, name = torch.device("cuda"), GPU_IMAGES, torch.cuda.get_device_name()
    else:
        device, images = torch.device("cpu"), CPU_IMAGES
        name = f"CPU ({torch.get_num_threads()} threads)"
    rows = [measure(label, config, images, device) for label, config in BACKBONES]
    return format_section(rows, name)


def main() -> None:
    """Print the section (``python -m benchmarks.backbones``)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(run())


if __name__ == "__main__":
    main()
