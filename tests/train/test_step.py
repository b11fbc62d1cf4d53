"""One optimisation step: per-parameter and global clipping, the decay and update hooks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ssit.train.step import clip_each_parameter_, clip_gradients_, train_step


def _with_grads(*grads: list[float]) -> list[nn.Parameter]:
    params = []
    for grad in grads:
        param = nn.Parameter(torch.zeros(len(grad)))
        param.grad = torch.tensor(grad)
        params.append(param)
    return params


def test_each_parameter_is_clipped_by_its_own_norm():
    big, small = _with_grads([3.0, 4.0], [0.3, 0.4])  # norms 5 and 0.5
    clip_each_parameter_([big, small], 1.0)
    # DINO's clip_gradients: clip_coef = 1 / (5 + 1e-6) < 1 scales; 1 / 0.5 > 1 leaves it
    assert torch.allclose(big.grad, torch.tensor([3.0, 4.0]) / (5 + 1e-6), rtol=1e-6)
    assert torch.equal(small.grad, torch.tensor([0.3, 0.4]))


def test_global_clipping_scales_all_gradients_together():
    big, small = _with_grads([3.0, 4.0], [0.0, 0.0])
    clip_gradients_([big, small], 1.0, "global")
    assert torch.allclose(big.grad.norm(), torch.tensor(1.0), atol=1e-5)
    big, small = _with_grads([3.0, 4.0], [0.3, 0.4])
    clip_gradients_([big, small], 1.0, "per_parameter")
    assert torch.equal(small.grad, torch.tensor([0.3, 0.4]))
    with pytest.raises(ValueError, match="clip mode"):
        clip_gradients_([big], 1.0, "norm")  # type: ignore[arg-type]


class _Scaled(nn.Module):
    """loss = sum(w * x) with a first and a second parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Parameter(torch.ones(2))
        self.second = nn.Parameter(torch.ones(2))

    def forward(self, images: list[torch.Tensor], maps: list) -> dict[str, torch.Tensor]:
        x = images[0]
        return {"loss": (self.first * x).sum() + (self.second * x).sum()}


def test_step_sets_the_decay_of_group_zero_and_runs_the_hook_after_clipping():
    model = _Scaled()
    optimizer = torch.optim.AdamW([{"params": [model.first], "weight_decay": 0.1},
                                   {"params": [model.second], "weight_decay": 0.0}], lr=0.0)
    seen: list[torch.Tensor] = []

    def drop_second() -> None:
        seen.append(model.first.grad.clone())
        model.second.grad = None

    scaler = torch.amp.GradScaler("cpu", enabled=False)
    train_step(model, optimizer, scaler, [torch.tensor([30.0, 40.0])], [None], {"loss": 1.0},
               lr=0.1, amp_dtype=None, clip_grad=1.0, clip_mode="per_parameter",
               weight_decay=0.3, before_update=drop_second)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.3, 0.0]
    assert torch.allclose(seen[0].norm(), torch.tensor(1.0), atol=1e-5)  # clipped first
    assert torch.equal(model.second, torch.ones(2))  # its gradient was dropped: no update
    assert not torch.equal(model.first, torch.ones(2))
