"""A second, independent training of SimCLR and DINO, built from the ``lightly`` package.

The peer reads the same validated run configuration as our loop and starts from the same
weights: our method is built under the run's seed (as our loop builds it) only to copy its
initial backbone and head weights into the peer's modules and to read its view recipe. From
there on everything is the peer's own: lightly's projection heads (``SimCLRProjectionHead``
without BatchNorm, ``DINOProjectionHead``), lightly's losses (``NTXentLoss``, ``DINOLoss`` with
its centre and teacher-temperature warm-up), lightly's EMA update and cosine schedule for DINO's
teacher momentum and weight decay, and a plain loop with torch's AdamW, the warm-up + cosine
learning rate written out below, and the configured gradient clipping. The backbone is ours
(built by our backbone factory), and so is the data: the peer reads its views from our
``PretrainPipeline`` with our seed, so both see the same images and the same crops. DINO's
96-px-style local crops go through our ``vit_pooled_any_size`` (the backbone's resized position
embedding); the global crops through timm's own forward.
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from lightly.loss import DINOLoss, NTXentLoss
from lightly.models.modules import DINOProjectionHead, SimCLRProjectionHead
from lightly.models.utils import update_momentum
from lightly.utils.scheduler import cosine_schedule
from torch import nn

from ssit.backbones import create_backbone
from ssit.backbones.vit import vit_pooled_any_size
from ssit.config import config_to_dict
from ssit.data.pipeline import PretrainPipeline
from ssit.methods import create_method
from ssit.train.checkpoint import save_checkpoint
from ssit.train.config import REFERENCE_BATCH_SIZE, PretrainConfig, resolve_precision

AUTOCAST = {"bf16": torch.bfloat16, "fp32": None}


@dataclass(frozen=True)
class PeerRun:
    """What the peer's training left: every step's loss and the checkpoint grading reads."""

    losses: list[float]
    steps_per_epoch: int
    checkpoint: Path


def warmup_cosine_lr(epoch: float, peak: float, warmup: float, epochs: float,
                     floor: float) -> float:
    """Linear warm-up from 0 to ``peak`` over ``warmup`` epochs, then half a cosine down to
    ``floor`` at ``epochs``."""
    if epoch < warmup:
        return peak * epoch / warmup
    if epochs == warmup:
        return peak
    done = (epoch - warmup) / (epochs - warmup)
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * done))


def _cosine(step: int, total_steps: int, start: float, end: float) -> float:
    """lightly's cosine from ``start`` (step 0) towards ``end`` (step ``total_steps``).

    lightly divides by ``max_steps - 1``, so ``total_steps + 1`` makes the curve reach ``end``
    at ``total_steps``, as a schedule of the fraction of training done does.
    """
    return cosine_schedule(step, total_steps + 1, start, end)


def _renamed(state: dict[str, torch.Tensor], old: str, new: str) -> dict[str, torch.Tensor]:
    return {(new + key[len(old):] if key.startswith(old) else key): value
            for key, value in state.items()}


def _backbone_like(cfg: PretrainConfig, source: nn.Module, **kwargs: object) -> nn.Module:
    """A backbone from our factory (with extra timm ``kwargs``) holding ``source``'s weights."""
    backbone_cfg = cfg.backbone
    if kwargs:
        backbone_cfg = dataclasses.replace(
            backbone_cfg, kwargs={**dict(getattr(backbone_cfg, "kwargs", {})), **kwargs})
    backbone = create_backbone(backbone_cfg)
    backbone.load_state_dict(source.state_dict())
    return backbone


class PeerSimCLR(nn.Module):
    """SimCLR of lightly's parts: our backbone, ``SimCLRProjectionHead``, ``NTXentLoss``."""

    export_branch = "query"

    def __init__(self, cfg: PretrainConfig, ours: nn.Module) -> None:
        super().__init__()
        method = cfg.method
        self.backbone = _backbone_like(cfg, ours.base_encoder)
        self.head = SimCLRProjectionHead(
            input_dim=int(self.backbone.num_features), hidden_dim=method.proj_hidden,
            output_dim=method.proj_dim, num_layers=2, batch_norm=False)
        # ours: projector.0 Linear, .1 ReLU, .2 Linear; lightly: layers.0, .1, .2 the same
        self.head.layers.load_state_dict(ours.projector.state_dict())
        self.criterion = NTXentLoss(temperature=method.temperature)

    def loss(self, views: list[torch.Tensor], epoch: float) -> torch.Tensor:
        """NT-Xent of the two views' projections (one backbone call for both)."""
        z0, z1 = self.head(self.backbone(torch.cat(views))).chunk(2)
        return self.criterion(z0, z1)

    def weight_decay(self, step: int, total_steps: int, base: float) -> float:
        """SimCLR keeps the configured weight decay."""
        return base

    def before_update(self, epoch: float) -> None:
        """SimCLR drops no gradient."""

    def after_update(self, step: int, total_steps: int) -> None:
        """SimCLR has no momentum encoder."""

    def backbones(self) -> dict[str, nn.Module]:
        """The backbone under our checkpoint prefix."""
        return {"base_encoder.": self.backbone}


