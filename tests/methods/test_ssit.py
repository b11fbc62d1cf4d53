"""Behaviour of the SSiT module: names, momentum, selection, segmentation, bad input."""

from __future__ import annotations

import copy

import pytest
import torch

from ssit.methods.contrastive import contrastive_loss, saliency_segmentation_loss
from ssit.methods.ssit import SSiT
from tests.methods.conftest import run_ssit, views

# Names as in the authors' state dicts (their model was built the same way).
AUTHOR_NAMES = [
    "base_encoder.cls_token",
    "base_encoder.pos_embed",
    "base_encoder.patch_embed.proj.weight",
    "base_encoder.blocks.0.norm1.weight",
    "base_encoder.blocks.0.attn.qkv.weight",
    "base_encoder.blocks.0.attn.qkv.bias",
    "base_encoder.blocks.0.attn.proj.weight",
    "base_encoder.blocks.0.norm2.bias",
    "base_encoder.blocks.0.mlp.fc1.weight",
    "base_encoder.blocks.0.mlp.fc2.bias",
    "base_encoder.norm.weight",
    "base_encoder.head.0.weight",
    "base_encoder.head.1.running_mean",
    "base_encoder.head.6.weight",
    "base_encoder.head.7.running_mean",
    "momentum_encoder.blocks.1.attn.qkv.weight",
    "momentum_encoder.head.7.running_var",
    "predictor.0.weight",
    "predictor.1.weight",
    "predictor.3.weight",
    "predictor.4.running_mean",
    "saliency_segmentor.0.weight",
    "saliency_segmentor.0.bias",
]


def test_state_dict_uses_the_authors_names(make_ssit) -> None:
    names = set(make_ssit().state_dict())
    assert set(AUTHOR_NAMES) <= names
    prefixes = {name.split(".")[0] for name in names}
    assert prefixes == {"base_encoder", "momentum_encoder", "predictor", "saliency_segmentor"}
    assert "predictor.4.weight" not in names  # last BN without affine
    assert "base_encoder.head.7.weight" not in names


def test_momentum_encoder_starts_as_a_frozen_copy(make_ssit) -> None:
    model = make_ssit()
    query = dict(model.base_encoder.named_parameters())
    for name, param in model.momentum_encoder.named_parameters():
        assert not param.requires_grad
        assert torch.equal(param, query[name])
        assert param.data_ptr() != query[name].data_ptr()


def test_forward_returns_two_scalar_losses_and_no_gradient_reaches_momentum(make_ssit) -> None:
    model = make_ssit()
    loss_cl, loss_ss = run_ssit(model, *views(), momentum=0.99)
    assert loss_cl.shape == loss_ss.shape == ()
    assert loss_cl.item() > 0 and loss_ss.item() > 0
    (loss_cl + 10 * loss_ss).backward()
    for param in model.momentum_encoder.parameters():
        assert param.grad is None
    for module in (model.base_encoder, model.predictor, model.saliency_segmentor):
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None for g in grads)
        assert sum(g.abs().sum() for g in grads) > 0


def test_momentum_parameters_follow_the_ema_rule_after_a_step(make_ssit) -> None:
    model = make_ssit()
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1
    )
    loss_cl, loss_ss = run_ssit(model, *views(seed=1), momentum=0.99)
    (loss_cl + loss_ss).backward()
    optimizer.step()
    old = {name: p.detach().clone() for name, p in model.momentum_encoder.named_parameters()}
    query = {name: p.detach().clone() for name, p in model.base_encoder.named_parameters()}
    assert any(not torch.equal(old[name], query[name]) for name in old)

    run_ssit(model, *views(seed=2), momentum=0.9)
    for name, param in model.momentum_encoder.named_parameters():
        expected = 0.9 * old[name] + 0.1 * query[name]
        torch.testing.assert_close(param.detach(), expected, rtol=1e-6, atol=1e-7)
    assert any(name.startswith("head.") for name in old)  # projector is averaged too


