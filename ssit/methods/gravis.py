"""GraVIS (Zhou et al., IEEE TMI 2023): Smooth-AP over K augmented views of every image.

Each image of a step is augmented K times; the K views of an image are one class, and every
view is a query that should rank its K - 1 sibling views above the views of all other images.
The backbone's pooled feature goes through the head Linear(D, 2048)-ReLU-Linear(2048, 128);
there is no predictor and no momentum encoder.

The view recipe for fundus photographs is our choice, not the paper's (GraVIS was trained on
dermoscopy images with its own recipe): resized crop 0.08-1, horizontal and vertical flips,
rotation, colour jitter (0.4, 0.4, 0.4, 0.1) with p 0.8, grayscale p 0.2, Gaussian blur p 0.5,
no solarisation; all K views share it and carry no saliency map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssit.backbones import BackboneConfig, create_backbone
from ssit.data.views import ViewAugmentation, ViewSpec, augmentation_with_overrides
from ssit.methods.base import Method, check_views
from ssit.methods.config import GraVISConfig
from ssit.methods.gather import gather_with_gradients

GRAVIS_VIEW = ViewAugmentation(
    crop_scale=(0.08, 1.0),
    jitter_p=0.8,
    brightness=0.4,
    contrast=0.4,
    saturation=0.4,
    hue=0.1,
    grayscale_p=0.2,
    blur_p=0.5,
    solarize_p=0.0,
    rotation_p=0.8,
    hflip_p=0.5,
    vflip_p=0.5,
)
"""The GraVIS view recipe for fundus photographs (an inferred choice, see the module docs)."""


def smooth_ap_loss(
    z: torch.Tensor,
    views_per_image: int,
    temperature: float = 0.2,
    *,
    normalize: bool = False,
    hardness_aware: bool = False,
    hardness_temperature: float = 0.1,
) -> torch.Tensor:
    """Smooth-AP loss of GraVIS on ``z`` ``(N * K, D)``: rows ``n*K .. n*K + K - 1`` are image n.

    With similarities ``s = z z^T`` (raw dot products as in the released GraVIS model, cosine
    similarities with ``normalize``) and ``sg(x) = sigmoid(x / temperature)``, for every query q
    and every positive i of q (the K views of q's image, q itself included)::

        R(i, P)   = 1 + sum over positives j != i of sg(s_qj - s_qi)
        R(i, all) = 1 + sum over all rows  j != i of sg(s_qj - s_qi)
        AP_q      = (1 / K) sum over positives i of R(i, P) / R(i, all)
        loss      = 1 - mean over queries of AP_q

    These are the conventions of the released GraVIS/Smooth-AP code as SPEC 7.3 records them
    (the released source itself was not available here to compare with): the j = i term is
    left out of both sums, q counts among its own positives, the ranking set is the whole
    batch. The released code builds ``B x B x B`` tensors; this form only ranks the K positives
    of each query, ``(B, K, B)`` memory and time, with equal values and gradients. (The
    Smooth-AP reference clamps ``x / temperature`` to +-50 before the sigmoid, which moves the
    value by less than 1e-21; it is left out.)

    ``hardness_aware`` replaces the 1/K weights by a softmax over q's positives of
    ``s_qi / hardness_temperature`` (no gradient through the weights). The paper names a
    hardness-aware attention but neither its formula nor code is public: this weighting is a
    reconstruction, off by default.

    Under DDP the embeddings of all ranks are gathered with gradients: the local rows are the
    queries and rank against the global batch (each rank must hold whole images, the same
    number on every rank). Computed in (at least) float32 whatever the autocast dtype.
    """
    if views_per_image < 2:
        raise ValueError(f"views_per_image must be at least 2, got {views_per_image}")
    if z.dim() != 2 or z.shape[0] == 0 or z.shape[0] % views_per_image:
        raise ValueError(
            f"embeddings must be (N * K, D) with K = {views_per_image} views per image, got "
            f"{tuple(z.shape)}"
        )
    if not temperature > 0 or not hardness_temperature > 0:
        raise ValueError(
            f"temperatures must be positive, got temperature={temperature} and "
            f"hardness_temperature={hardness_temperature}"
        )
    k = views_per_image
    dtype = torch.promote_types(z.dtype, torch.float32)
    with torch.autocast(z.device.type, enabled=False):
        z = z.to(dtype)
        if normalize:
            z = F.normalize(z, dim=1)
        everyone, offset = gather_with_gradients(z)
        s = z @ everyone.T  # (B_local, B)
        rows = torch.arange(z.shape[0], device=z.device) + offset
        positives = (rows // k * k)[:, None] + torch.arange(k, device=z.device)  # (B_local, K)
        s_pos = s.gather(1, positives)
        # sg(s_qj - s_qi) for the K positives i of each query against every row j: (B_local, K, B)
        above_all = torch.sigmoid((s[:, None, :] - s_pos[:, :, None]) / temperature)
        above_pos = torch.sigmoid((s_pos[:, None, :] - s_pos[:, :, None]) / temperature)
        # Each sum includes j = i once, where sg(0) = 1/2: 1 + sum_{j != i} = 1/2 + sum_j.
        rank_all = 0.5 + above_all.sum(dim=2)
        rank_pos = 0.5 + above_pos.sum(dim=2)
        if hardness_aware:
            weights = torch.softmax(s_pos.detach() / hardness_temperature, dim=1)
        else:
            weights = torch.full_like(s_pos, 1.0 / k)
        ap = (weights * rank_pos / rank_all).sum(dim=1)
        return 1.0 - ap.mean()


class GraVIS(Method):
    """GraVIS: backbone ``base_encoder``, MLP ``projector``, Smooth-AP over K views per image."""

    loss_names = ("ap",)

    def __init__(
        self,
        backbone: nn.Module,
        views_per_image: int = 20,
        temperature: float = 0.2,
        normalize: bool = False,
        hardness_aware: bool = False,
        hardness_temperature: float = 0.1,
        proj_hidden: int = 2048,
        proj_dim: int = 128,
        augmentation: ViewAugmentation = GRAVIS_VIEW,
    ) -> None:
        super().__init__()
        if views_per_image < 2:
            raise ValueError(f"method.views_per_image must be at least 2, got {views_per_image}")
        if not temperature > 0 or not hardness_temperature > 0:
            raise ValueError(
                f"method.temperature and method.hardness_temperature must be positive, got "
                f"{temperature} and {hardness_temperature}"
            )
        if proj_hidden < 1 or proj_dim < 1:
            raise ValueError(
                f"method.proj_hidden and method.proj_dim must be positive, got {proj_hidden} "
                f"and {proj_dim}"
            )
        self.views_per_image = views_per_image
        self.temperature = temperature
        self.normalize = normalize
        self.hardness_aware = hardness_aware
        self.hardness_temperature = hardness_temperature
        self.base_encoder = backbone
        self.projector = nn.Sequential(
            nn.Linear(int(backbone.num_features), proj_hidden),
            nn.ReLU(inplace=True),
            nn.Linear(proj_hidden, proj_dim),
        )
        self.views = tuple(ViewSpec(augmentation) for _ in range(views_per_image))

    def forward(
        self, images: list[torch.Tensor], maps: list[torch.Tensor | None]
    ) -> dict[str, torch.Tensor]:
        check_views(self, images, maps)
        # (B, K, 3, S, S) -> (B * K, 3, S, S): the K views of each image are contiguous.
        x = torch.stack(images, dim=1).flatten(0, 1)
        z = self.projector(self.base_encoder(x))
        loss = smooth_ap_loss(
            z,
            self.views_per_image,
            self.temperature,
            normalize=self.normalize,
            hardness_aware=self.hardness_aware,
            hardness_temperature=self.hardness_temperature,
        )
        return {"ap": loss}


def build_gravis(method_cfg: GraVISConfig, backbone_cfg: BackboneConfig) -> GraVIS:
    """The GraVIS method that the config sections describe (random initialisation)."""
    augmentation = augmentation_with_overrides(GRAVIS_VIEW, method_cfg.augmentation)
    return GraVIS(
        create_backbone(backbone_cfg),
        views_per_image=method_cfg.views_per_image,
        temperature=method_cfg.temperature,
        normalize=method_cfg.normalize,
        hardness_aware=method_cfg.hardness_aware,
        hardness_temperature=method_cfg.hardness_temperature,
        proj_hidden=method_cfg.proj_hidden,
        proj_dim=method_cfg.proj_dim,
        augmentation=augmentation,
    )
