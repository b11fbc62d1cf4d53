"""SimCLR (Chen et al., ICML 2020): NT-Xent on two symmetric views of every image.

The backbone's pooled feature goes through a projector Linear(D, 2048)-ReLU-Linear(2048, 128)
(linear layers with bias, no BatchNorm, as SPEC 7.2 describes it; SimCLR's own code also puts
BatchNorm in the head, which this module leaves out). Both views come from one recipe, without
saliency maps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssit.backbones import BackboneConfig, create_backbone
from ssit.data.views import ViewAugmentation, ViewSpec, augmentation_with_overrides
from ssit.methods.base import Method, check_views
from ssit.methods.config import SimCLRConfig
from ssit.methods.gather import gather_with_gradients

SIMCLR_VIEW = ViewAugmentation(
    crop_scale=(0.08, 1.0),
    jitter_p=0.8,
    brightness=0.8,
    contrast=0.8,
    saturation=0.8,
    hue=0.2,
    grayscale_p=0.2,
    blur_p=0.5,
    solarize_p=0.0,
    rotation_p=0.0,
    hflip_p=0.5,
    vflip_p=0.0,
)
"""SimCLR's recipe (SPEC 7.2): resized crop 0.08-1, horizontal flip, colour jitter
(0.8, 0.8, 0.8, 0.2) with p 0.8, grayscale p 0.2, Gaussian blur with p 0.5 (the SimCLR paper's
probability; SPEC 7.2 names blur without one); no rotation, vertical flip or solarisation."""


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent over the 2N views of N images: ``z1[n]`` and ``z2[n]`` are the two views of n.

    Projections are L2-normalised; for each of the 2N views the positive is its partner and the
    other 2N - 2 views are negatives; cross-entropy over cosine similarity / ``temperature``,
    averaged over the 2N views. Under DDP the projections of all ranks are gathered with
    gradients: local rows are the queries, negatives span the global batch, and the mean over
    ranks of this loss equals the loss of one process on the concatenated batch. Computed in
    (at least) float32 whatever the autocast dtype.
    """
    if z1.dim() != 2 or z1.shape != z2.shape or z1.shape[0] == 0:
        raise ValueError(
            f"the two views' projections must both be (N, D) with N >= 1, got "
            f"{tuple(z1.shape)} and {tuple(z2.shape)}"
        )
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    dtype = torch.promote_types(z1.dtype, torch.float32)
    with torch.autocast(z1.device.type, enabled=False):
        z1 = F.normalize(z1.to(dtype), dim=1)
        z2 = F.normalize(z2.to(dtype), dim=1)
        all1, offset = gather_with_gradients(z1)
        all2, _ = gather_with_gradients(z2)
        total, local = all1.shape[0], z1.shape[0]
        queries = torch.cat([z1, z2])
        logits = queries @ torch.cat([all1, all2]).T / temperature
        rows = torch.arange(local, device=z1.device) + offset
        own = torch.cat([rows, rows + total])
        partner = torch.cat([rows + total, rows])
        logits[torch.arange(2 * local, device=z1.device), own] = float("-inf")
        return F.cross_entropy(logits, partner)


class SimCLR(Method):
    """SimCLR: backbone ``base_encoder``, MLP ``projector``, NT-Xent on two views."""

    loss_names = ("cl",)

    def __init__(
        self,
        backbone: nn.Module,
        temperature: float = 0.07,
        proj_hidden: int = 2048,
        proj_dim: int = 128,
        augmentation: ViewAugmentation = SIMCLR_VIEW,
    ) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"method.temperature must be positive, got {temperature}")
        if proj_hidden < 1 or proj_dim < 1:
            raise ValueError(
                f"method.proj_hidden and method.proj_dim must be positive, got {proj_hidden} "
                f"and {proj_dim}"
            )
        self.temperature = temperature
        self.base_encoder = backbone
        self.projector = nn.Sequential(
            nn.Linear(int(backbone.num_features), proj_hidden),
            nn.ReLU(inplace=True),
            nn.Linear(proj_hidden, proj_dim),
        )
        self.views = (ViewSpec(augmentation), ViewSpec(augmentation))

    def forward(
        self, images: list[torch.Tensor], maps: list[torch.Tensor | None]
    ) -> dict[str, torch.Tensor]:
        check_views(self, images, maps)
        z = self.projector(self.base_encoder(torch.cat(images)))
        z1, z2 = z.chunk(2)
        return {"cl": nt_xent_loss(z1, z2, self.temperature)}


def build_simclr(method_cfg: SimCLRConfig, backbone_cfg: BackboneConfig) -> SimCLR:
    """The SimCLR method that the config sections describe (random initialisation)."""
    augmentation = augmentation_with_overrides(SIMCLR_VIEW, method_cfg.augmentation)
    return SimCLR(
        create_backbone(backbone_cfg),
        temperature=method_cfg.temperature,
        proj_hidden=method_cfg.proj_hidden,
        proj_dim=method_cfg.proj_dim,
        augmentation=augmentation,
    )