class PeerDINO(nn.Module):
    """DINO of lightly's parts: our ViT as student (drop path) and teacher (none),
    ``DINOProjectionHead``, ``DINOLoss`` and ``update_momentum``."""

    export_branch = "momentum"

    def __init__(self, cfg: PretrainConfig, ours: nn.Module) -> None:
        super().__init__()
        method = cfg.method
        if method.head_layers != 3 or method.use_bn_in_head:
            raise ValueError("lightly's DINOProjectionHead has 3 layers without BatchNorm; "
                             "method.head_layers and method.use_bn_in_head must match it")
        self.cfg = method
        self.export_branch = ours.export_branch
        self.student_backbone = _backbone_like(cfg, ours.base_encoder,
                                               drop_path_rate=method.drop_path_rate)
        self.teacher_backbone = _backbone_like(cfg, ours.momentum_encoder, drop_path_rate=0.0)
        head = {"input_dim": int(self.student_backbone.num_features),
                "hidden_dim": method.head_hidden_dim, "bottleneck_dim": method.head_bottleneck_dim,
                "output_dim": method.out_dim, "batch_norm": False}
        self.student_head = DINOProjectionHead(**head, freeze_last_layer=method.freeze_last_layer,
                                               norm_last_layer=method.norm_last_layer)
        self.teacher_head = DINOProjectionHead(**head)
        # ours: mlp.0/2/4 (GELU between) and last_layer.weight_g/_v; lightly: layers.0/2/4
        self.student_head.load_state_dict(_renamed(ours.student_head.state_dict(), "mlp.",
                                                   "layers."))
        self.teacher_head.load_state_dict(_renamed(ours.teacher_head.state_dict(), "mlp.",
                                                   "layers."))
        for module in (self.teacher_backbone, self.teacher_head):
            module.requires_grad_(False)
        self.criterion = DINOLoss(
            output_dim=method.out_dim, warmup_teacher_temp=method.warmup_teacher_temp,
            teacher_temp=method.teacher_temp,
            warmup_teacher_temp_epochs=method.warmup_teacher_temp_epochs,
            student_temp=method.student_temp, center_momentum=method.center_momentum)
        self.native_size = cfg.backbone.img_size

    def _features(self, backbone: nn.Module, crops: list[torch.Tensor]) -> torch.Tensor:
        """One backbone call per run of same-sized crops, as DINO's multi-crop wrapper does."""
        runs: list[list[torch.Tensor]] = []
        for crop in crops:
            if runs and runs[-1][0].shape[-1] == crop.shape[-1]:
                runs[-1].append(crop)
            else:
                runs.append([crop])
        features = []
        for run in runs:
            batch = torch.cat(run)
            native = batch.shape[-1] == self.native_size
            features.append(backbone(batch) if native else vit_pooled_any_size(backbone, batch))
        return torch.cat(features)

    def loss(self, views: list[torch.Tensor], epoch: float) -> torch.Tensor:
        """lightly's DINO loss (teacher on the two global crops, student on all); it moves
        lightly's centre and takes the teacher temperature of the whole ``epoch``."""
        student = self.student_head(self._features(self.student_backbone, views))
        with torch.no_grad():
            teacher = self.teacher_head(self._features(self.teacher_backbone, views[:2]))
        return self.criterion(list(teacher.chunk(2)), list(student.chunk(len(views))),
                              epoch=int(epoch))

    def weight_decay(self, step: int, total_steps: int, base: float) -> float:
        """Cosine from ``base`` to ``method.weight_decay_end`` over the run."""
        return _cosine(step, total_steps, base, self.cfg.weight_decay_end)

    def before_update(self, epoch: float) -> None:
        """No update of the student's last layer during the first ``freeze_last_layer``
        epochs."""
        self.student_head.cancel_last_layer_gradients(int(epoch))

    def after_update(self, step: int, total_steps: int) -> None:
        """EMA of the teacher, momentum along a cosine from ``momentum_teacher`` to 1."""
        momentum = _cosine(step, total_steps, self.cfg.momentum_teacher, 1.0)
        update_momentum(self.student_backbone, self.teacher_backbone, momentum)
        update_momentum(self.student_head, self.teacher_head, momentum)

    def backbones(self) -> dict[str, nn.Module]:
        """Student and teacher backbones under our checkpoint prefixes."""
        return {"base_encoder.": self.student_backbone, "momentum_encoder.": self.teacher_backbone}


PEERS: dict[str, type[PeerSimCLR] | type[PeerDINO]] = {"simclr": PeerSimCLR, "dino": PeerDINO}


