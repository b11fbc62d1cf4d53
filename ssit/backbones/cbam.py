"""CBAM, the convolutional block attention module (Woo et al., ECCV 2018).

A feature map is reweighted first per channel, then per position:

- channel attention ``sigmoid(MLP(avgpool(x)) + MLP(maxpool(x)))``, one weight per channel, the
  MLP shared by both pooled vectors (``C -> C / reduction -> C``, ReLU between, no bias);
- spatial attention ``sigmoid(conv_k([mean_c(x); max_c(x)]))``, one weight per position, from a
  ``k x k`` convolution (no bias) over the channel-wise mean and maximum.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ChannelAttention(nn.Module):
    """Per-channel weights ``(B, C, 1, 1)`` in (0, 1) from average- and max-pooled features."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        if channels < 1 or reduction < 1:
            raise ValueError(f"channel attention needs channels >= 1 and reduction >= 1, got "
                             f"{channels} and {reduction}")
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(hidden, channels, kernel_size=1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        average = self.mlp(F.adaptive_avg_pool2d(x, 1))
        maximum = self.mlp(F.adaptive_max_pool2d(x, 1))
        return torch.sigmoid(average + maximum)


class SpatialAttention(nn.Module):
    """Per-position weights ``(B, 1, H, W)`` in (0, 1) from the channel mean and maximum."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"spatial attention needs an odd kernel size, got {kernel_size}")
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(pooled))


class CBAM(nn.Module):
    """Channel attention, then spatial attention on the channel-reweighted map; same shape out."""

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7) -> None:
        super().__init__()
        self.channel = ChannelAttention(channels, reduction)
        self.spatial = SpatialAttention(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.channel(x)
        return x * self.spatial(x)
