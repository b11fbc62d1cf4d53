"""The MsSSL hybrid backbone alone and under the SSiT objective (tiny branches, random init)."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from ssit.backbones import backbone_kind, create_backbone, extract_backbone, load_into
from ssit.backbones.config import MsSSLConfig, ViTConfig
from ssit.backbones.msssl import MsSSLHybrid, kept_pixel_mask, resample_to_grid
from ssit.config import load_config
from ssit.methods import SSiTConfig, create_method
from ssit.methods.ssit import SSiT
from ssit.train.config import PretrainConfig

TINY_HYBRID = MsSSLConfig(
    arch="vit_tiny_patch16_224", img_size=64,
    kwargs={"depth": 1, "embed_dim": 32, "num_heads": 2},
    cnn_arch="resnet18", fpn_width=16, cbam_reduction=4,
)
TINY_METHOD = SSiTConfig(proj_dim=16, mlp_dim=32)


def tiny_ssit(seed: int = 0, backbone: MsSSLConfig = TINY_HYBRID, **options: Any) -> SSiT:
    torch.manual_seed(seed)
    return create_method(dataclasses.replace(TINY_METHOD, **options), backbone)


def views(batch: int = 4, seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    images = list(torch.randn(2, batch, 3, 64, 64, generator=generator))
    maps = list(torch.rand(2, batch, 1, 64, 64, generator=generator))
    return images, maps


@pytest.fixture(scope="module")
def hybrid() -> MsSSLHybrid:
    torch.manual_seed(0)
    return create_backbone(TINY_HYBRID).eval()


@pytest.mark.parametrize("size", [224, 384])
def test_output_shapes_at_the_pretraining_and_grading_sizes(size: int) -> None:
    torch.manual_seed(0)
    model = create_backbone(dataclasses.replace(TINY_HYBRID, img_size=size)).eval()
    grid = size // 16
    with torch.no_grad():
        output = model.encode(torch.randn(2, 3, size, size))
        pooled = model(torch.randn(2, 3, size, size))
    assert model.num_features == 32 + 2 * 16
    assert pooled.shape == output.pooled.shape == (2, 64)
    assert output.vit_map.shape == (2, 32, grid, grid)
    assert output.deep_map.shape == (2, 16, 4 * grid, 4 * grid)  # two rounds of x2


def test_default_hybrid_is_vit_s16_with_resnet50_fpn_256() -> None:
    with torch.device("meta"):
        model = create_backbone(MsSSLConfig())
        vit = create_backbone(ViTConfig())
    assert model.num_features == 384 + 2 * 256
    assert list(model.cnn.feature_info.channels()) == [256, 512, 1024, 2048]
    assert len(model.deep_learner) == 2
    params = sum(p.numel() for p in model.parameters())
    ratio = params / sum(p.numel() for p in vit.parameters())
    assert 2.0 < ratio < 2.6, ratio


def test_pooled_feature_is_class_token_then_avg_and_max_of_the_deep_map(hybrid) -> None:
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        output = hybrid.encode(x)
        class_token = hybrid.vit.forward_features(x)[:, 0]
    expected = torch.cat([class_token, output.deep_map.mean(dim=(2, 3)),
                          output.deep_map.amax(dim=(2, 3))], dim=1)
    torch.testing.assert_close(output.pooled, expected)
    torch.testing.assert_close(backbone_kind("msssl_hybrid").grading_features(hybrid, x),
                               output.pooled)
    assert backbone_kind("msssl_hybrid").grading_dim(hybrid) == 64


def test_sum_fusion_and_other_round_counts_build() -> None:
    torch.manual_seed(0)
    model = create_backbone(dataclasses.replace(TINY_HYBRID, fusion="sum",
                                                deep_learner_rounds=1)).eval()
    assert model.fusion.mix[0].in_channels == 16  # concat would be 5 x 16
    with torch.no_grad():
        assert model.encode(torch.randn(1, 3, 64, 64)).deep_map.shape == (1, 16, 8, 8)


def test_resample_to_grid_pools_down_and_interpolates_up() -> None:
    feature = torch.arange(16.0).view(1, 1, 4, 4)
    torch.testing.assert_close(resample_to_grid(feature, (2, 2)),
                               torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))
    assert resample_to_grid(feature, (4, 4)) is feature
    up = resample_to_grid(torch.tensor([[[[1.0, 3.0]]]]), (1, 4))
    torch.testing.assert_close(up, torch.tensor([[[[1.0, 1.5, 2.5, 3.0]]]]))


def test_kept_pixel_mask_covers_the_kept_patches() -> None:
    mask = kept_pixel_mask(torch.tensor([[3, 0]]), (2, 2), patch_size=2)
    expected = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]).float()
    torch.testing.assert_close(mask, expected.view(1, 1, 4, 4))


@pytest.mark.parametrize("segment_from", ["tokens", "deep_learner"])
def test_gradients_reach_both_branches_and_the_deep_learner(segment_from: str) -> None:
    model = tiny_ssit(segment_from=segment_from).train()
    model.update_momentum_encoder(0.99)
    losses = model(*views())
    (losses["cl"] + losses["ss"]).backward()
    for part in ("vit", "cnn", "fpn", "fusion", "deep_learner", "head"):
        grads = [p.grad for name, p in model.base_encoder.named_parameters()
                 if name.startswith(f"{part}.")]
        assert grads and all(g is not None for g in grads), part
        assert sum(g.abs().sum() for g in grads) > 0, part
    assert all(p.grad is None for p in model.momentum_encoder.parameters())
    # Gradients laid out like their parameters (DDP's buckets copy them otherwise).
    assert all(p.grad.stride() == p.stride() for p in model.parameters() if p.grad is not None)
    assert model.segment(views()[0][0]).shape == (4, 1, 64, 64)


def test_segmentation_head_reads_the_chosen_map() -> None:
    assert tiny_ssit().saliency_segmentor[0].in_channels == 32  # ViT tokens, 16x16 pixel blocks
    finer = tiny_ssit(segment_from="deep_learner").saliency_segmentor
    assert finer[0].in_channels == 16 and finer[1].upscale_factor == 4


def keys_and_vit_side(model: SSiT, x: torch.Tensor, saliency: torch.Tensor):
    features = model.key_features(x, saliency)
    kept = torch.tensor([list(range(12))])  # the bottom patch row (12..15) is dropped
    output = model.momentum_encoder.encode(x, kept, model.mask_cnn_pixels)
    return features, output.pooled[:, :32], output.vit_map


@pytest.mark.parametrize("mask_cnn_pixels", [False, True])
def test_key_selection_drops_patches_of_the_vit_branch_only(mask_cnn_pixels: bool) -> None:
    model = tiny_ssit(mask_cnn_pixels=mask_cnn_pixels).eval()
    assert model.num_kept == 12
    saliency = torch.ones(1, 1, 64, 64)
    saliency[..., 48:, :] = 0.0
    x = torch.randn(1, 3, 64, 64)
    features, class_token, vit_map = keys_and_vit_side(model, x, saliency)
    assert torch.all(vit_map[..., 3, :] == 0)  # dropped positions are zeros in the ViT map

    hidden = x.clone()
    hidden[..., 48:, :] = torch.randn(1, 3, 16, 64)
    changed = keys_and_vit_side(model, hidden, saliency)
    torch.testing.assert_close(changed[1], class_token)  # the ViT branch never sees them
    torch.testing.assert_close(changed[2], vit_map)
    if mask_cnn_pixels:  # nor does the CNN once their pixels are blanked
        torch.testing.assert_close(changed[0], features)
    else:  # the CNN branch sees every pixel
        assert not torch.allclose(changed[0], features)

    visible = x.clone()
    visible[..., :16, :16] += 1.0  # patch 0 is kept
    assert not torch.allclose(model.key_features(visible, saliency), features)
    full = model.backbone_access.query(model.momentum_encoder, x)[0]
    assert not torch.allclose(full, features)  # the query pass sees every patch


def test_moco_v3_objective_runs_on_the_hybrid() -> None:
    model = tiny_ssit(pool=None, segmentation=False, w_ss=0.0).train()
    assert model.loss_names == ("cl",)
    model.update_momentum_encoder(0.99)
    assert model([views()[0][0], views()[0][1]], [None, None])["cl"].item() > 0


def test_sync_batchnorm_conversion_covers_every_norm(tmp_path: Path) -> None:
    model = tiny_ssit().eval()
    images, maps = views()
    before = model(images, maps)
    converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(model))
    norms = [m for m in converted.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert any(name.startswith("base_encoder.cnn.") for name, m in converted.named_modules()
               if isinstance(m, torch.nn.SyncBatchNorm))
    assert norms and all(isinstance(m, torch.nn.SyncBatchNorm) for m in norms)
    assert set(converted.state_dict()) == set(model.state_dict())
    after = converted(images, maps)
    for name in before:
        torch.testing.assert_close(before[name], after[name])


def test_checkpoint_round_trip_and_backbone_extraction(tmp_path: Path) -> None:
    model = tiny_ssit(seed=1).train()
    model.update_momentum_encoder(0.9)
    images, maps = views(seed=2)
    losses = model(images, maps)
    path = tmp_path / "checkpoint.pt"
    config = {"backbone": dataclasses.asdict(TINY_HYBRID),
              "method": dataclasses.asdict(TINY_METHOD)}
    torch.save({"model": model.state_dict(), "config": config}, path)

    restored = tiny_ssit(seed=7).train()
    load_into(restored, torch.load(path)["model"], strict=True, what="hybrid SSiT")
    restored.update_momentum_encoder(0.9)
    again = restored(images, maps)
    torch.testing.assert_close(again["cl"], losses["cl"])
    torch.testing.assert_close(again["ss"], losses["ss"])

    for branch, encoder in (("query", model.base_encoder), ("momentum", model.momentum_encoder)):
        backbone = extract_backbone(path, TINY_HYBRID, branch).eval()
        assert isinstance(backbone.head, torch.nn.Identity)  # the projector stays behind
        with torch.no_grad():
            torch.testing.assert_close(backbone(images[0]),
                                       copy.deepcopy(encoder).eval().pooled_features(images[0]))


def test_export_metadata_rebuilds_the_backbone_with_identical_features(
    hybrid, tmp_path: Path
) -> None:
    kind = backbone_kind("msssl_hybrid")
    cfg = dataclasses.replace(TINY_HYBRID, fusion="concat", cnn_kwargs={"drop_rate": 0.0})
    metadata = {"backbone": kind.name, **kind.export_metadata(cfg)}
    path = tmp_path / "hybrid.safetensors"
    save_file({k: v.contiguous() for k, v in hybrid.state_dict().items()}, str(path),
              metadata=metadata)

    rebuilt_cfg = backbone_kind(metadata["backbone"]).config_from_metadata(metadata)
    assert rebuilt_cfg == cfg
    rebuilt = kind.build(rebuilt_cfg)
    load_into(rebuilt, load_file(str(path)), strict=True, what="exported hybrid")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(x), hybrid(x))


def test_weights_taken_to_384_get_their_position_embeddings_resized(hybrid) -> None:
    kind = backbone_kind("msssl_hybrid")
    large = kind.build(dataclasses.replace(TINY_HYBRID, img_size=384))
    state = kind.adapt_state(hybrid.state_dict(), large)
    assert state["vit.pos_embed"].shape == (1, 1 + 24 * 24, 32)
    load_into(large, state, strict=True, what="hybrid at 384")
    torch.testing.assert_close(large.state_dict()["cnn.conv1.weight"],
                               hybrid.state_dict()["cnn.conv1.weight"])


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"fusion": "mean"}, "fusion"),
        ({"fpn_width": 0}, "fpn_width"),
        ({"deep_learner_rounds": -1}, "deep_learner_rounds"),
        ({"cbam_reduction": 0}, "cbam_reduction"),
        ({"cnn_arch": "vit_small_patch16_224"}, "CNN branch"),
        ({"cnn_arch": "no_such_cnn"}, "unknown"),
        ({"cnn_levels": []}, "level"),
        ({"cnn_levels": [1, 9]}, "cannot create"),
        ({"arch": "resnet18"}, "VisionTransformer"),
        ({"img_size": 72}, "divisible"),
    ],
)
def test_bad_hybrid_configuration_raises(changes: dict, match: str) -> None:
    with torch.device("meta"), pytest.raises(ValueError, match=match):
        create_backbone(dataclasses.replace(TINY_HYBRID, **changes))


@pytest.mark.parametrize(
    ("backbone", "options", "match"),
    [
        (ViTConfig(), {"mask_cnn_pixels": True}, "CNN branch"),
        (ViTConfig(), {"segment_from": "deep_learner"}, "msssl_hybrid"),
        (TINY_HYBRID, {"mask_cnn_pixels": True, "pool": None}, "key selection"),
        (TINY_HYBRID, {"segment_from": "deep_learner", "segmentation": False, "w_ss": 0.0},
         "segmentation"),
        (TINY_HYBRID, {"segment_from": "pixels"}, "segment_from"),
        (dataclasses.replace(TINY_HYBRID, deep_learner_rounds=5),
         {"segment_from": "deep_learner"}, "fewer rounds"),
    ],
)
def test_bad_ssit_options_for_the_backbone_raise(backbone, options: dict, match: str) -> None:
    with torch.device("meta"), pytest.raises(ValueError, match=match):
        create_method(dataclasses.replace(TINY_METHOD, **options), backbone)


def test_the_plain_vit_refuses_pixel_blanking() -> None:
    with pytest.raises(ValueError, match="CNN branch"):
        SSiT("vit_tiny_patch16_224", img_size=32, mlp_dim=8, proj_dim=8, mask_cnn_pixels=True,
             encoder_kwargs={"depth": 1, "embed_dim": 16, "num_heads": 1})


@pytest.mark.parametrize("name", ["msssl_vits16_r50_eyepacs", "msssl_demo_cpu"])
def test_packaged_configs_build_the_hybrid(name: str) -> None:
    cfg = load_config(PretrainConfig, name)
    assert isinstance(cfg.backbone, MsSSLConfig)
    with torch.device("meta"):
        model = create_method(cfg.method, cfg.backbone)
    assert isinstance(model.base_encoder, MsSSLHybrid)
