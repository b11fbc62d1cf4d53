"""DINO: self-distillation with no labels (``method: dino``), as in facebookresearch/dino.

The student (``base_encoder`` + ``student_head``) sees every crop: the backbone runs once per
crop size, the head on the concatenation. The teacher (``momentum_encoder`` + ``teacher_head``,
an EMA copy of the student without drop-path) sees the two global crops. The loss is the
cross-entropy between the centred, sharpened teacher distribution of each global crop and the
student distribution of every other crop; the centre is a buffer, moved after each loss.
Grading and export read the teacher backbone (``momentum`` branch) unless the config asks for
the student.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.functional import log_softmax, normalize, softmax
from torch.nn.utils.parametrizations import weight_norm

from ssit.backbones.config import BackboneConfig
from ssit.backbones.registry import create_backbone
from ssit.backbones.vit import vit_pooled_any_size
from ssit.data.views import ViewAugmentation, ViewSpec
from ssit.methods.base import Method, check_views
from ssit.methods.config import DINOConfig, MethodConfig
from ssit.methods.schedules import check_epoch, ema_momentum, half_cosine

# Where torch's weight-norm parametrisation keeps g and v, and the released names for them.
_WEIGHT_NORM_KEYS = {"last_layer.parametrizations.weight.original0": "last_layer.weight_g",
                     "last_layer.parametrizations.weight.original1": "last_layer.weight_v"}


def dino_loss(
    student_out: torch.Tensor,
    teacher_out: torch.Tensor,
    center: torch.Tensor,
    n_crops: int,
    student_temp: float,
    teacher_temp: float,
) -> torch.Tensor:
    """DINO's loss: mean over (teacher global crop, other student crop) pairs of
    ``sum(-softmax((t - center) / teacher_temp) * log_softmax(s / student_temp))`` per image.

    ``student_out`` is ``(n_crops * B, K)`` crop by crop, ``teacher_out`` ``(2 * B, K)`` for the
    two global crops (the student's first two), ``center`` ``(1, K)``.
    """
    if n_crops < 2 or student_out.shape[0] % n_crops:
        raise ValueError(f"{student_out.shape[0]} student rows are not {n_crops} >= 2 crops")
    student = (student_out.float() / student_temp).chunk(n_crops)
    teacher = softmax((teacher_out.float() - center) / teacher_temp, dim=-1).detach().chunk(2)
    total, terms = student_out.new_zeros((), dtype=torch.float32), 0
    for teacher_index, target in enumerate(teacher):
        for student_index, crop in enumerate(student):
            if student_index == teacher_index:
                continue
            total = total + torch.sum(-target * log_softmax(crop, dim=-1), dim=-1).mean()
            terms += 1
    return total / terms


@torch.no_grad()
def updated_center(
    center: torch.Tensor, teacher_out: torch.Tensor, momentum: float
) -> torch.Tensor:
    """``center * momentum + mean(teacher_out) * (1 - momentum)``, the mean over the whole
    global batch (summed over the ranks when a process group is initialised)."""
    batch_center = torch.sum(teacher_out.float(), dim=0, keepdim=True)
    count = teacher_out.shape[0]
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(batch_center)
        count *= dist.get_world_size()
    return center * momentum + batch_center / count * (1 - momentum)


def teacher_temperature(
    epoch: float, warmup_temp: float, temp: float, warmup_epochs: int
) -> float:
    """Teacher temperature of whole epoch ``floor(epoch)``: linear from ``warmup_temp`` to
    ``temp`` over ``warmup_epochs`` epochs (``np.linspace`` end points included), then ``temp``."""
    whole = int(epoch)
    if whole >= warmup_epochs:
        return temp
    if warmup_epochs == 1:
        return warmup_temp
    return warmup_temp + (temp - warmup_temp) * whole / (warmup_epochs - 1)


def cosine_between(epoch: float, start: float, end: float, total_epochs: float) -> float:
    """``end + (start - end) * 0.5 * (1 + cos(pi * epoch / total))``: ``start`` to ``end``."""
    epoch = check_epoch(epoch, total_epochs)
    return end + (start - end) * half_cosine(epoch / total_epochs)


class DINOHead(nn.Module):
    """The projection head as released: MLP to a bottleneck, L2 normalisation, weight-normed
    linear layer to ``out_dim``. State-dict keys are the release's ``mlp.<i>.*``,
    ``last_layer.weight_g`` ``(K, 1)`` and ``last_layer.weight_v`` ``(K, bottleneck)``; g is
    filled with 1 and frozen when ``norm_last_layer``."""

    def __init__(self, in_dim: int, out_dim: int, use_bn: bool = False,
                 norm_last_layer: bool = True, nlayers: int = 3, hidden_dim: int = 2048,
                 bottleneck_dim: int = 256) -> None:
        super().__init__()
        nlayers = max(nlayers, 1)
        if nlayers == 1:
            self.mlp: nn.Module = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = []
            for index in range(nlayers - 1):
                layers.append(nn.Linear(in_dim if index == 0 else hidden_dim, hidden_dim))
                if use_bn:
                    layers.append(nn.BatchNorm1d(hidden_dim))
                layers.append(nn.GELU())
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        for module in self.mlp.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False), dim=0)
        magnitude = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            magnitude.fill_(1)
        magnitude.requires_grad_(not norm_last_layer)
        self.register_state_dict_post_hook(_released_weight_norm_keys)
        self.register_load_state_dict_pre_hook(_parametrised_weight_norm_keys)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(normalize(self.mlp(x), dim=-1, p=2))


def _released_weight_norm_keys(module: nn.Module, state: dict, prefix: str, _: object) -> None:
    for ours, released in _WEIGHT_NORM_KEYS.items():
        if prefix + ours in state:
            state[prefix + released] = state.pop(prefix + ours)


def _parametrised_weight_norm_keys(module: nn.Module, state: dict, prefix: str, *_: object) -> None:
    for ours, released in _WEIGHT_NORM_KEYS.items():
        if prefix + released in state:
            state[prefix + ours] = state.pop(prefix + released)


def multi_crop_features(backbone: nn.Module, crops: list[torch.Tensor]) -> torch.Tensor:
    """The backbone's pooled features of every crop, in order, one backbone call per run of
    crops of the same size (DINO's ``MultiCropWrapper``)."""
    outputs, start = [], 0
    while start < len(crops):
        end = start
        while end < len(crops) and crops[end].shape[-1] == crops[start].shape[-1]:
            end += 1
        outputs.append(vit_pooled_any_size(backbone, torch.cat(crops[start:end])))
        start = end
    return torch.cat(outputs)


class DINO(Method):
    """DINO on a timm ViT (see the module docstring and :class:`DINOConfig`)."""

    loss_names = ("dino",)

    def __init__(self, cfg: DINOConfig, student: nn.Module, teacher: nn.Module) -> None:
        super().__init__()
        patch = student.patch_embed.patch_size[0]
        if cfg.local_crops_number and cfg.local_crops_size % patch:
            raise ValueError(f"method.local_crops_size {cfg.local_crops_size} is not a multiple "
                             f"of the patch size {patch}")
        self.cfg = cfg
        self.base_encoder = student
        self.momentum_encoder = teacher
        head = {"in_dim": int(student.num_features), "out_dim": cfg.out_dim,
                "use_bn": cfg.use_bn_in_head, "nlayers": cfg.head_layers,
                "hidden_dim": cfg.head_hidden_dim, "bottleneck_dim": cfg.head_bottleneck_dim}
        self.student_head = DINOHead(**head, norm_last_layer=cfg.norm_last_layer)
        self.teacher_head = DINOHead(**head)
        self.momentum_encoder.load_state_dict(self.base_encoder.state_dict())
        self.teacher_head.load_state_dict(self.student_head.state_dict())
        self.momentum_encoder.requires_grad_(False)
        self.teacher_head.requires_grad_(False)
        self.register_buffer("center", torch.zeros(1, cfg.out_dim))
        self.export_branch = "query" if cfg.export_student else "momentum"
        self.n_crops = 2 + cfg.local_crops_number
        self.views = dino_views(cfg)
        self.teacher_temp = cfg.warmup_teacher_temp

    def forward(
        self, images: list[torch.Tensor], maps: list[torch.Tensor | None]
    ) -> dict[str, torch.Tensor]:
        """The DINO loss of a batch of crops (2 global, then the local ones); moves the centre."""
        check_views(self, images, maps)
        student_out = self.student_head(multi_crop_features(self.base_encoder, images))
        with torch.no_grad():
            teacher_out = self.teacher_head(multi_crop_features(self.momentum_encoder,
                                                                images[:2]))
        loss = dino_loss(student_out, teacher_out, self.center, self.n_crops,
                         self.cfg.student_temp, self.teacher_temp)
        self.center.copy_(updated_center(self.center, teacher_out, self.cfg.center_momentum))
        return {"dino": loss}

    def before_step(self, epoch: float, total_epochs: float) -> dict[str, float]:
        """The teacher temperature of this (whole) epoch."""
        self.teacher_temp = teacher_temperature(epoch, self.cfg.warmup_teacher_temp,
                                                self.cfg.teacher_temp,
                                                self.cfg.warmup_teacher_temp_epochs)
        return {"teacher_temp": self.teacher_temp}

    def before_update(self, epoch: float) -> None:
        """No update of the student's last layer during the first ``freeze_last_layer`` epochs."""
        if epoch < self.cfg.freeze_last_layer:
            for param in self.student_head.last_layer.parameters():
                param.grad = None

    @torch.no_grad()
    def after_step(self, epoch: float, total_epochs: float) -> dict[str, float]:
        """EMA step of the teacher with the momentum rising along a cosine to 1."""
        momentum = ema_momentum(epoch, self.cfg.momentum_teacher, total_epochs)
        student = [*self.base_encoder.parameters(), *self.student_head.parameters()]
        teacher = [*self.momentum_encoder.parameters(), *self.teacher_head.parameters()]
        torch._foreach_mul_(teacher, momentum)
        torch._foreach_add_(teacher, [p.detach() for p in student], alpha=1 - momentum)
        return {"momentum": momentum}

    def weight_decay(self, epoch: float, total_epochs: float, base: float) -> float:
        """Cosine from ``optim.weight_decay`` to ``method.weight_decay_end``."""
        return cosine_between(epoch, base, self.cfg.weight_decay_end, total_epochs)


def dino_views(cfg: DINOConfig) -> tuple[ViewSpec, ...]:
    """DINO's crops: two global (bicubic, h-flip only, blur 1.0 / 0.1, solarize 0 / 0.2) at the
    backbone's size and ``local_crops_number`` local ones (blur 0.5) of ``local_crops_size``."""
    common = {"crop_ratio": (3 / 4, 4 / 3), "crop_interpolation": "cubic", "rotation_p": 0.0,
              "vflip_p": 0.0, "hflip_p": 0.5}
    first = ViewAugmentation(crop_scale=cfg.global_crops_scale, blur_p=1.0, solarize_p=0.0,
                             **common)
    second = ViewAugmentation(crop_scale=cfg.global_crops_scale, blur_p=0.1, solarize_p=0.2,
                              **common)
    local = ViewAugmentation(crop_scale=cfg.local_crops_scale, blur_p=0.5, solarize_p=0.0,
                             **common)
    return (ViewSpec(first), ViewSpec(second),
            *(ViewSpec(local, size=cfg.local_crops_size) for _ in range(cfg.local_crops_number)))


def build_dino(method: MethodConfig, backbone: BackboneConfig) -> DINO:
    """DINO of a ``method: dino`` section: the student with the method's drop path, the
    teacher without."""
    if not isinstance(method, DINOConfig):
        raise ValueError("method dino needs a DINOConfig")
    kwargs = dict(getattr(backbone, "kwargs", {}))
    student = create_backbone(dataclasses.replace(
        backbone, kwargs={**kwargs, "drop_path_rate": method.drop_path_rate}))
    teacher = create_backbone(dataclasses.replace(backbone, kwargs={**kwargs,
                                                                    "drop_path_rate": 0.0}))
    return DINO(method, student, teacher)