def test_forward_equals_the_per_view_computation_of_the_original(make_ssit) -> None:
    """Batching both views must not change the loss: heads see one view at a time."""
    model = make_ssit()
    reference = copy.deepcopy(model)
    x1, x2, m1, m2 = views(seed=3)
    loss_cl, loss_ss = run_ssit(model, x1, x2, m1, m2, momentum=0.95)

    reference.update_momentum_encoder(0.95)
    q1 = reference.predictor(reference.base_encoder(x1))
    q2 = reference.predictor(reference.base_encoder(x2))
    with torch.no_grad():
        k1 = reference.momentum_encoder.head(reference.key_features(x1, m1))
        k2 = reference.momentum_encoder.head(reference.key_features(x2, m2))
    expected_cl = contrastive_loss(q1, k2, 0.2) + contrastive_loss(q2, k1, 0.2)
    expected_ss = saliency_segmentation_loss(
        reference.segment(x1), m1, 0.5
    ) + saliency_segmentation_loss(reference.segment(x2), m2, 0.5)
    torch.testing.assert_close(loss_cl, expected_cl, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss_ss, expected_ss, rtol=1e-5, atol=1e-6)


def test_keys_see_only_the_selected_patches(make_ssit) -> None:
    model = make_ssit().eval()  # 4x4 grid, 12 of 16 patches kept
    assert model.num_kept == 12
    x = torch.randn(1, 3, 64, 64)
    saliency = torch.ones(1, 1, 64, 64)
    saliency[..., 48:, :] = 0.0  # bottom patch row (patches 12..15) is dropped
    features = model.key_features(x, saliency)

    hidden = x.clone()
    hidden[..., 48:, :] = torch.randn(1, 3, 16, 64)
    torch.testing.assert_close(model.key_features(hidden, saliency), features)

    visible = x.clone()
    visible[..., :16, :16] += 1.0  # patch 0 is kept
    assert not torch.allclose(model.key_features(visible, saliency), features)


def test_without_pooling_keys_see_every_patch_as_in_moco_v3(make_ssit) -> None:
    model = make_ssit(pool=None).eval()
    assert model.num_kept == 16
    x = torch.randn(1, 3, 64, 64)
    saliency = torch.zeros(1, 1, 64, 64)
    features = model.key_features(x, saliency)
    # Keys equal the momentum encoder's plain forward on all patches.
    encoder = model.momentum_encoder
    full = encoder.forward_head(encoder.forward_features(x), pre_logits=True)
    torch.testing.assert_close(features, full)
    changed = x.clone()
    changed[..., 48:, 48:] += 1.0  # the last patch now matters
    assert not torch.allclose(model.key_features(changed, saliency), features)
    assert model.key_features(x, None).shape == features.shape


def test_moco_v3_baseline_needs_no_saliency(make_ssit) -> None:
    model = make_ssit(pool=None, segmentation=False)
    assert model.saliency_segmentor is None
    assert not any(name.startswith("saliency_segmentor") for name in model.state_dict())
    x1, x2, _, _ = views()
    loss_cl, loss_ss = run_ssit(model, x1, x2, None, None, momentum=0.99)
    assert loss_ss.item() == 0.0 and loss_cl.item() > 0
    with pytest.raises(RuntimeError, match="segmentation"):
        model.segment(x1)


