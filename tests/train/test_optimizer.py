"""The optimiser's parameter groups, betas and the options' validation and resume handling."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ssit.config import ConfigError, config_to_dict
from ssit.train.config import (
    OptimConfig,
    PretrainConfig,
    config_fields_differing,
    resume_locked_fields,
)
from ssit.train.optimizer import build_optimizer, parameter_groups, set_decayed_weight_decay
from ssit.train.resume import saved_config_with_defaults


class Tiny(nn.Module):
    """A linear layer, a layer norm, a 3-D token, a 0-D scale and a frozen 2-D weight."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 3)
        self.norm = nn.LayerNorm(3)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 3))
        self.scale = nn.Parameter(torch.tensor(1.0))
        self.frozen = nn.Parameter(torch.ones(2, 2), requires_grad=False)


def _ids(params: list[torch.Tensor]) -> set[int]:
    return {id(p) for p in params}


def test_one_group_with_every_trainable_parameter_by_default():
    model = Tiny()
    groups = parameter_groups(model, 0.05, no_decay_1d=False)
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.05
    assert _ids(groups[0]["params"]) == _ids(
        [model.proj.weight, model.proj.bias, model.norm.weight, model.norm.bias,
         model.cls_token, model.scale])


def test_biases_and_1d_parameters_go_without_decay():
    model = Tiny()
    decayed, exempt = parameter_groups(model, 0.04, no_decay_1d=True)
    # The 3-D class token keeps its decay, as in DINO's and MAE's released code.
    assert _ids(decayed["params"]) == _ids([model.proj.weight, model.cls_token])
    assert _ids(exempt["params"]) == _ids(
        [model.proj.bias, model.norm.weight, model.norm.bias, model.scale])
    assert (decayed["weight_decay"], exempt["weight_decay"]) == (0.04, 0.0)


def test_adamw_takes_the_betas_and_the_decay_schedule_reaches_group_zero_only():
    optim = OptimConfig(betas=(0.9, 0.95), no_decay_1d=True, weight_decay=0.04)
    optimizer = build_optimizer(optim, Tiny())
    assert isinstance(optimizer, torch.optim.AdamW)
    assert [group["betas"] for group in optimizer.param_groups] == [(0.9, 0.95)] * 2
    set_decayed_weight_decay(optimizer, 0.4)
    assert [group["weight_decay"] for group in optimizer.param_groups] == [0.4, 0.0]


def test_sgd_keeps_its_weight_decay_per_group():
    optim = OptimConfig(optimizer="sgd", no_decay_1d=True, weight_decay=1e-4)
    optimizer = build_optimizer(optim, Tiny())
    assert [group["weight_decay"] for group in optimizer.param_groups] == [1e-4, 0.0]


def test_the_decay_step_changes_only_decayed_weights():
    torch.manual_seed(0)
    model = Tiny()
    optimizer = build_optimizer(OptimConfig(no_decay_1d=True, weight_decay=0.5), model)
    for group in optimizer.param_groups:
        group["lr"] = 0.1
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # zero gradient: only the decay moves a weight
    optimizer.step()
    assert torch.allclose(model.proj.weight, before["proj.weight"] * (1 - 0.1 * 0.5))
    assert torch.equal(model.proj.bias, before["proj.bias"])
    assert torch.equal(model.norm.weight, before["norm.weight"])


def test_old_checkpoint_config_gets_the_new_defaults_and_no_decay_is_locked():
    saved = config_to_dict(PretrainConfig())
    for key in ("betas", "no_decay_1d", "min_lr"):
        del saved["optim"][key]
    assert config_fields_differing(saved_config_with_defaults(saved),
                                   config_to_dict(PretrainConfig())) == []
    assert resume_locked_fields(["optim.no_decay_1d", "optim.min_lr", "optim.betas"]) == [
        "optim.no_decay_1d"]


def test_betas_round_trip_as_a_tuple(tmp_path):
    from ssit.config import load_config, save_config

    path = save_config(PretrainConfig(optim=OptimConfig(betas=(0.9, 0.95))), tmp_path / "c.yaml")
    assert load_config(PretrainConfig, str(path)).optim.betas == (0.9, 0.95)
    with pytest.raises(ConfigError, match=r"'optim\.betas' must be a list"):
        load_config(PretrainConfig, str(path), ["optim.betas=0.9"])
