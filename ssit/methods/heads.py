"""Heads of the SSiT model: projector / predictor MLPs and the saliency segmentor.

Layer layouts follow the authors' release so that parameter names match theirs: an MLP is an
``nn.Sequential`` of ``Linear(bias=False)``, ``BatchNorm1d``, ``ReLU`` per hidden layer, then
``Linear(bias=False)`` and ``BatchNorm1d(affine=False)``.
"""

from __future__ import annotations

import torch
from torch import nn


def build_mlp(num_layers: int, in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """MLP with BatchNorm + ReLU after each hidden layer and an affine-free BatchNorm at the end.

    The projector is ``build_mlp(3, embed_dim, 4096, 256)`` (indices 0..7), the predictor
    ``build_mlp(2, 256, 4096, 256)`` (indices 0..4).
    """
    if num_layers < 1:
        raise ValueError(f"an MLP needs at least one layer, got {num_layers}")
    layers: list[nn.Module] = []
    for index in range(num_layers):
        layer_in = in_dim if index == 0 else hidden_dim
        last = index == num_layers - 1
        layer_out = out_dim if last else hidden_dim
        layers.append(nn.Linear(layer_in, layer_out, bias=False))
        if last:
            layers.append(nn.BatchNorm1d(layer_out, affine=False))
        else:
            layers += [nn.BatchNorm1d(layer_out), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class PointwiseConv2d(nn.Conv2d):
    """A 1x1 convolution computed as one matrix product over the channels of every pixel.

    Its parameters are those of ``nn.Conv2d(in_channels, out_channels, 1)`` (weight
    ``(out, in, 1, 1)``, bias ``(out,)``) and so are its outputs, but the weight's gradient is
    always laid out like the weight, whatever the memory layout of the input (a feature map
    made from transposed tokens is channels-last in memory, and a convolution would then return
    a channels-last gradient, which DDP's gradient buckets must copy and warn about).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"expected a feature map (B, C, H, W), got shape {tuple(x.shape)}")
        channels_last = nn.functional.linear(x.movedim(1, -1), self.weight.flatten(1), self.bias)
        return channels_last.movedim(-1, 1)


def build_saliency_segmentor(embed_dim: int, patch_size: int) -> nn.Sequential:
    """1x1 convolution ``embed_dim -> patch_size**2`` then pixel shuffle: one logit per pixel."""
    return nn.Sequential(
        PointwiseConv2d(embed_dim, patch_size * patch_size),
        nn.PixelShuffle(patch_size),
    )
