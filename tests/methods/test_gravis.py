"""GraVIS: the Smooth-AP loss against hand-worked values and the literal B^3 form, the method."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ssit.backbones import CNNConfig
from ssit.data.views import AugmentationConfigError
from ssit.methods.config import GraVISConfig
from ssit.methods.gravis import GRAVIS_VIEW, GraVIS, build_gravis, smooth_ap_loss


def literal_smooth_ap(
    z: torch.Tensor,
    k: int,
    tau: float,
    normalize: bool = False,
    hardness_temperature: float | None = None,
) -> torch.Tensor:
    """SPEC 7.3 written out with B x B x B tensors, as the released code computes it."""
    if normalize:
        z = torch.nn.functional.normalize(z, dim=1)
    b = z.shape[0]
    s = z @ z.T
    # diff[q, i, j] = s_qj - s_qi
    sg = torch.sigmoid((s[:, None, :] - s[:, :, None]) / tau)
    image = torch.arange(b) // k
    same = image[:, None] == image[None, :]
    not_self = ~torch.eye(b, dtype=torch.bool)
    rank_all = 1 + (sg * not_self).sum(dim=2)  # [q, i]
    rank_pos = 1 + (sg * (same & not_self)).sum(dim=2)
    positive = same.to(z.dtype)  # [q, i]: i is a view of q's image
    if hardness_temperature is None:
        weights = positive / k
    else:
        logits = (s / hardness_temperature).masked_fill(~same, float("-inf"))
        weights = torch.softmax(logits, dim=1).detach()
    ap = (weights * rank_pos / rank_all).sum(dim=1)
    return 1 - ap.mean()


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_hand_worked_example_two_images_two_views() -> None:
    # z = [1, 2 | 0, 1] (D = 1; rows 0-1 image A, rows 2-3 image B), tau = 1, so
    # s = z z^T has rows q0 = [1, 2, 0, 1], q1 = [2, 4, 0, 2], q2 = [0, 0, 0, 0], q3 = [1, 2, 0, 1]
    # and sg(x) = sigmoid(x); note sigmoid(x) + sigmoid(-x) = 1 and sigmoid(0) = 1/2.
    sg = sigmoid
    # q0, positives 0 (s=1) and 1 (s=2):
    #   i=0: R(P) = 1 + sg(1),  R(all) = 1 + sg(1) + sg(-1) + sg(0) = 2.5
    #   i=1: R(P) = 1 + sg(-1), R(all) = 1 + sg(-1) + sg(-2) + sg(-1)
    ap0 = ((1 + sg(1)) / 2.5 + (1 + sg(-1)) / (1 + 2 * sg(-1) + sg(-2))) / 2
    # q1, positives 0 (s=2) and 1 (s=4):
    #   i=0: R(P) = 1 + sg(2),  R(all) = 1 + sg(2) + sg(-2) + sg(0) = 2.5
    #   i=1: R(P) = 1 + sg(-2), R(all) = 1 + sg(-2) + sg(-4) + sg(-2)
    ap1 = ((1 + sg(2)) / 2.5 + (1 + sg(-2)) / (1 + 2 * sg(-2) + sg(-4))) / 2
    # q2: every similarity is 0, so R(P) = 1.5 and R(all) = 2.5 for both positives.
    ap2 = 0.6
    # q3, positives 2 (s=0) and 3 (s=1):
    #   i=2: R(P) = 1 + sg(1),  R(all) = 1 + sg(1) + sg(2) + sg(1)
    #   i=3: R(P) = 1 + sg(-1), R(all) = 1 + sg(0) + sg(1) + sg(-1) = 2.5
    ap3 = ((1 + sg(1)) / (1 + 2 * sg(1) + sg(2)) + (1 + sg(-1)) / 2.5) / 2
    expected = 1 - (ap0 + ap1 + ap2 + ap3) / 4  # 0.334159751624...
    assert expected == pytest.approx(0.3341597516245163, abs=1e-15)

    z = torch.tensor([[1.0], [2.0], [0.0], [1.0]], dtype=torch.float64)
    assert smooth_ap_loss(z, 2, temperature=1.0).item() == pytest.approx(expected, abs=1e-12)
    assert literal_smooth_ap(z, 2, 1.0).item() == pytest.approx(expected, abs=1e-12)


def test_hand_worked_hardness_weights() -> None:
    # Same z; weights softmax over q's positives of s_qi / T_h with T_h = 1.
    # q2 has equal similarities: weights 1/2 each, AP 0.6 as before. q0 and q3 (positive
    # similarities 1, 2 and 0, 1): weights 1 / (1 + e) and e / (1 + e) on the two ratios of the
    # example above; q1 (similarities 2, 4): 1 / (1 + e^2) and e^2 / (1 + e^2).
    sg = sigmoid
    w = (1 / (1 + math.e), math.e / (1 + math.e))
    ap0 = w[0] * (1 + sg(1)) / 2.5 + w[1] * (1 + sg(-1)) / (1 + 2 * sg(-1) + sg(-2))
    w1 = (1 / (1 + math.e**2), math.e**2 / (1 + math.e**2))
    ap1 = w1[0] * (1 + sg(2)) / 2.5 + w1[1] * (1 + sg(-2)) / (1 + 2 * sg(-2) + sg(-4))
    ap3 = w[0] * (1 + sg(1)) / (1 + 2 * sg(1) + sg(2)) + w[1] * (1 + sg(-1)) / 2.5
    expected = 1 - (ap0 + ap1 + 0.6 + ap3) / 4
    z = torch.tensor([[1.0], [2.0], [0.0], [1.0]], dtype=torch.float64)
    loss = smooth_ap_loss(z, 2, 1.0, hardness_aware=True, hardness_temperature=1.0)
    assert loss.item() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    ("n", "k", "tau", "normalize", "hardness"),
    [
        (3, 2, 0.2, False, None),
        (4, 3, 0.2, False, None),
        (2, 5, 0.5, True, None),
        (5, 4, 0.2, False, 0.1),
        (3, 3, 0.3, True, 0.5),
        (1, 4, 0.2, False, None),
    ],
)
def test_equals_literal_form_in_values_and_gradients(n, k, tau, normalize, hardness) -> None:
    generator = torch.Generator().manual_seed(n * 100 + k)
    base = torch.randn(n * k, 6, generator=generator, dtype=torch.float64) * 0.6
    z_fast = base.clone().requires_grad_(True)
    z_slow = base.clone().requires_grad_(True)
    fast = smooth_ap_loss(
        z_fast,
        k,
        tau,
        normalize=normalize,
        hardness_aware=hardness is not None,
        hardness_temperature=hardness or 0.1,
    )
    slow = literal_smooth_ap(z_slow, k, tau, normalize, hardness)
    fast.backward()
    slow.backward()
    torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(z_fast.grad, z_slow.grad, rtol=1e-10, atol=1e-12)
    if n > 1:
        assert z_fast.grad.abs().sum() > 0
    else:  # one image: every row is a positive, AP = 1 whatever the embeddings
        assert fast.item() == pytest.approx(0.0, abs=1e-12)


def test_raw_dot_products_differ_from_normalised_ones() -> None:
    z = torch.randn(8, 4, generator=torch.Generator().manual_seed(3)) * 3
    assert not torch.isclose(smooth_ap_loss(z, 2), smooth_ap_loss(z, 2, normalize=True))


def test_hardness_weights_tend_to_uniform_at_high_temperature() -> None:
    z = torch.randn(12, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    plain = smooth_ap_loss(z, 3)
    hot = smooth_ap_loss(z, 3, hardness_aware=True, hardness_temperature=1e9)
    cold = smooth_ap_loss(z, 3, hardness_aware=True, hardness_temperature=0.1)
    torch.testing.assert_close(hot, plain)
    assert not torch.isclose(cold, plain)


def test_ordering_matters_views_of_one_image_are_contiguous() -> None:
    # Two tight clusters: contiguous rows of one cluster score a low loss; the same rows
    # interleaved with the other cluster's are treated as other images and score a high one.
    a = torch.tensor([[3.0, 0.0]]).repeat(3, 1)
    b = torch.tensor([[0.0, 3.0]]).repeat(3, 1)
    contiguous = smooth_ap_loss(torch.cat([a, b]), 3)
    interleaved = smooth_ap_loss(torch.stack([a, b], 1).flatten(0, 1), 3)
    assert contiguous < 0.2 < interleaved


def test_memory_grows_as_b_squared_k_not_b_cubed() -> None:
    # B = 3000, K = 2: a B^3 float tensor would need 108 GB; the (B, K, B) form needs 72 MB.
    z = torch.randn(3000, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        loss = smooth_ap_loss(z, 2)
    assert 0 < loss.item() < 1


def test_float32_under_autocast() -> None:
    z = torch.randn(8, 16, generator=torch.Generator().manual_seed(6))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = smooth_ap_loss(z.bfloat16(), 2)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, smooth_ap_loss(z.bfloat16().float(), 2))


@pytest.mark.parametrize(
    ("shape", "k", "kwargs", "message"),
    [
        ((8, 4), 1, {}, "at least 2"),
        ((9, 4), 2, {}, "views per image"),
        ((8,), 2, {}, "views per image"),
        ((0, 4), 2, {}, "views per image"),
        ((8, 4), 2, {"temperature": 0.0}, "positive"),
        ((8, 4), 2, {"temperature": -0.2}, "positive"),
        ((8, 4), 2, {"hardness_aware": True, "hardness_temperature": 0.0}, "positive"),
    ],
)
def test_bad_input_is_refused(shape, k, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        smooth_ap_loss(torch.randn(shape), k, **kwargs)


class FlatLinear(nn.Module):
    """A small real backbone: flatten, then one linear layer to ``num_features``."""

    def __init__(self, size: int, num_features: int = 12) -> None:
        super().__init__()
        self.num_features = num_features
        self.linear = nn.Linear(3 * size * size, num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


def test_method_stacks_the_views_of_each_image_contiguously() -> None:
    torch.manual_seed(0)
    method = GraVIS(FlatLinear(8), views_per_image=3, proj_hidden=16, proj_dim=8)
    images = list(torch.randn(3, 4, 3, 8, 8).unbind(0))  # view v of image n: images[v][n]
    losses = method(images, [None] * 3)
    assert set(losses) == set(method.loss_names) == {"ap"}
    rows = torch.stack([images[v][n] for n in range(4) for v in range(3)])
    expected = smooth_ap_loss(method.projector(method.base_encoder(rows)), 3)
    torch.testing.assert_close(losses["ap"], expected)


def test_method_refuses_a_batch_with_the_wrong_number_of_views() -> None:
    method = GraVIS(FlatLinear(8), views_per_image=3, proj_hidden=16, proj_dim=8)
    with pytest.raises(ValueError, match="needs 3 views"):
        method(list(torch.randn(2, 4, 3, 8, 8).unbind(0)), [None] * 2)


def test_build_gravis_resnet18_one_step() -> None:
    torch.manual_seed(0)
    cfg = GraVISConfig(views_per_image=3, proj_hidden=32, proj_dim=16)
    method = build_gravis(cfg, CNNConfig(arch="resnet18", img_size=32))
    assert len(method.views) == 3
    assert all(v.augmentation == GRAVIS_VIEW and not v.with_map for v in method.views)
    assert method.projector[0].in_features == 512
    assert method.projector[-1].out_features == 16
    keys = method.state_dict().keys()
    assert all(key.startswith(("base_encoder.", "projector.")) for key in keys)
    images = list(torch.randn(3, 2, 3, 32, 32).unbind(0))
    loss = method(images, [None] * 3)["ap"]
    loss.backward()
    assert 0 < loss.item() < 1
    assert method.base_encoder.conv1.weight.grad.abs().sum() > 0
    assert method.projector[0].weight.grad.abs().sum() > 0


def test_gravis_view_recipe_is_the_documented_one() -> None:
    assert GRAVIS_VIEW.crop_scale == (0.08, 1.0)
    assert GRAVIS_VIEW.solarize_p == 0.0
    assert GRAVIS_VIEW.rotation_p > 0 and GRAVIS_VIEW.hflip_p > 0 and GRAVIS_VIEW.vflip_p > 0


def test_build_gravis_applies_augmentation_overrides() -> None:
    cfg = GraVISConfig(views_per_image=2, proj_hidden=8, proj_dim=4,
                       augmentation={"crop_scale": [0.2, 1.0], "rotation_p": 0.0})
    method = build_gravis(cfg, CNNConfig(arch="resnet18", img_size=32))
    assert method.views[0].augmentation.crop_scale == (0.2, 1.0)
    assert method.views[1].augmentation.rotation_p == 0.0
    assert method.views[0].augmentation.brightness == GRAVIS_VIEW.brightness


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        ({"zoom": 2}, ValueError, "unknown augmentation option"),
        ({"hflip_p": 2.0}, AugmentationConfigError, "hflip_p"),
    ],
)
def test_build_gravis_refuses_bad_augmentation(overrides, error, message) -> None:
    cfg = GraVISConfig(views_per_image=2, augmentation=overrides)
    with pytest.raises(error, match=message):
        build_gravis(cfg, CNNConfig(arch="resnet18", img_size=32))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"views_per_image": 1}, "views_per_image"),
        ({"temperature": 0.0}, "temperature"),
        ({"hardness_temperature": -1.0}, "hardness_temperature"),
        ({"proj_dim": 0}, "proj_dim"),
    ],
)
def test_method_refuses_bad_options(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        GraVIS(FlatLinear(8), **kwargs)
