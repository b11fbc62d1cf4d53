"""Where a pre-trained ViT looks: class-token attention of its last block beside the saliency map.

For a few shard samples, :func:`write_attention_figure` draws one row each: the crop, its
saliency map, the attention the class token pays to every patch in the last transformer block
of the encoder that grading reads from the checkpoint (mean over heads, scaled per image from
its minimum to its maximum, upsampled bilinearly to the picture) and the crop lit by that
attention. This is the figure the SSiT paper uses to show that the encoder attends to lesions.

The weights are recomputed from the input of the last block (captured by a forward hook) with
that block's own ``norm1`` and ``qkv`` layers: ``softmax(q k^T * scale)``, as timm computes them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ssit.backbones import BackboneConfig, CheckpointError, ViTConfig, extract_backbone
from ssit.backbones.extract import resolve_branch
from ssit.evaluate.architecture import EncoderError, load_encoder_source
from ssit.prepare.preview import (
    SampleImages,
    check_png_name,
    grid,
    heat_map,
    read_samples,
    side_by_side,
    text_strip,
    write_png,
)
from ssit.prepare.statistics import EYEPACS_MEAN, EYEPACS_STD

__all__ = [
    "AttentionError",
    "attention_figure",
    "attention_probabilities",
    "class_token_attention",
    "last_block_attention",
    "last_block_probabilities",
    "load_graded_vit",
    "scale_to_uint8",
    "spotlight",
    "write_attention_figure",
]

LOGGER = logging.getLogger(__name__)

_BATCH = 16
_SPOTLIGHT_FLOOR = 0.2
_COLUMN_TITLES = ("crop", "saliency map", "class-token attention", "crop lit by attention")


class AttentionError(ValueError):
    """Attention maps that cannot be drawn (wrong checkpoint or arguments); one line."""


def attention_probabilities(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """Self-attention weights ``softmax(q k^T * scale)`` over the last axis: ``(..., N, N)``."""
    return torch.softmax((q @ k.transpose(-2, -1)) * scale, dim=-1)


def class_token_attention(probabilities: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """The class token's weights on the patch tokens, mean over heads: ``(B, heads, N, N) ->
    (B, N - num_prefix_tokens)`` (the class token is token 0, prefix tokens come first)."""
    return probabilities[:, :, 0, num_prefix_tokens:].mean(dim=1)


def last_block_probabilities(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Attention weights ``(B, heads, N, N)`` of the last block of a timm ViT on ``images``."""
    blocks = getattr(model, "blocks", None)
    attention = getattr(blocks[-1], "attn", None) if blocks else None
    if attention is None or not hasattr(attention, "qkv") or not hasattr(blocks[-1], "norm1"):
        raise AttentionError("the encoder's last block has no qkv self-attention to read")
    captured: list[torch.Tensor] = []
    handle = blocks[-1].register_forward_hook(
        lambda _module, inputs, _output: captured.append(inputs[0]))
    try:
        model.forward_features(images)
    finally:
        handle.remove()
    tokens = blocks[-1].norm1(captured[0])
    batch, count, _ = tokens.shape
    qkv = attention.qkv(tokens).reshape(batch, count, 3, attention.num_heads, -1)
    q, k, _ = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attention.q_norm(q), attention.k_norm(k)
    return attention_probabilities(q, k, attention.scale)


