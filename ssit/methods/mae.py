"""MAE (He et al., CVPR 2022): reconstruct the pixels of randomly masked ViT patches.

The encoder is the project's timm ViT (``base_encoder``, timm parameter names) with MAE's fixed
2-D sine-cosine position embedding (class row zero, not trained) and MAE's initialisation. It
sees the position-embedded patches that :func:`random_masking` keeps, then the class token, its
blocks and its norm. A light decoder with the released attribute names (``decoder_embed``,
``mask_token``, ``decoder_pos_embed``, ``decoder_blocks``, ``decoder_norm``, ``decoder_pred``)
puts mask tokens back in the removed places and predicts every patch's pixels; the loss is the
mean squared error on the removed patches only (:func:`reconstruction_loss`). One view per
image, without saliency maps.
"""

from __future__ import annotations

import functools

import torch
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from ssit.backbones import BackboneConfig, create_backbone
from ssit.backbones.pos_embed import sincos_pos_embed_2d
from ssit.data.views import ViewAugmentation, ViewSpec, augmentation_with_overrides
from ssit.methods.base import Method, check_views
from ssit.methods.config import MAEConfig

MAE_VIEW = ViewAugmentation(
    crop_scale=(0.2, 1.0),
    jitter_p=0.0,
    grayscale_p=0.0,
    blur_p=0.0,
    solarize_p=0.0,
    rotation_p=0.0,
    hflip_p=0.5,
    vflip_p=0.0,
    crop_interpolation="cubic",
)
"""MAE's pre-training view: random resized crop of scale 0.2-1 (aspect 3/4-4/3), resampled
bicubically, and a horizontal flip with p 0.5; no colour operation, blur, rotation or vertical
flip."""

NORM_PIX_EPS = 1e-6
# MAE's norm layer, in the encoder's timm ViT as in its decoder.
_layer_norm = functools.partial(nn.LayerNorm, eps=1e-6)


def random_masking(
    x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep a random ``1 - mask_ratio`` of the tokens of every sample, as MAE does.

    ``x`` is ``(N, L, D)``; ``noise`` ``(N, L)`` (uniform ``torch.rand`` when None) orders the
    tokens: ``ids_shuffle = argsort(noise)`` and the first ``int(L * (1 - mask_ratio))`` are
    kept, in that order. Returns the kept tokens ``(N, keep, D)``, the ``mask`` ``(N, L)``
    (float32, 1 where a token was removed, in the original order) and ``ids_restore``
    ``(N, L)``, the inverse permutation that puts the shuffled sequence back in place.
    """
    if x.dim() != 3:
        raise ValueError(f"expected tokens (N, L, D), got shape {tuple(x.shape)}")
    if not 0 <= mask_ratio < 1:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    n, length, width = x.shape
    if noise is None:
        noise = torch.rand(n, length, device=x.device)
    if tuple(noise.shape) != (n, length):
        raise ValueError(f"noise must be (N, L) = {(n, length)}, got {tuple(noise.shape)}")
    keep = int(length * (1 - mask_ratio))
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :keep]
    kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, width))
    mask = torch.ones(n, length, device=x.device)
    mask[:, :keep] = 0
    return kept, torch.gather(mask, 1, ids_restore), ids_restore


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``(N, 3, H, W)`` -> ``(N, L, p*p*3)``, patches in row-major order, each flattened as
    (row in patch, column in patch, channel): MAE's ``nchpwq -> nhwpqc``."""
    n, channels, height, width = images.shape
    if channels != 3 or height % patch_size or width % patch_size:
        raise ValueError(f"expected (N, 3, H, W) with H and W multiples of {patch_size}, got "
                         f"{tuple(images.shape)}")
    h, w = height // patch_size, width // patch_size
    x = images.reshape(n, 3, h, patch_size, w, patch_size)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(n, h * w, patch_size * patch_size * 3)


def reconstruction_loss(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix_loss: bool = True
) -> torch.Tensor:
    """MAE's loss: mean over the removed patches (``mask`` 1) of each patch's mean squared
    error between ``pred`` and ``target`` (both ``(N, L, P)``).

    With ``norm_pix_loss`` each target patch is first standardised by its own mean and unbiased
    variance: ``(t - mean) / sqrt(var + 1e-6)``. Computed in (at least) float32.
    """
    if pred.shape != target.shape or pred.dim() != 3 or tuple(mask.shape) != pred.shape[:2]:
        raise ValueError(f"pred and target must both be (N, L, P) and mask (N, L), got "
                         f"{tuple(pred.shape)}, {tuple(target.shape)} and {tuple(mask.shape)}")
    dtype = torch.promote_types(pred.dtype, torch.float32)
    with torch.autocast(pred.device.type, enabled=False):
        pred, target, mask = pred.to(dtype), target.to(dtype), mask.to(dtype)
        if norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + NORM_PIX_EPS) ** 0.5
        per_patch = ((pred - target) ** 2).mean(dim=-1)
        return (per_patch * mask).sum() / mask.sum()


