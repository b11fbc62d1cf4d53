"""CBAM: channel attention then spatial attention, checked against hand-worked values."""

from __future__ import annotations

import math

import pytest
import torch

from ssit.backbones.cbam import CBAM, ChannelAttention, SpatialAttention


def sigmoid(value: float) -> float:
    return 1.0 / (1.0 + math.exp(-value))


def hand_set_cbam(spatial_channel: int) -> CBAM:
    """2 channels, reduction 16 (one hidden unit): MLP ``h = relu(a + b)``, out ``(h, -h)``;
    the 7x7 spatial kernel is 1 at its centre for one input (0: channel mean, 1: max), else 0."""
    module = CBAM(channels=2, reduction=16, kernel_size=7)
    with torch.no_grad():
        module.channel.mlp[0].weight.copy_(torch.tensor([[1.0, 1.0]]).view(1, 2, 1, 1))
        module.channel.mlp[2].weight.copy_(torch.tensor([[1.0], [-1.0]]).view(2, 1, 1, 1))
        module.spatial.conv.weight.zero_()
        module.spatial.conv.weight[0, spatial_channel, 3, 3] = 1.0
    return module


# One image, 2 channels, a 1x2 map: channel 0 = [1, 3], channel 1 = [0, 2].
TINY_INPUT = torch.tensor([[[[1.0, 3.0]], [[0.0, 2.0]]]])


def test_cbam_on_a_hand_worked_input_with_the_channel_mean() -> None:
    # Channel attention: avg pool (2, 1) -> h = 3 -> (3, -3); max pool (3, 2) -> h = 5 ->
    # (5, -5); weights sigmoid(8), sigmoid(-8).
    w0, w1 = sigmoid(8.0), sigmoid(-8.0)
    reweighted = [[1.0 * w0, 3.0 * w0], [0.0 * w1, 2.0 * w1]]
    # Spatial attention from the channel mean at each position.
    spatial = [sigmoid((reweighted[0][i] + reweighted[1][i]) / 2) for i in range(2)]
    expected = torch.tensor([[[[reweighted[c][i] * spatial[i] for i in range(2)]]
                              for c in range(2)]])
    result = hand_set_cbam(spatial_channel=0)(TINY_INPUT)
    torch.testing.assert_close(result, expected)


def test_cbam_on_a_hand_worked_input_with_the_channel_max() -> None:
    w0, w1 = sigmoid(8.0), sigmoid(-8.0)
    reweighted = [[1.0 * w0, 3.0 * w0], [0.0 * w1, 2.0 * w1]]
    spatial = [sigmoid(max(reweighted[0][i], reweighted[1][i])) for i in range(2)]
    expected = torch.tensor([[[[reweighted[c][i] * spatial[i] for i in range(2)]]
                              for c in range(2)]])
    torch.testing.assert_close(hand_set_cbam(spatial_channel=1)(TINY_INPUT), expected)


def test_channel_attention_applies_relu_between_its_layers() -> None:
    attention = hand_set_cbam(spatial_channel=0).channel
    # Channels [-4, 2] and [0, 1]: avg (-1, 0.5) -> h = relu(-0.5) = 0; max (2, 1) -> h = 3.
    # Without the ReLU the average branch would add (-0.5, 0.5).
    x = torch.tensor([[[[-4.0, 2.0]], [[0.0, 1.0]]]])
    weights = attention(x).flatten()
    torch.testing.assert_close(weights, torch.tensor([sigmoid(3.0), sigmoid(-3.0)]))


def test_attention_keeps_the_shape_and_weights_lie_in_zero_one() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 32, 9, 7)
    assert CBAM(32)(x).shape == x.shape
    channel = ChannelAttention(32, reduction=16)(x)
    spatial = SpatialAttention(7)(x)
    assert channel.shape == (3, 32, 1, 1) and spatial.shape == (3, 1, 9, 7)
    for weights in (channel, spatial):
        assert torch.all((weights > 0) & (weights < 1))
    assert ChannelAttention(32, 16).mlp[0].out_channels == 2
    assert ChannelAttention(8, 16).mlp[0].out_channels == 1  # never fewer than one unit


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: ChannelAttention(0), "channels"),
        (lambda: ChannelAttention(8, reduction=0), "reduction"),
        (lambda: SpatialAttention(4), "odd"),
        (lambda: SpatialAttention(0), "odd"),
    ],
)
def test_bad_arguments_raise(build, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build()
