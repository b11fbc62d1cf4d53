"""Fixed 2-D sine-cosine position embeddings, as MAE (He et al., CVPR 2022) builds them.

For a square grid of ``grid_size x grid_size`` patches and an embedding width ``D`` (a
multiple of 4), the token in row ``i`` and column ``j`` (index ``i * grid_size + j``) gets

``[sin(j w_0) .. sin(j w_{D/4-1}), cos(j w_0) .. cos(j w_{D/4-1}),
   sin(i w_0) .. sin(i w_{D/4-1}), cos(i w_0) .. cos(i w_{D/4-1})]``

with ``w_k = 10000 ** (-k / (D / 4))``: the first half encodes the column, the second half the
row, in the order of MAE's released ``util/pos_embed.py``. With ``cls_token`` a row of zeros for
the class token comes first. Computed in float64 with numpy (so it is the same under a meta
device context), returned as float32.
"""

from __future__ import annotations

import numpy as np
import torch


def sincos_1d(embed_dim: int, positions: np.ndarray) -> np.ndarray:
    """``(M, embed_dim)``: sines then cosines of every position times each frequency."""
    if embed_dim <= 0 or embed_dim % 2:
        raise ValueError(f"a 1-D sine-cosine embedding needs a positive even width, "
                         f"got {embed_dim}")
    omega = 1.0 / 10000 ** (np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2))
    angles = np.outer(positions.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_pos_embed_2d(embed_dim: int, grid_size: int, cls_token: bool = False) -> torch.Tensor:
    """The ``(grid_size**2 [+1], embed_dim)`` float32 table described in the module docstring."""
    if embed_dim <= 0 or embed_dim % 4:
        raise ValueError(f"a 2-D sine-cosine position embedding needs a width divisible by 4, "
                         f"got {embed_dim}")
    if grid_size < 1:
        raise ValueError(f"the patch grid must have at least one patch a side, got {grid_size}")
    rows, columns = np.meshgrid(np.arange(grid_size), np.arange(grid_size), indexing="ij")
    table = np.concatenate(
        [sincos_1d(embed_dim // 2, columns), sincos_1d(embed_dim // 2, rows)], axis=1
    )
    if cls_token:
        table = np.concatenate([np.zeros((1, embed_dim)), table], axis=0)
    return torch.from_numpy(table).float()
