"""SimCLR: NT-Xent against a hand-worked value and a literal loop, the method and its views."""

from __future__ import annotations

import math

import pytest
import torch

from ssit.backbones import CNNConfig, ViTConfig
from ssit.data.views import AugmentationConfigError, augmentation_with_overrides
from ssit.methods.config import SimCLRConfig
from ssit.methods.simclr import (
    SIMCLR_VIEW,
    SimCLR,
    build_simclr,
    nt_xent_loss,
)


def loop_nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent as the SimCLR paper writes it, one view at a time."""
    views = torch.cat([z1, z2])
    views = views / views.norm(dim=1, keepdim=True)
    n = z1.shape[0]
    total = views.new_zeros(())
    for i in range(2 * n):
        partner = (i + n) % (2 * n)
        denominator = sum(
            torch.exp(views[i] @ views[k] / temperature) for k in range(2 * n) if k != i
        )
        total = total - torch.log(torch.exp(views[i] @ views[partner] / temperature) / denominator)
    return total / (2 * n)


def test_hand_worked_example() -> None:
    # Two images; after normalisation a1 = (1, 0), b1 = (0, 1), a2 = (1, 0), b2 = (0, -1).
    # Cosine similarities: a1.a2 = 1, b1.b2 = -1, every other pair 0. With T = 0.5:
    #   a1 and a2: -log(e^2 / (e^2 + e^0 + e^0)) = log(1 + 2 e^-2)
    #   b1 and b2: -log(e^-2 / (e^-2 + e^0 + e^0)) = log(1 + 2 e^2)
    # mean over the four views: (log(1 + 2 e^-2) + log(1 + 2 e^2)) / 2 = 1.4990842209...
    expected = (math.log(1 + 2 * math.exp(-2)) + math.log(1 + 2 * math.exp(2))) / 2
    assert expected == pytest.approx(1.499084220950699, abs=1e-15)
    z1 = torch.tensor([[2.0, 0.0], [0.0, 3.0]], dtype=torch.float64)  # unnormalised on purpose
    z2 = torch.tensor([[0.5, 0.0], [0.0, -1.0]], dtype=torch.float64)
    assert nt_xent_loss(z1, z2, 0.5).item() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(("n", "temperature"), [(1, 0.1), (3, 0.07), (6, 0.5)])
def test_equals_loop_in_values_and_gradients(n: int, temperature: float) -> None:
    generator = torch.Generator().manual_seed(n)
    a, b = torch.randn(2, n, 5, generator=generator, dtype=torch.float64)
    fast = [a.clone().requires_grad_(True), b.clone().requires_grad_(True)]
    slow = [a.clone().requires_grad_(True), b.clone().requires_grad_(True)]
    loss_fast = nt_xent_loss(*fast, temperature)
    loss_slow = loop_nt_xent(*slow, temperature)
    loss_fast.backward()
    loss_slow.backward()
    torch.testing.assert_close(loss_fast, loss_slow, rtol=1e-12, atol=1e-12)
    for f, s in zip(fast, slow, strict=True):
        torch.testing.assert_close(f.grad, s.grad, rtol=1e-10, atol=1e-12)


def test_swapping_the_views_leaves_the_loss_unchanged() -> None:
    a, b = torch.randn(2, 4, 8, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(nt_xent_loss(a, b, 0.1), nt_xent_loss(b, a, 0.1))


def test_float32_under_autocast() -> None:
    a, b = torch.randn(2, 4, 8, generator=torch.Generator().manual_seed(2)).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = nt_xent_loss(a, b, 0.1)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, nt_xent_loss(a.float(), b.float(), 0.1))


@pytest.mark.parametrize(
    ("shape1", "shape2", "temperature", "message"),
    [
        ((4, 8), (3, 8), 0.1, "must both be"),
        ((4, 8), (4, 7), 0.1, "must both be"),
        ((8,), (8,), 0.1, "must both be"),
        ((0, 8), (0, 8), 0.1, "must both be"),
        ((4, 8), (4, 8), 0.0, "temperature must be positive"),
        ((4, 8), (4, 8), -0.1, "temperature must be positive"),
        ((4, 8), (4, 8), float("nan"), "temperature must be positive"),
    ],
)
def test_bad_input_is_refused(shape1, shape2, temperature, message) -> None:
    with pytest.raises(ValueError, match=message):
        nt_xent_loss(torch.randn(shape1), torch.randn(shape2), temperature)


def test_view_recipe_is_simclr_s() -> None:
    view = SIMCLR_VIEW
    assert view.crop_scale == (0.08, 1.0)
    assert (view.brightness, view.contrast, view.saturation, view.hue) == (0.8, 0.8, 0.8, 0.2)
    assert (view.jitter_p, view.grayscale_p) == (0.8, 0.2)
    assert view.hflip_p == 0.5 and view.blur_p > 0
    assert view.rotation_p == view.vflip_p == view.solarize_p == 0.0


def test_augmentation_overrides() -> None:
    view = augmentation_with_overrides(SIMCLR_VIEW, {"crop_scale": [0.2, 1.0], "blur_p": 1.0})
    assert view.crop_scale == (0.2, 1.0) and view.blur_p == 1.0
    assert view.hue == SIMCLR_VIEW.hue
    assert augmentation_with_overrides(SIMCLR_VIEW, {}) == SIMCLR_VIEW


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        ({"colour": 1}, ValueError, "unknown augmentation option.*colour"),
        ({"crop_scale": [0.9, 0.1]}, AugmentationConfigError, "crop_scale"),
        ({"brightness": 1.5}, AugmentationConfigError, "brightness"),
        ({"jitter_p": "often"}, AugmentationConfigError,
         r"jitter_p must be in \[0, 1\], got 'often'"),
    ],
)
def test_bad_augmentation_overrides_are_refused(overrides, error, message) -> None:
    with pytest.raises(error, match=message):
        augmentation_with_overrides(SIMCLR_VIEW, overrides)


def test_build_simclr_resnet18_one_step() -> None:
    torch.manual_seed(0)
    cfg = SimCLRConfig(proj_hidden=32, proj_dim=16, augmentation={"blur_p": 1.0})
    method = build_simclr(cfg, CNNConfig(arch="resnet18", img_size=32))
    assert len(method.views) == 2 and not any(v.with_map for v in method.views)
    assert method.views[0].augmentation.blur_p == 1.0
    assert method.views[0].augmentation == method.views[1].augmentation
    assert [layer.__class__.__name__ for layer in method.projector] == ["Linear", "ReLU", "Linear"]
    assert method.projector[0].in_features == 512 and method.projector[-1].out_features == 16
    keys = method.state_dict().keys()
    assert all(key.startswith(("base_encoder.", "projector.")) for key in keys)
    images = list(torch.randn(2, 3, 3, 32, 32).unbind(0))
    losses = method(images, [None, None])
    assert set(losses) == set(method.loss_names) == {"cl"}
    losses["cl"].backward()
    assert losses["cl"].item() > 0
    assert method.base_encoder.conv1.weight.grad.abs().sum() > 0


def test_build_simclr_tiny_vit() -> None:
    backbone = ViTConfig(arch="vit_tiny_patch16_224", img_size=32,
                         kwargs={"depth": 1, "embed_dim": 24, "num_heads": 2})
    method = build_simclr(SimCLRConfig(proj_hidden=16, proj_dim=8), backbone)
    loss = method(list(torch.randn(2, 2, 3, 32, 32).unbind(0)), [None, None])["cl"]
    assert torch.isfinite(loss)


def test_method_refuses_wrong_views() -> None:
    method = build_simclr(SimCLRConfig(proj_hidden=8, proj_dim=4),
                          CNNConfig(arch="resnet18", img_size=32))
    with pytest.raises(ValueError, match="needs 2 views"):
        method(list(torch.randn(3, 2, 3, 32, 32).unbind(0)), [None] * 3)


@pytest.mark.parametrize(
    ("kwargs", "message"), [({"temperature": 0.0}, "temperature"), ({"proj_hidden": 0}, "proj")]
)
def test_method_refuses_bad_options(kwargs, message) -> None:
    backbone = torch.nn.Linear(4, 4)
    backbone.num_features = 4
    with pytest.raises(ValueError, match=message):
        SimCLR(backbone, **kwargs)
