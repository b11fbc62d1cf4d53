"""The reference input pipeline: the original SSiT code's recipe on PIL images.

A torchvision transform per view with the saliency map cropped, rotated and flipped alongside
the image, one stage per method so that the stages can be timed one by one. Rotation is
bilinear with fill 0, as the SPEC asks of our pipeline (torchvision's RandomRotation, which the
original code calls, defaults to nearest-neighbour).
"""

from __future__ import annotations

import io
import random

import torch
from PIL import Image, ImageFilter, ImageOps
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

from ssit.prepare.statistics import EYEPACS_MEAN, EYEPACS_STD

_BILINEAR = InterpolationMode.BILINEAR


class ReferenceView:
    """One view's augmentation on PIL images (image RGB, map L), split into its stages."""

    def __init__(
        self, scale: tuple[float, float], blur_p: float, solarize_p: float, size: int = 224
    ) -> None:
        self.scale, self.blur_p, self.solarize_p, self.size = scale, blur_p, solarize_p, size
        self.jitter = T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8)
        self.gray = T.RandomGrayscale(p=0.2)
        self.normalise = T.Normalize(EYEPACS_MEAN, EYEPACS_STD)

    def crop(self, image: Image.Image, saliency: Image.Image) -> tuple[Image.Image, Image.Image]:
        """Random resized crop with one window for image and map, bilinear."""
        i, j, h, w = T.RandomResizedCrop.get_params(image, list(self.scale), [3 / 4, 4 / 3])
        size = [self.size, self.size]
        return (
            F.resized_crop(image, i, j, h, w, size, _BILINEAR),
            F.resized_crop(saliency, i, j, h, w, size, _BILINEAR),
        )

    def colour(self, image: Image.Image) -> Image.Image:
        """Colour jitter (p 0.8), then grayscale (p 0.2)."""
        return self.gray(self.jitter(image))

    def blur(self, image: Image.Image) -> Image.Image:
        """PIL's Gaussian blur with radius uniform in 0.1..2.0, with probability blur_p."""
        if random.random() < self.blur_p:
            image = image.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))
        return image

    def solarize(self, image: Image.Image) -> Image.Image:
        """Solarize at 128 with probability solarize_p."""
        if random.random() < self.solarize_p:
            image = ImageOps.solarize(image, 128)
        return image

    def rotate_flip(
        self, image: Image.Image, saliency: Image.Image
    ) -> tuple[Image.Image, Image.Image]:
        """Rotation (p 0.8, uniform angle) and independent h/v flips (p 0.5), image and map."""
        if random.random() < 0.8:
            angle = random.uniform(-180, 180)
            image = F.rotate(image, angle, _BILINEAR, fill=0)
            saliency = F.rotate(saliency, angle, _BILINEAR, fill=0)
        if random.random() < 0.5:
            image, saliency = F.hflip(image), F.hflip(saliency)
        if random.random() < 0.5:
            image, saliency = F.vflip(image), F.vflip(saliency)
        return image, saliency

    def to_tensors(
        self, image: Image.Image, saliency: Image.Image
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised float image and the map in [0, 1]."""
        return self.normalise(F.to_tensor(image)), F.to_tensor(saliency)

    def __call__(
        self, image: Image.Image, saliency: Image.Image
    ) -> tuple[torch.Tensor, torch.Tensor]:
        image, saliency = self.crop(image, saliency)
        image = self.solarize(self.blur(self.colour(image)))
        image, saliency = self.rotate_flip(image, saliency)
        return self.to_tensors(image, saliency)


VIEW1 = ReferenceView((0.08, 0.8), blur_p=1.0, solarize_p=0.0)
VIEW2 = ReferenceView((0.8, 1.0), blur_p=0.1, solarize_p=0.2)


def decode(sample: dict) -> tuple[Image.Image, Image.Image]:
    """A shard sample's image (RGB) and saliency map (L) as PIL images."""
    image = Image.open(io.BytesIO(sample["jpg"])).convert("RGB")
    saliency = Image.open(io.BytesIO(sample["sal.png"])).convert("L")
    return image, saliency


def two_views(sample: dict) -> tuple[torch.Tensor, ...]:
    """`(x1, x2, m1, m2)` for one shard sample."""
    image, saliency = decode(sample)
    x1, m1 = VIEW1(image, saliency)
    x2, m2 = VIEW2(image, saliency)
    return x1, x2, m1, m2