def build_peer(cfg: PretrainConfig) -> tuple[PeerSimCLR | PeerDINO, tuple]:
    """The peer of ``cfg``'s method, initialised with our method's weights under ``cfg.seed``,
    and our method's view recipe."""
    if cfg.method.name not in PEERS:
        raise ValueError(f"no lightly peer for method {cfg.method.name!r} "
                         f"(peers: {', '.join(PEERS)})")
    torch.manual_seed(cfg.seed)
    ours = create_method(cfg.method, cfg.backbone).train()
    return PEERS[cfg.method.name](cfg, ours).train(), ours.views


def _parameter_groups(peer: nn.Module, cfg: PretrainConfig) -> list[dict]:
    """Decayed weights first; biases and parameters of at most one dimension without decay
    when ``optim.no_decay_1d`` (DINO's rule)."""
    named = [(name, p) for name, p in peer.named_parameters() if p.requires_grad]
    if not cfg.optim.no_decay_1d:
        return [{"params": [p for _, p in named], "weight_decay": cfg.optim.weight_decay}]
    exempt = [name.endswith(".bias") or p.ndim <= 1 for name, p in named]
    return [{"params": [p for (_, p), e in zip(named, exempt, strict=True) if not e],
             "weight_decay": cfg.optim.weight_decay},
            {"params": [p for (_, p), e in zip(named, exempt, strict=True) if e],
             "weight_decay": 0.0}]


def _clip(params: list[torch.Tensor], limit: float, mode: str) -> None:
    if mode == "global":
        torch.nn.utils.clip_grad_norm_(params, limit)
        return
    for param in params:  # DINO's clip_gradients: each parameter by its own norm
        if param.grad is not None:
            coefficient = limit / (param.grad.norm(2) + 1e-6)
            if coefficient < 1:
                param.grad.mul_(coefficient)


def train_peer(cfg: PretrainConfig, run_dir: Path) -> PeerRun:
    """Train the peer of ``cfg`` for ``cfg.optim.epochs`` epochs; write its checkpoint into
    ``run_dir`` in our training-checkpoint layout (backbones only)."""
    device = torch.device(cfg.device)
    precision = resolve_precision(cfg.precision, device.type)
    if cfg.optim.optimizer != "adamw" or precision not in AUTOCAST:
        raise ValueError("the peer trains with AdamW in fp32 or bf16 only, got "
                         f"{cfg.optim.optimizer} in {precision}")
    peer, views = build_peer(cfg)
    peer.to(device)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    torch.manual_seed(cfg.seed)
    optim = cfg.optim
    optimizer = torch.optim.AdamW(_parameter_groups(peer, cfg), lr=0.0, betas=tuple(optim.betas))
    params = [p for group in optimizer.param_groups for p in group["params"]]
    peak = optim.lr * optim.batch_size / REFERENCE_BATCH_SIZE if optim.scale_lr else optim.lr
    pipe = PretrainPipeline(cfg.data.shards, optim.batch_size, device=device.type,
                            seed=cfg.seed, img_size=cfg.backbone.img_size, views=views,
                            num_threads=cfg.data.num_threads)
    losses: list[float] = []
    try:
        steps_per_epoch = len(pipe)
        total = optim.epochs * steps_per_epoch
        for _ in range(optim.epochs):
            for batch in pipe:
                step = len(losses)
                epoch = step / steps_per_epoch
                for group in optimizer.param_groups:
                    group["lr"] = warmup_cosine_lr(epoch, peak, optim.warmup_epochs,
                                                   optim.epochs, optim.min_lr)
                optimizer.param_groups[0]["weight_decay"] = peer.weight_decay(
                    step, total, optim.weight_decay)
                images = [view.to(device) for view in batch.images]
                with torch.autocast(device.type, dtype=AUTOCAST[precision],
                                    enabled=AUTOCAST[precision] is not None):
                    loss = peer.loss(images, epoch)
                optimizer.zero_grad(set_to_none=True)
                loss.float().backward()
                if optim.clip_grad is not None:
                    _clip(params, optim.clip_grad, optim.clip_mode)
                peer.before_update(epoch)
                optimizer.step()
                peer.after_update(step, total)
                losses.append(loss.item())
    finally:
        pipe.close()
    return PeerRun(losses, steps_per_epoch, _save(peer, cfg, run_dir, len(losses)))


def _save(peer: PeerSimCLR | PeerDINO, cfg: PretrainConfig, run_dir: Path, step: int) -> Path:
    """The peer's backbones under our branch prefixes, with the run's config, written (with its
    checksum) as our loop writes checkpoints: grading and ``ssit export`` read it like ours."""
    state = {prefix + key: value.detach().cpu().clone()
             for prefix, backbone in peer.backbones().items()
             for key, value in backbone.state_dict().items()}
    return save_checkpoint({"step": step, "method": cfg.method.name,
                            "backbone": cfg.backbone.name, "export_branch": peer.export_branch,
                            "model": state, "config": config_to_dict(cfg)},
                           run_dir / "checkpoints", keep=1)
