"""Settings a job applies once it knows it trains on a GPU: TF32 matmuls, CNN memory layout.

- TF32: float32 matrix products and convolutions on tensor cores (10-bit mantissa inputs, fp32
  accumulation). bf16 autocast covers most of the step; what stays in float32 (losses, the
  BatchNorm heads' statistics, fp32 runs) gets the tensor cores too.
- ``channels_last``: cuDNN's convolutions run fastest on NHWC tensors, so the CNN backbones'
  weights and inputs are laid out that way on a GPU. ViTs gain nothing (one patch-embedding
  convolution), and the CPU kernels gain nothing either.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

# Backbone kinds (``backbone.name``) whose layers are mostly convolutions.
CONVOLUTIONAL_BACKBONES = frozenset({"cnn"})


def enable_tf32() -> None:
    """Let float32 matrix products and cuDNN convolutions use TF32 tensor cores."""
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.allow_tf32 = True
    log.info("float32 matmuls and convolutions may use TF32 on this GPU")


def training_memory_format(backbone_name: str, device: torch.device) -> torch.memory_format:
    """``channels_last`` for a convolutional backbone on a GPU, else ``contiguous_format``.

    Apply it to the model (``model.to(memory_format=...)``, before DDP wraps it) and to every
    image batch (``images.to(device, memory_format=...)``).
    """
    if device.type == "cuda" and backbone_name in CONVOLUTIONAL_BACKBONES:
        return torch.channels_last
    return torch.contiguous_format


__all__ = ["CONVOLUTIONAL_BACKBONES", "enable_tf32", "training_memory_format"]
