"""SSiT behaves as before methods became plug-ins: same losses, same EMA, old checkpoints load."""

from __future__ import annotations

from pathlib import Path

import torch

from ssit.backbones import ViTConfig, extract_backbone, saved_backbone_config
from ssit.backbones.weights import load_into, read_checkpoint
from ssit.methods import SSiTConfig, create_method
from ssit.train.config import PretrainConfig, upgrade_pretrain_values

OLD_CHECKPOINT = Path(__file__).parent / "data" / "ssit-v0.1-tiny.pt"
TINY_BACKBONE = ViTConfig(arch="vit_tiny_patch16_224", img_size=32,
                          kwargs={"embed_dim": 32, "num_heads": 2, "depth": 2})
# Recorded with the SSiT model as it was before the method registry existed (same seed, inputs
# and momentum): contrastive loss, segmentation loss, sum of the momentum encoder's parameters
# after one EMA step at m = 0.9.
RECORDED_LOSS_CL = 1.0746634006500244
RECORDED_LOSS_SS = 1.4648253917694092
RECORDED_MOMENTUM_SUM = 222.22020874599866


def tiny_inputs() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    x1 = torch.randn(4, 3, 32, 32, generator=generator)
    x2 = torch.randn(4, 3, 32, 32, generator=generator)
    m1 = torch.rand(4, 1, 32, 32, generator=generator)
    m2 = torch.rand(4, 1, 32, 32, generator=generator)
    return [x1, x2], [m1, m2]


def test_losses_and_ema_equal_the_values_recorded_before_the_refactor() -> None:
    torch.manual_seed(0)
    model = create_method(SSiTConfig(proj_dim=16, mlp_dim=32), TINY_BACKBONE).train()
    model.update_momentum_encoder(0.9)
    images, maps = tiny_inputs()
    losses = model(images, maps)
    assert losses["cl"].item() == RECORDED_LOSS_CL
    assert losses["ss"].item() == RECORDED_LOSS_SS
    momentum_sum = sum(p.double().sum() for p in model.momentum_encoder.parameters()).item()
    assert momentum_sum == RECORDED_MOMENTUM_SUM


def test_an_old_format_checkpoint_loads_into_the_method_and_its_backbone() -> None:
    checkpoint = read_checkpoint(OLD_CHECKPOINT)
    assert "model" in checkpoint["config"] and "backbone" not in checkpoint["config"]
    values = upgrade_pretrain_values(checkpoint["config"])
    assert values["backbone"] == {"name": "vit", "arch": "vit_tiny_patch16_224", "img_size": 32,
                                  "kwargs": {"embed_dim": 32, "num_heads": 2, "depth": 2}}
    cfg = PretrainConfig.upgrade_config_values(checkpoint["config"])
    assert cfg == values
    model = create_method(SSiTConfig(**values["method"]), saved_backbone_config(checkpoint))
    load_into(model, checkpoint["model"], strict=True, what="SSiT method")
    model.update_momentum_encoder(0.9)
    images, maps = tiny_inputs()
    # The fixture was saved right after the recorded forward pass, before any optimiser step,
    # so the same inputs give the recorded loss again (train-mode BatchNorm ignores the stats).
    torch.testing.assert_close(model(images, maps)["cl"].item(), RECORDED_LOSS_CL)
    backbone = extract_backbone(checkpoint, saved_backbone_config(checkpoint))
    reference = model.base_encoder
    x = images[0]
    expected = reference.forward_head(reference.forward_features(x), pre_logits=True)
    torch.testing.assert_close(backbone.eval()(x), expected)
