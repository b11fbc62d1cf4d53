"""DINO: the loss and centre against hand-worked values, the head, the schedules, the method's
hooks, its views and its configuration checks, and the centre over real gloo ranks."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from ssit.backbones import ViTConfig
from ssit.config import ConfigError, load_config
from ssit.methods import DINOConfig, create_method
from ssit.methods.dino import (
    DINOHead,
    cosine_between,
    dino_loss,
    teacher_temperature,
    updated_center,
)
from ssit.train.config import PretrainConfig, validate_pretrain_config
from tests.gloo_ranks import run_on_ranks

TINY_VIT = ViTConfig(arch="vit_tiny_patch16_224", img_size=32, kwargs={"depth": 2})


def tiny_dino(**options: object) -> nn.Module:
    torch.manual_seed(0)
    cfg = DINOConfig(**{"out_dim": 5, "head_hidden_dim": 8, "head_bottleneck_dim": 4,
                        "local_crops_number": 1, "local_crops_size": 16, **options})
    return create_method(cfg, TINY_VIT)


def crops(batch: int, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, 32, 32, generator=generator),
            torch.randn(batch, 3, 32, 32, generator=generator),
            torch.randn(batch, 3, 16, 16, generator=generator)]


# ---------------------------------------------------------------- loss and centre


def test_dino_loss_by_hand() -> None:
    # K = 3, one image, 2 global + 1 local crop. Teacher logits are 0.5 ln(p) (teacher_temp 0.5)
    # so softmax((t - c) / 0.5) = normalised exp of ln(p) - 2c; student logits 0.1 ln(q).
    center = 0.5 * torch.log(torch.tensor([[1.0, 1.0, 2.0]]))
    teacher = 0.5 * torch.log(torch.tensor([[1.0, 2.0, 1.0], [1.0, 1.0, 2.0]]))
    # teacher 0: (1, 2, 1/2) / 3.5 = (2/7, 4/7, 1/7); teacher 1: uniform (1/3 each).
    student = 0.1 * torch.log(torch.tensor([[1.0, 1.0, 2.0], [2.0, 1.0, 1.0], [1.0, 1.0, 1.0]]))
    # student 0: (1/4, 1/4, 1/2); student 1: (1/2, 1/4, 1/4); student 2: uniform.
    # Pairs: t0 with s1 = (2/7) ln 2 + (5/7) 2 ln 2 = 12/7 ln 2; t0 with s2 = ln 3;
    # t1 with s0 = (1/3)(2 + 2 + 1) ln 2 = 5/3 ln 2; t1 with s2 = ln 3. Mean of the four:
    expected = (71 / 21 * math.log(2) + 2 * math.log(3)) / 4  # 1.13518
    loss = dino_loss(student, teacher, center, 3, student_temp=0.1, teacher_temp=0.5)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert expected == pytest.approx(1.13518, abs=1e-5)
    # Without the centre teacher 0 becomes (1/4, 1/2, 1/4) and the loss changes.
    assert dino_loss(student, teacher, torch.zeros(1, 3), 3, 0.1, 0.5).item() != pytest.approx(
        expected, rel=1e-3)


def test_dino_loss_gradient_reaches_the_student_only() -> None:
    student = torch.randn(6, 4, requires_grad=True)
    teacher = torch.randn(4, 4, requires_grad=True)
    dino_loss(student, teacher, torch.zeros(1, 4), 3, 0.1, 0.04).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


@pytest.mark.parametrize(("rows", "n_crops"), [(6, 1), (7, 3)])
def test_dino_loss_refuses_rows_that_are_not_whole_crops(rows: int, n_crops: int) -> None:
    with pytest.raises(ValueError, match="crops"):
        dino_loss(torch.zeros(rows, 3), torch.zeros(2, 3), torch.zeros(1, 3), n_crops, 0.1, 0.04)


def test_updated_center_by_hand() -> None:
    center = torch.tensor([[1.0, 0.0, -1.0]])
    teacher = torch.tensor([[1.0, 0.0, 4.0], [3.0, 2.0, 0.0]])  # batch mean (2, 1, 2)
    new = updated_center(center, teacher, 0.9)
    assert torch.allclose(new, torch.tensor([[1.1, 0.1, -0.7]]), atol=1e-6)
    assert torch.equal(center, torch.tensor([[1.0, 0.0, -1.0]]))  # a new tensor


# ---------------------------------------------------------------- head


def test_head_keys_and_weight_normalisation() -> None:
    head = DINOHead(6, 5, hidden_dim=8, bottleneck_dim=4)
    state = head.state_dict()
    assert list(state) == ["mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias",
                           "mlp.4.weight", "mlp.4.bias", "last_layer.weight_g",
                           "last_layer.weight_v"]
    assert state["last_layer.weight_g"].shape == (5, 1)
    assert state["last_layer.weight_v"].shape == (5, 4)
    assert torch.equal(state["last_layer.weight_g"], torch.ones(5, 1))
    g = head.last_layer.parametrizations.weight.original0
    assert not g.requires_grad
    # the effective weight has rows of norm g = 1, whatever v
    assert torch.allclose(head.last_layer.weight.norm(dim=1), torch.ones(5), atol=1e-6)
    assert DINOHead(6, 5, norm_last_layer=False).last_layer.parametrizations.weight.original0\
        .requires_grad


def test_a_released_heads_keys_load_and_give_the_same_output() -> None:
    torch.manual_seed(1)
    released = nn.Module()  # the release's layout: mlp + torch.nn.utils.weight_norm
    released.mlp = nn.Sequential(nn.Linear(6, 8), nn.GELU(), nn.Linear(8, 8), nn.GELU(),
                                 nn.Linear(8, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        released.last_layer = nn.utils.weight_norm(nn.Linear(4, 5, bias=False))
    with torch.no_grad():
        released.last_layer.weight_g.mul_(torch.linspace(0.5, 2.0, 5).unsqueeze(1))
    head = DINOHead(6, 5, hidden_dim=8, bottleneck_dim=4, norm_last_layer=False)
    head.load_state_dict(released.state_dict())
    x = torch.randn(3, 6)
    expected = released.last_layer(nn.functional.normalize(released.mlp(x), dim=-1))
    assert torch.allclose(head(x), expected, atol=1e-6)


# ---------------------------------------------------------------- schedules


@pytest.mark.parametrize(("epoch", "expected"), [
    (0, 0.04), (0.9, 0.04), (1, 0.05), (2.5, 0.06), (3, 0.07), (4, 0.07), (30, 0.07)])
def test_teacher_temperature_warms_up_by_whole_epoch(epoch: float, expected: float) -> None:
    # np.linspace(0.04, 0.07, 4) = 0.04, 0.05, 0.06, 0.07 for epochs 0..3, then 0.07
    assert teacher_temperature(epoch, 0.04, 0.07, 4) == pytest.approx(expected)
    assert teacher_temperature(epoch, 0.04, 0.07, 0) == 0.07


@pytest.mark.parametrize(("epoch", "expected"), [(0, 0.04), (150, 0.22), (300, 0.4),
                                                 (75, 0.4 - 0.36 * 0.5 * (1 + 2**-0.5))])
def test_weight_decay_cosine(epoch: float, expected: float) -> None:
    assert cosine_between(epoch, 0.04, 0.4, 300) == pytest.approx(expected)


# ---------------------------------------------------------------- the method


def test_teacher_starts_as_the_student_and_only_sees_the_global_crops() -> None:
    model = tiny_dino()
    for (name, p), (_, q) in zip(model.base_encoder.named_parameters(),
                                 model.momentum_encoder.named_parameters(), strict=True):
        assert torch.equal(p, q), name
        assert not q.requires_grad
    assert model.base_encoder.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    assert isinstance(model.momentum_encoder.blocks[-1].drop_path1, nn.Identity)
    assert [v.size for v in model.views] == [None, None, 16]
    assert [(v.augmentation.blur_p, v.augmentation.solarize_p) for v in model.views] == [
        (1.0, 0.0), (0.1, 0.2), (0.5, 0.0)]
    assert all((v.augmentation.crop_interpolation, v.augmentation.rotation_p,
                v.augmentation.vflip_p, v.augmentation.hflip_p) == ("cubic", 0.0, 0.0, 0.5)
               for v in model.views)
    assert model.export_branch == "momentum"
    assert tiny_dino(export_student=True).export_branch == "query"


def test_forward_moves_the_centre_and_hooks_freeze_and_average() -> None:
    model = tiny_dino()
    model.before_step(0.0, 10)
    loss = model(crops(2), [None] * 3)["dino"]
    assert model.center.abs().sum() > 0 and "center" in model.state_dict()
    loss.backward()
    last = list(model.student_head.last_layer.parameters())
    assert any(p.grad is not None for p in last)
    model.before_update(0.5)  # inside freeze_last_layer = 1 epoch: no update of the last layer
    assert all(p.grad is None for p in last)
    teacher_before = model.momentum_encoder.pos_embed.detach().clone()
    with torch.no_grad():
        model.base_encoder.pos_embed.add_(1.0)
    assert model.after_step(0.0, 10)["momentum"] == pytest.approx(0.996)
    # teacher = 0.996 teacher + 0.004 student (= teacher + 1): moved by 0.004
    assert torch.allclose(model.momentum_encoder.pos_embed, teacher_before + 0.004, atol=1e-6)
    assert model.weight_decay(0, 10, 0.04) == pytest.approx(0.04)
    assert model.weight_decay(10, 10, 0.04) == pytest.approx(0.4)


def _ranks_centre_and_loss(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    model = tiny_dino(drop_path_rate=0.0)  # no random drop-path: the ranks' draws differ
    model.before_step(0.0, 10)
    images = [view.chunk(2)[rank] for view in crops(4)]
    loss = model(images, [None] * 3)["dino"]
    return model.center.detach(), loss.detach()


def test_two_gloo_ranks_agree_with_one_process_on_the_whole_batch(tmp_path: Path) -> None:
    model = tiny_dino(drop_path_rate=0.0)
    model.before_step(0.0, 10)
    whole_loss = model(crops(4), [None] * 3)["dino"].detach()
    results = run_on_ranks(_ranks_centre_and_loss, tmp_path)
    (centre0, loss0), (centre1, loss1) = results
    assert torch.equal(centre0, centre1)
    assert torch.allclose(centre0, model.center, atol=1e-6)
    # each rank's loss is the mean over its half of the images; their mean is the whole's
    assert torch.allclose((loss0 + loss1) / 2, whole_loss, atol=1e-5)


# ---------------------------------------------------------------- configuration


def _dino(shards: Path, *overrides: str) -> PretrainConfig:
    return load_config(PretrainConfig, "dino_demo_cpu", [f"data.shards={shards}", *overrides])


def test_packaged_configs_are_the_released_recipe(demo_shards: Path) -> None:
    cfg = load_config(PretrainConfig, "dino_vits16_eyepacs")
    assert (cfg.method.out_dim, cfg.method.teacher_temp, cfg.method.local_crops_number) == (
        65536, 0.04, 8)
    assert (cfg.optim.lr * 256 / 512, cfg.optim.min_lr, cfg.optim.warmup_epochs) == (
        5e-4, 1e-6, 10)
    assert (cfg.optim.clip_grad, cfg.optim.clip_mode, cfg.optim.no_decay_1d) == (
        3.0, "per_parameter", True)
    assert (cfg.precision, cfg.optim.epochs, cfg.optim.batch_size) == ("bf16", 300, 512)
    validate_pretrain_config(_dino(demo_shards), 1)


@pytest.mark.parametrize(("override", "expected"), [
    ("method.teacher_temp=0", "'method.teacher_temp' must be in [0.0001, 100]"),
    ("method.teacher_temp=1e-6", "'method.teacher_temp' must be in [0.0001, 100]"),
    ("method.student_temp=.nan", "'method.student_temp' must be"),
    ("method.warmup_teacher_temp=-0.04", "'method.warmup_teacher_temp' must be in [0.0001, 100]"),
    ("method.out_dim=0", "'method.out_dim' must be >= 1, got 0"),
    ("method.local_crops_number=-1", "'method.local_crops_number' must be >= 0"),
    ("method.local_crops_size=0", "'method.local_crops_size' must be >= 1"),
    ("method.local_crops_size=40", "local_crops_size 40 is not a multiple of the patch size 16"),
    ("method.local_crops_scale=[0.5, 0.2]", "method.local_crops_scale must satisfy 0 < low"),
    ("method.global_crops_scale=[0, 1]", "method.global_crops_scale must satisfy"),
    ("method.center_momentum=1.5", "'method.center_momentum' must be in [0, 1]"),
    ("method.momentum_teacher=.inf", "'method.momentum_teacher' must be in [0, 1]"),
    ("backbone.kwargs={depth: 2, drop_path_rate: 0.1}", "set the student's drop path with "
     "method.drop_path_rate"),
])
def test_bad_values_are_refused_in_one_line(demo_shards: Path, override: str,
                                            expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_pretrain_config(_dino(demo_shards, override), 1)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_a_cnn_backbone_is_refused(demo_shards: Path) -> None:
    cfg = _dino(demo_shards, "backbone.name=cnn", "backbone.arch=resnet18", "backbone.kwargs={}")
    with pytest.raises(ConfigError, match=r"method dino needs backbone\.name=vit"):
        validate_pretrain_config(cfg, 1)