def last_block_attention(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Class-token attention of the last block on the patch grid, mean over heads: ``(B, h, w)``."""
    probabilities = last_block_probabilities(model, images)
    patches = class_token_attention(probabilities, model.num_prefix_tokens)
    height, width = model.patch_embed.grid_size
    if patches.shape[1] != height * width:
        raise AttentionError(f"{patches.shape[1]} patch tokens do not fill the {height}x{width} "
                             "patch grid")
    return patches.reshape(-1, height, width)


def scale_to_uint8(values: np.ndarray) -> np.ndarray:
    """``values`` mapped linearly from their minimum (0) to their maximum (255); constant -> 0."""
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, np.uint8)
    return np.rint((values - low) * (255 / (high - low))).astype(np.uint8)


def spotlight(crop: np.ndarray, weights: np.ndarray, floor: float = _SPOTLIGHT_FLOOR
              ) -> np.ndarray:
    """The RGB crop dimmed where the uint8 ``weights`` are low: brightness ``floor`` at 0,
    unchanged at 255."""
    gain = floor + (1 - floor) * (weights.astype(np.float32) / 255)
    return np.rint(crop.astype(np.float32) * gain[..., None]).astype(np.uint8)


def load_graded_vit(checkpoint: str | Path) -> tuple[nn.Module, BackboneConfig]:
    """The encoder that grading and export read from a training checkpoint (or ``ssit export``
    file): the branch it declares (DINO's teacher), else the query encoder. In eval mode, with
    its backbone config; refuses anything but a class-token ViT."""
    source = load_encoder_source(str(checkpoint))
    if source is None:
        raise AttentionError("attention maps need a checkpoint, not a random encoder")
    cfg = source.recorded
    if cfg is None:
        raise AttentionError(f"{source.path.name} records no backbone; attention maps need a "
                             "training checkpoint of ssit or a file written by `ssit export`")
    if not isinstance(cfg, ViTConfig):
        raise AttentionError(f"{source.path.name} holds a {cfg.name} backbone "
                             f"({getattr(cfg, 'arch', '?')}): attention maps need a ViT")
    try:
        branch = resolve_branch(source.contents, "auto")
        model = extract_backbone(source.contents, cfg, branch=branch)
    except (CheckpointError, ValueError) as error:
        raise AttentionError(f"cannot build the encoder of {source.path.name}: {error}") from None
    if getattr(model, "cls_token", None) is None:
        raise AttentionError(f"the ViT of {source.path.name} has no class token")
    LOGGER.info("attention of the %s encoder of %s (%s at %d px)", branch, source.path,
                cfg.arch, cfg.img_size)
    return model.eval(), cfg


def _input_batch(crops: Sequence[np.ndarray], size: int) -> torch.Tensor:
    resized = np.stack([cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
                        for crop in crops]).astype(np.float32) / 255
    normalised = (resized - np.array(EYEPACS_MEAN, np.float32)) / np.array(EYEPACS_STD,
                                                                          np.float32)
    return torch.from_numpy(normalised).permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def _attention_pictures(model: nn.Module, crops: Sequence[np.ndarray], img_size: int,
                        tile: int) -> list[np.ndarray]:
    pictures: list[np.ndarray] = []
    for start in range(0, len(crops), _BATCH):
        maps = last_block_attention(model, _input_batch(crops[start : start + _BATCH], img_size))
        upsampled = F.interpolate(maps[:, None], size=(tile, tile), mode="bilinear",
                                  align_corners=False)[:, 0]
        pictures.extend(scale_to_uint8(picture) for picture in upsampled.numpy())
    return pictures


def _row(sample: SampleImages, attention: np.ndarray, tile: int) -> np.ndarray:
    crop = cv2.resize(sample.crop, (tile, tile), interpolation=cv2.INTER_AREA)
    saliency = cv2.resize(sample.saliency, (tile, tile), interpolation=cv2.INTER_AREA)
    row = side_by_side([crop, heat_map(saliency), heat_map(attention),
                        spotlight(crop, attention)])
    grade = "?" if sample.grade is None else sample.grade
    return np.concatenate([row, text_strip(f"grade {grade}  {sample.key}", row.shape[1])])


def attention_figure(checkpoint: str | Path, shards: str | Path | Sequence[str | Path],
                     n: int = 8, tile: int = 224) -> tuple[np.ndarray, int]:
    """RGB figure of the first ``n`` samples' crop, map and last-block class-token attention,
    and how many samples it shows."""
    if n < 1:
        raise AttentionError(f"number of samples must be at least 1, got {n}")
    if tile < 32:
        raise AttentionError(f"tile size must be at least 32 pixels, got {tile}")
    model, cfg = load_graded_vit(checkpoint)
    samples = read_samples(shards, n)
    attention = _attention_pictures(model, [s.crop for s in samples], cfg.img_size, tile)
    rows = [_row(sample, picture, tile) for sample, picture in zip(samples, attention, strict=True)]
    header = side_by_side([text_strip(title, tile) for title in _COLUMN_TITLES])
    note = text_strip(f"{cfg.arch} at {cfg.img_size} px, last block, mean over heads; "
                      "attention scaled per image from its min to its max", header.shape[1])
    body = grid(rows, columns=1)
    pad = (body.shape[1] - header.shape[1]) // 2
    top = np.zeros((2 * header.shape[0], body.shape[1], 3), np.uint8)
    top[: header.shape[0], pad : pad + header.shape[1]] = note
    top[header.shape[0] :, pad : pad + header.shape[1]] = header
    return np.concatenate([top, body]), len(samples)


def write_attention_figure(checkpoint: str | Path, shards: str | Path | Sequence[str | Path],
                           out: str | Path, n: int = 8, tile: int = 224) -> int:
    """Write :func:`attention_figure` as a PNG; returns how many samples it shows."""
    check_png_name(out)
    figure, shown = attention_figure(checkpoint, shards, n, tile)
    write_png(figure, out)
    return shown


USER_ERRORS: tuple[type[BaseException], ...] = (AttentionError, EncoderError, CheckpointError)
"""The exception types that mean bad input to :func:`write_attention_figure` (with
:class:`ssit.prepare.shard_format.PrepareError`)."""