@pytest.mark.parametrize(
    ("arch", "patch"),
    [
        ("vit_tiny_patch16_224", 16),
        ("vit_small_patch16_224", 16),
        ("vit_base_patch16_224", 16),
        ("vit_large_patch16_224", 16),
        ("vit_small_patch32_224", 32),
        ("vit_base_patch32_224", 32),
        ("vit_large_patch32_224", 32),
    ],
)
def test_segmentation_logits_have_the_input_size(arch: str, patch: int) -> None:
    torch.manual_seed(0)
    model = SSiT(arch, img_size=64, mlp_dim=32, proj_dim=16, encoder_kwargs={"depth": 1})
    assert model.patch_size == patch
    assert model.grid_size == (64 // patch,) * 2
    x = torch.randn(2, 3, 64, 64)
    assert model.segment(x).shape == (2, 1, 64, 64)
    assert model.num_kept == int(0.75 * (64 // patch) ** 2)


def test_sync_batchnorm_conversion_keeps_names_and_outputs(make_ssit) -> None:
    model = make_ssit().eval()
    x1, x2, m1, m2 = views()
    before = run_ssit(model, x1, x2, m1, m2, momentum=1.0)
    converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(model))
    norms = [m for m in converted.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and all(isinstance(m, torch.nn.SyncBatchNorm) for m in norms)
    assert set(converted.state_dict()) == set(model.state_dict())
    assert not converted.predictor[4].affine
    after = run_ssit(converted, x1, x2, m1, m2, momentum=1.0)
    for a, b in zip(before, after, strict=True):
        torch.testing.assert_close(a, b)


def test_avg_pooling_is_selectable(make_ssit) -> None:
    # Patches 0..11 are uniformly 0.5; each patch of the bottom row (12..15) has one pixel at 1.
    # Max pooling ranks the bottom row first and keeps it; average pooling (1/256 there) drops it.
    saliency = torch.full((1, 1, 64, 64), 0.5)
    saliency[..., 48:, :] = 0.0
    saliency[..., 48, ::16] = 1.0
    x = torch.randn(1, 3, 64, 64)
    changed = x.clone()
    changed[..., 48:, :] = torch.randn(1, 3, 16, 64)
    by_avg = make_ssit(pool="avg").eval()
    torch.testing.assert_close(by_avg.key_features(changed, saliency),
                               by_avg.key_features(x, saliency))
    by_max = make_ssit(pool="max").eval()
    assert not torch.allclose(by_max.key_features(changed, saliency),
                              by_max.key_features(x, saliency))


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"arch": "no_such_vit"}, "unknown"),
        ({"arch": "resnet18"}, "not a timm VisionTransformer"),
        ({"arch": "deit_tiny_distilled_patch16_224"}, "VisionTransformer"),
        ({"arch": "vit_medium_patch16_gap_256"}, "class token"),
        ({"img_size": 72}, "divisible"),
        ({"pool": "median"}, "pool"),
        ({"mask_ratio": 1.0}, "mask_ratio"),
        ({"temperature": 0.0}, "temperature"),
        ({"saliency_threshold": 1.5}, "saliency_threshold"),
    ],
)
def test_bad_configuration_raises(make_ssit, overrides: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_ssit(**overrides)


def test_bad_input_raises(make_ssit) -> None:
    model = make_ssit()
    x1, x2, m1, m2 = views()
    with pytest.raises(ValueError, match="x1"):
        run_ssit(model, x1[..., :32, :32], x2, m1, m2, 0.99)
    with pytest.raises(ValueError, match="differ"):
        run_ssit(model, x1, x2[:2], m1, m2, 0.99)
    with pytest.raises(ValueError, match="view 1 needs a saliency map"):
        run_ssit(model, x1, x2, m1, m2[:, :, :32], 0.99)
    with pytest.raises(ValueError, match="both views"):
        run_ssit(model, x1, x2, m1, None, 0.99)
    with pytest.raises(ValueError, match="saliency maps are needed"):
        run_ssit(model, x1, x2, None, None, 0.99)
    with pytest.raises(ValueError, match="momentum"):
        run_ssit(model, x1, x2, m1, m2, 1.5)
    with pytest.raises(ValueError, match="saliency maps are needed"):
        model.key_features(x1, None)


def test_selection_under_bf16_autocast_ranks_the_full_precision_map(make_ssit) -> None:
    model = make_ssit().eval()
    x = torch.randn(1, 3, 64, 64)
    saliency = torch.ones(1, 1, 64, 64)
    saliency[..., :16, :] = 0.999  # rounds to 1.0 in bf16; the top row must still be dropped
    hidden = x.clone()
    hidden[..., :16, :] = torch.randn(1, 3, 16, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(
            model.key_features(hidden, saliency), model.key_features(x, saliency)
        )


def test_view_overrides_reach_the_two_views() -> None:
    from ssit.backbones import ViTConfig
    from ssit.data.views import VIEW1, VIEW2
    from ssit.methods import SSiTConfig, create_method

    backbone = ViTConfig(arch="vit_tiny_patch16_224", img_size=32, kwargs={"depth": 1})
    paper = create_method(SSiTConfig(proj_dim=8, mlp_dim=16), backbone)
    assert [view.augmentation for view in paper.views] == [VIEW1, VIEW2]
    assert all(view.with_map for view in paper.views)
    scaled = create_method(
        SSiTConfig(proj_dim=8, mlp_dim=16, view1_augmentation={"blur_sigma": [0.1, 0.5]},
                   view2_augmentation={"solarize_p": 0.0}),
        backbone,
    )
    first, second = (view.augmentation for view in scaled.views)
    assert first.blur_sigma == (0.1, 0.5) and first.crop_scale == VIEW1.crop_scale
    assert second.solarize_p == 0.0 and second.blur_sigma == VIEW2.blur_sigma
