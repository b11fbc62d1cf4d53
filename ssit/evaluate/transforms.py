"""Image transforms for grading: light training augmentation and a plain evaluation resize."""

from __future__ import annotations

from collections.abc import Sequence

from torchvision import transforms

from ssit.evaluate.config import AugmentConfig


def train_transform(
    augment: AugmentConfig, img_size: int, mean: Sequence[float], std: Sequence[float]
) -> transforms.Compose:
    """Mild resized crop, flips, colour jitter, rotation with small translation, normalise."""
    return transforms.Compose([
        transforms.RandomResizedCrop(
            img_size, scale=tuple(augment.crop_scale), ratio=tuple(augment.crop_ratio)
        ),
        transforms.RandomHorizontalFlip(augment.hflip),
        transforms.RandomVerticalFlip(augment.vflip),
        transforms.ColorJitter(
            augment.brightness, augment.contrast, augment.saturation, augment.hue
        ),
        transforms.RandomAffine(
            degrees=augment.rotation,
            translate=(augment.translate, augment.translate),
            interpolation=transforms.InterpolationMode.BILINEAR,
        ),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])


def eval_transform(
    img_size: int, mean: Sequence[float], std: Sequence[float]
) -> transforms.Compose:
    """Resize the square crop to the input size and normalise."""
    return transforms.Compose([
        transforms.Resize((img_size, img_size)),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])
