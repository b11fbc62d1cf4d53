"""A plain re-implementation of the original SSiT model, the reference of :mod:`benchmarks.model`.

It follows the structure of the authors' release: a Vision Transformer with hand-written
attention (``softmax(q k^T * scale) v``) in the pre-norm block of the timm 0.4 era, each view
passed through each encoder separately, and the momentum update as a loop over parameters.
``OriginalSSiT(ours)`` takes its sizes from one of our SSiT models, whose weights it can load.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssit.methods.ssit import SSiT


class OriginalAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        qkv = self.qkv(x).reshape(batch, length, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(batch, length, dim)
        return self.proj_drop(self.proj(x))


class OriginalMlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(0.0)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = nn.Dropout(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class OriginalBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = OriginalAttention(dim, num_heads)
        self.ls1 = nn.Identity()
        self.drop_path1 = nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = OriginalMlp(dim, int(dim * mlp_ratio))
        self.ls2 = nn.Identity()
        self.drop_path2 = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class OriginalPatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


def original_mlp(num_layers: int, in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for index in range(num_layers):
        last = index == num_layers - 1
        layers.append(
            nn.Linear(in_dim if index == 0 else hidden, out_dim if last else hidden, False)
        )
        if last:
            layers.append(nn.BatchNorm1d(out_dim, affine=False))
        else:
            layers += [nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class OriginalViT(nn.Module):
    def __init__(self, img_size: int, patch: int, dim: int, depth: int, heads: int) -> None:
        super().__init__()
        self.patch = patch
        self.patch_embed = OriginalPatchEmbed(patch, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, (img_size // patch) ** 2 + 1, dim))
        self.blocks = nn.Sequential(*[OriginalBlock(dim, heads, 4.0) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head: nn.Module = nn.Identity()

    def forward_tokens(self, x: torch.Tensor, keep_scores=None, num_keep: int = 0):
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        if keep_scores is not None:
            order = keep_scores.argsort(dim=1, descending=True)[:, :num_keep] + 1
            index = torch.cat([torch.zeros_like(order[:, :1]), order], dim=1)
            x = torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


class OriginalSSiT(nn.Module):
    def __init__(self, reference: SSiT) -> None:
        super().__init__()
        vit = reference.base_encoder
        dim, depth = vit.embed_dim, len(vit.blocks)
        heads = vit.blocks[0].attn.num_heads
        proj_dim = reference.predictor[0].in_features
        mlp_dim = reference.predictor[0].out_features
        self.patch, self.grid = reference.patch_size, reference.grid_size
        self.num_keep, self.temperature = reference.num_kept, reference.temperature
        self.threshold = reference.saliency_threshold
        self.base_encoder = OriginalViT(reference.img_size, self.patch, dim, depth, heads)
        self.momentum_encoder = OriginalViT(reference.img_size, self.patch, dim, depth, heads)
        self.base_encoder.head = original_mlp(3, dim, mlp_dim, proj_dim)
        self.momentum_encoder.head = original_mlp(3, dim, mlp_dim, proj_dim)
        self.predictor = original_mlp(2, proj_dim, mlp_dim, proj_dim)
        self.saliency_segmentor = nn.Sequential(
            nn.Conv2d(dim, self.patch**2, 1), nn.PixelShuffle(self.patch)
        )
        self.momentum_encoder.requires_grad_(False)

    def contrastive(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
        logits = torch.einsum("nc,mc->nm", [q, k]) / self.temperature
        labels = torch.arange(logits.shape[0], dtype=torch.long, device=q.device)
        return nn.CrossEntropyLoss()(logits, labels) * (2 * self.temperature)

    def segmentation(self, tokens: torch.Tensor, saliency: torch.Tensor) -> torch.Tensor:
        grid = tokens[:, 1:].transpose(1, 2).reshape(tokens.shape[0], -1, *self.grid)
        target = (saliency > self.threshold).float()
        return F.binary_cross_entropy_with_logits(self.saliency_segmentor(grid), target)

    def forward(self, x1, x2, m1, m2, momentum: float):
        tokens1 = self.base_encoder.forward_tokens(x1)
        tokens2 = self.base_encoder.forward_tokens(x2)
        q1 = self.predictor(self.base_encoder.head(tokens1[:, 0]))
        q2 = self.predictor(self.base_encoder.head(tokens2[:, 0]))
        with torch.no_grad():
            for p_b, p_m in zip(
                self.base_encoder.parameters(), self.momentum_encoder.parameters(), strict=True
            ):
                p_m.data = p_m.data * momentum + p_b.data * (1.0 - momentum)
            keys = []
            for x, saliency in ((x1, m1), (x2, m2)):
                scores = F.max_pool2d(saliency, self.patch, self.patch).flatten(1)
                tokens = self.momentum_encoder.forward_tokens(x, scores, self.num_keep)
                keys.append(self.momentum_encoder.head(tokens[:, 0]))
        loss_cl = self.contrastive(q1, keys[1]) + self.contrastive(q2, keys[0])
        loss_ss = self.segmentation(tokens1, m1) + self.segmentation(tokens2, m2)
        return loss_cl, loss_ss
