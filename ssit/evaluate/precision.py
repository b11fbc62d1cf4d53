"""Device and numeric-precision choice for grading jobs (bf16 autocast on GPUs, fp32 on CPU)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


class DeviceError(ValueError):
    """A requested device that this machine does not have."""


def resolve_device(name: str) -> torch.device:
    """``auto`` is the first GPU when there is one, else the CPU; ``cuda`` requires a GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {name!r} requested but no GPU is available (use --cpu)")
    return device


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """bf16 autocast when ``precision`` is bf16, otherwise full precision."""
    if precision == "bf16":
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield
    else:
        yield