def init_mae_weights(module: nn.Module) -> None:
    """MAE's initialisation of one module: xavier-uniform linears with zero bias, LayerNorms
    with weight 1 and bias 0 (use with ``nn.Module.apply``)."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class MAE(Method):
    """Masked autoencoder on a timm ViT ``base_encoder`` with MAE's decoder (see module doc)."""

    loss_names = ("rec",)

    def __init__(
        self,
        backbone: nn.Module,
        mask_ratio: float = 0.75,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        norm_pix_loss: bool = True,
        augmentation: ViewAugmentation = MAE_VIEW,
    ) -> None:
        super().__init__()
        grid = _check_encoder(backbone)
        length = grid * grid
        if not 0 < mask_ratio < 1:
            raise ValueError(f"method.mask_ratio must be in (0, 1), got {mask_ratio}")
        if int(length * (1 - mask_ratio)) < 1:
            raise ValueError(f"method.mask_ratio={mask_ratio} keeps no patch of the {grid}x{grid} "
                             "grid")
        if min(decoder_embed_dim, decoder_depth, decoder_num_heads) < 1:
            raise ValueError("method.decoder_embed_dim, decoder_depth and decoder_num_heads must "
                             f"be positive, got {decoder_embed_dim}, {decoder_depth} and "
                             f"{decoder_num_heads}")
        if decoder_embed_dim % 4 or decoder_embed_dim % decoder_num_heads:
            raise ValueError(f"method.decoder_embed_dim={decoder_embed_dim} must be divisible by "
                             f"4 and by method.decoder_num_heads={decoder_num_heads}")
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        self.patch_size = int(backbone.patch_embed.patch_size[0])
        self.views = (ViewSpec(augmentation),)
        embed_dim = int(backbone.embed_dim)

        self.base_encoder = backbone
        backbone.pos_embed.requires_grad_(False)
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, length + 1, decoder_embed_dim),
                                              requires_grad=False)
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_embed_dim, decoder_num_heads, mlp_ratio=4.0, qkv_bias=True,
                  norm_layer=_layer_norm)
            for _ in range(decoder_depth)
        )
        self.decoder_norm = _layer_norm(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, self.patch_size**2 * 3)
        self._initialise(grid)

    def _initialise(self, grid: int) -> None:
        encoder = self.base_encoder
        with torch.no_grad():
            encoder.pos_embed.copy_(sincos_pos_embed_2d(encoder.pos_embed.shape[-1], grid,
                                                        cls_token=True).unsqueeze(0))
            self.decoder_pos_embed.copy_(sincos_pos_embed_2d(self.decoder_pos_embed.shape[-1],
                                                             grid, cls_token=True).unsqueeze(0))
        weight = encoder.patch_embed.proj.weight
        nn.init.xavier_uniform_(weight.data.view(weight.shape[0], -1))
        nn.init.normal_(encoder.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        self.apply(init_mae_weights)

    def forward_encoder(
        self, images: torch.Tensor, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Latent tokens ``(N, 1 + keep, D)`` (class token first), ``mask`` and ``ids_restore``."""
        encoder = self.base_encoder
        x = encoder.patch_embed(images) + encoder.pos_embed[:, 1:]
        x, mask, ids_restore = random_masking(x, self.mask_ratio, noise)
        cls = (encoder.cls_token + encoder.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = encoder.norm_pre(encoder.pos_drop(torch.cat([cls, x], dim=1)))
        return encoder.norm(encoder.blocks(x)), mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Predicted pixels of every patch ``(N, L, p*p*3)`` from the encoder's latent tokens."""
        x = self.decoder_embed(latent)
        n, tokens, width = x.shape
        removed = ids_restore.shape[1] + 1 - tokens
        patches = torch.cat([x[:, 1:], self.mask_token.to(x.dtype).expand(n, removed, -1)], dim=1)
        patches = torch.gather(patches, 1, ids_restore.unsqueeze(-1).expand(-1, -1, width))
        x = torch.cat([x[:, :1], patches], dim=1) + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def forward_loss(
        self, images: torch.Tensor, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(loss, pred (N, L, p*p*3), mask (N, L))`` for images ``(N, 3, S, S)``; ``noise``
        ``(N, L)`` chooses the kept patches (``torch.rand`` when None)."""
        latent, mask, ids_restore = self.forward_encoder(images, noise)
        pred = self.forward_decoder(latent, ids_restore)
        target = patchify(images, self.patch_size)
        return reconstruction_loss(pred, target, mask, self.norm_pix_loss), pred, mask

    def forward(
        self, images: list[torch.Tensor], maps: list[torch.Tensor | None]
    ) -> dict[str, torch.Tensor]:
        check_views(self, images, maps)
        loss, _, _ = self.forward_loss(images[0])
        return {"rec": loss}


def _check_encoder(backbone: nn.Module) -> int:
    """The side of ``backbone``'s square patch grid; ValueError unless MAE can use it."""
    if not isinstance(backbone, VisionTransformer):
        raise ValueError(f"MAE needs a timm VisionTransformer, got {type(backbone).__name__}")
    if (not backbone.has_class_token or backbone.num_prefix_tokens != 1
            or backbone.no_embed_class or backbone.pos_embed is None):
        raise ValueError("MAE needs a ViT with one class token, no register tokens and a "
                         "position embedding that covers the class token")
    grid_h, grid_w = backbone.patch_embed.grid_size
    if grid_h != grid_w:
        raise ValueError(f"MAE needs a square patch grid, got {grid_h}x{grid_w}")
    if backbone.embed_dim % 4:
        raise ValueError(f"MAE's sine-cosine position embedding needs a width divisible by 4, "
                         f"got embed_dim {backbone.embed_dim}")
    return int(grid_h)


def build_mae(method_cfg: MAEConfig, backbone_cfg: BackboneConfig) -> MAE:
    """The MAE method that the config sections describe (random initialisation)."""
    augmentation = augmentation_with_overrides(MAE_VIEW, method_cfg.augmentation)
    return MAE(
        create_backbone(backbone_cfg),
        mask_ratio=method_cfg.mask_ratio,
        decoder_embed_dim=method_cfg.decoder_embed_dim,
        decoder_depth=method_cfg.decoder_depth,
        decoder_num_heads=method_cfg.decoder_num_heads,
        norm_pix_loss=method_cfg.norm_pix_loss,
        augmentation=augmentation,
    )
