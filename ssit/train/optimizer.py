"""The optimiser: its parameter groups (weight decay or none) and AdamW or SGD over them.

With ``optim.no_decay_1d`` the parameters split into two groups as in DINO's and MAE's released
code: group 0 holds the decayed weights, group 1 the biases and every parameter with at most one
dimension (norm scales and shifts), without weight decay. Position embeddings and class tokens
are 3-D and keep their decay. Without it, one group holds every trainable parameter.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ssit.train.config import OptimConfig


def is_exempt_from_decay(name: str, param: torch.Tensor) -> bool:
    """Whether the parameter ``name`` goes without weight decay: a bias or at most 1-D."""
    return name.endswith(".bias") or param.ndim <= 1


def parameter_groups(
    model: nn.Module, weight_decay: float, no_decay_1d: bool
) -> list[dict[str, Any]]:
    """The trainable parameters as optimiser groups: decayed first, then (optionally) exempt."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not no_decay_1d:
        return [{"params": [p for _, p in named], "weight_decay": weight_decay}]
    decayed = [p for name, p in named if not is_exempt_from_decay(name, p)]
    exempt = [p for name, p in named if is_exempt_from_decay(name, p)]
    return [{"params": decayed, "weight_decay": weight_decay},
            {"params": exempt, "weight_decay": 0.0}]


def build_optimizer(optim: OptimConfig, model: nn.Module) -> torch.optim.Optimizer:
    """AdamW (with ``optim.betas``) or SGD (momentum, optionally Nesterov) over the groups.

    The learning rate is set by the schedule at every step.
    """
    groups = parameter_groups(model, optim.weight_decay, optim.no_decay_1d)
    if optim.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=0.0, momentum=optim.momentum, nesterov=optim.nesterov)
    return torch.optim.AdamW(groups, lr=0.0, betas=tuple(optim.betas))


def set_decayed_weight_decay(optimizer: torch.optim.Optimizer, weight_decay: float) -> None:
    """Set the weight decay of the decayed group (group 0); the exempt group keeps 0."""
    optimizer.param_groups[0]["weight_decay"] = weight_decay
