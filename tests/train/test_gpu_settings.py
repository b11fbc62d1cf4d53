"""What a job sets once it trains on a GPU: TF32 matmuls, channels-last CNNs."""

from __future__ import annotations

import pytest
import torch

from ssit.train.gpu_settings import enable_tf32, training_memory_format


@pytest.mark.parametrize(("backbone", "device", "expected"), [
    ("cnn", "cuda", torch.channels_last),
    ("cnn", "cpu", torch.contiguous_format),
    ("vit", "cuda", torch.contiguous_format),
    ("msssl_hybrid", "cuda", torch.contiguous_format),
])
def test_channels_last_only_for_cnns_on_a_gpu(backbone: str, device: str, expected) -> None:
    assert training_memory_format(backbone, torch.device(device)) == expected


def test_tf32_is_allowed_for_float32_matmuls() -> None:
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        enable_tf32()
        assert torch.get_float32_matmul_precision() == "high"
        assert torch.backends.cudnn.allow_tf32
    finally:
        torch.set_float32_matmul_precision(before)
