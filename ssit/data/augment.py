"""The view augmentations as DALI operator graphs (the table of the SSiT paper).

Every function here is called while a DALI pipeline with conditionals enabled is being
defined (`pipeline_def(enable_conditionals=True)`): it takes data nodes and returns data nodes.
Images are HWC uint8 RGB, saliency maps HWC uint8 with one channel. The geometric functions
take the image and its map together and draw their random parameters once, so both receive
exactly the same crop window, rotation angle and flips; for a view without a map they take
None and return None in its place. (Joining image and map into one
4-channel tensor to resample them in one call was measured slower on the CPU: the join and
split copies cost more than the second, one-channel call.)

Random application is a per-sample `if` on a coin flip: DALI splits the batch and runs an
operator only on the samples that drew it, so a skipped operation costs nothing and leaves the
pixels untouched. Probability 0 leaves the operator out of the graph, probability 1 runs it on
every sample without splitting.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from nvidia.dali import fn, types
from nvidia.dali import math as dmath
from nvidia.dali.data_node import DataNode

from ssit.data.views import VIEW1, VIEW2, AugmentationConfigError, ViewAugmentation
from ssit.prepare.statistics import EYEPACS_MEAN, EYEPACS_STD

_INTERPOLATIONS = {"linear": types.INTERP_LINEAR, "cubic": types.INTERP_CUBIC}


def coin(p: float) -> DataNode | bool:
    """A per-sample boolean that is true with probability `p` (a Python bool for p = 0 or 1)."""
    if p >= 1.0:
        return True
    if p <= 0.0:
        return False
    return fn.random.coin_flip(probability=p, dtype=types.BOOL)


def uniform(lo: float, hi: float) -> DataNode | float:
    """A per-sample float drawn uniformly from [lo, hi) (the constant itself when lo == hi)."""
    if lo == hi:
        return float(lo)
    return fn.random.uniform(range=[lo, hi], dtype=types.FLOAT)


def as_float(flag: DataNode | bool) -> DataNode | float:
    """A coin as 0.0 / 1.0 for arithmetic."""
    if isinstance(flag, DataNode):
        return fn.cast(flag, dtype=types.FLOAT)
    return float(flag)


def resized_crop_pair(
    image: DataNode,
    saliency: DataNode | None,
    image_shape: DataNode,
    size: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    interpolation: str = "linear",
) -> tuple[DataNode, DataNode | None]:
    """Random resized crop with one window for the image and its map, resized with antialiasing
    (the image by `interpolation`, linear or cubic; the map always bilinearly).

    The window is drawn as torchvision's RandomResizedCrop draws it (area fraction in `scale`,
    log-uniform aspect ratio in `ratio`, ten attempts, then a centred fallback) and is applied
    in relative coordinates, so a map stored at another resolution still lines up.
    """
    anchor, extent = fn.random_crop_generator(
        image_shape, random_area=list(scale), random_aspect_ratio=list(ratio)
    )
    hw = fn.cast(fn.slice(image_shape, 0, 2, axes=[0]), dtype=types.FLOAT)
    start = fn.cast(anchor, dtype=types.FLOAT) / hw
    end = fn.cast(anchor + extent, dtype=types.FLOAT) / hw
    resize = {
        "size": [size, size],
        "roi_start": start,
        "roi_end": end,
        "roi_relative": True,
        "interp_type": types.INTERP_LINEAR,
        "antialias": True,
    }
    image_resize = {**resize, "interp_type": _INTERPOLATIONS[interpolation]}
    return fn.resize(image, **image_resize), _map_op(fn.resize, saliency, **resize)


def colour_jitter_grayscale(image: DataNode, aug: ViewAugmentation) -> DataNode:
    """Colour jitter (with `jitter_p`) followed by grayscale (with `grayscale_p`) in one twist.

    Brightness, contrast and saturation factors are uniform in [1 - x, 1 + x], the hue shift
    uniform in +-`hue` of the circle. Grayscale sets the saturation to zero, which leaves the
    luma 0.299 R + 0.587 G + 0.114 B in all three channels, as torchvision's Grayscale does.
    Samples that get neither are not touched.
    """
    jitter, gray = coin(aug.jitter_p), coin(aug.grayscale_p)
    jitter_on = as_float(jitter)

    def jittered(value: DataNode | float, identity: float) -> DataNode | float:
        if jitter is False:
            return identity
        return identity + jitter_on * (value - identity)

    hue_degrees = 360.0 * aug.hue
    brightness = jittered(uniform(1 - aug.brightness, 1 + aug.brightness), 1.0)
    contrast = jittered(uniform(1 - aug.contrast, 1 + aug.contrast), 1.0)
    saturation = jittered(uniform(1 - aug.saturation, 1 + aug.saturation), 1.0)
    hue = jittered(uniform(-hue_degrees, hue_degrees), 0.0)
    saturation = saturation * (1.0 - as_float(gray))
    if _either(jitter, gray):
        image = fn.color_twist(
            image, brightness=brightness, contrast=contrast, saturation=saturation, hue=hue
        )
    return image


def gaussian_blur(image: DataNode, aug: ViewAugmentation) -> DataNode:
    """Gaussian blur with sigma uniform in `blur_sigma`, applied with probability `blur_p`.

    The kernel radius is ceil(3 sigma).
    """
    sigma = uniform(*aug.blur_sigma)
    if isinstance(sigma, DataNode):
        window = fn.cast(2.0 * dmath.ceil(3.0 * sigma) + 1.0, dtype=types.INT32)
    else:
        window = 2 * math.ceil(3.0 * sigma) + 1
    if coin(aug.blur_p):
        image = fn.gaussian_blur(image, sigma=sigma, window_size=window)
    return image


def solarize(image: DataNode, aug: ViewAugmentation) -> DataNode:
    """Solarize (x >= threshold -> 255 - x) with probability `solarize_p`, as a lookup table."""
    if coin(aug.solarize_p):
        image = fn.lookup_table(
            image,
            keys=list(range(256)),
            values=[255 - x if x >= aug.solarize_threshold else x for x in range(256)],
            dtype=types.UINT8,
        )
    return image


def rotate_flip_pair(
    image: DataNode, saliency: DataNode | None, size: int, aug: ViewAugmentation
) -> tuple[DataNode, DataNode | None]:
    """Rotation (uniform angle, with `rotation_p`) and h/v flips, identical on image and map.

    A rotated sample gets rotation and flips as one affine transform about the centre,
    resampled once, bilinearly, keeping the size and filling with 0 outside the source; a
    sample that is not rotated is only flipped (exact pixel moves, no resampling).
    """
    hflip, vflip = coin(aug.hflip_p), coin(aug.vflip_p)
    angle = uniform(-aug.rotation_degrees, aug.rotation_degrees)
    centre = [size / 2.0, size / 2.0]
    if coin(aug.rotation_p):
        sx, sy = 1.0 - 2.0 * as_float(hflip), 1.0 - 2.0 * as_float(vflip)
        flips = fn.transforms.scale(scale=_pair(sx, sy), center=centre)
        matrix = fn.transforms.rotation(flips, angle=_as_node(angle), center=centre)
        warp = {
            "matrix": matrix,
            "size": [size, size],
            "fill_value": 0,
            "interp_type": types.INTERP_LINEAR,
            "inverse_map": False,
        }
        image, saliency = fn.warp_affine(image, **warp), _map_op(fn.warp_affine, saliency, **warp)
    elif _either(hflip, vflip):
        flips = {"horizontal": _as_int(hflip), "vertical": _as_int(vflip)}
        image, saliency = fn.flip(image, **flips), _map_op(fn.flip, saliency, **flips)
    return image, saliency


def normalise_image(image: DataNode, mean: tuple[float, ...], std: tuple[float, ...]) -> DataNode:
    """uint8 HWC -> float32 CHW, (x / 255 - mean) / std per channel."""
    return fn.crop_mirror_normalize(
        image,
        dtype=types.FLOAT,
        output_layout="CHW",
        mean=[255.0 * m for m in mean],
        std=[255.0 * s for s in std],
    )


def saliency_to_unit(saliency: DataNode) -> DataNode:
    """uint8 HWC (one channel) -> float32 CHW in [0, 1]."""
    return fn.crop_mirror_normalize(
        saliency, dtype=types.FLOAT, output_layout="CHW", mean=[0.0], std=[255.0]
    )


def augment_view(
    image: DataNode,
    saliency: DataNode | None,
    image_shape: DataNode,
    aug: ViewAugmentation,
    size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> tuple[DataNode, DataNode | None]:
    """One view: the augmentation table's steps in order, then normalisation (map: None in,
    None out)."""
    image, saliency = resized_crop_pair(
        image, saliency, image_shape, size, aug.crop_scale, aug.crop_ratio,
        aug.crop_interpolation,
    )
    image = colour_jitter_grayscale(image, aug)
    image = gaussian_blur(image, aug)
    image = solarize(image, aug)
    image, saliency = rotate_flip_pair(image, saliency, size, aug)
    return normalise_image(image, mean, std), _map_op(saliency_to_unit, saliency)


def _map_op(
    op: Callable[..., DataNode], saliency: DataNode | None, **kwargs: object
) -> DataNode | None:
    """`op(saliency, **kwargs)`, or None for a view without a map."""
    return None if saliency is None else op(saliency, **kwargs)


def _either(a: DataNode | bool, b: DataNode | bool) -> DataNode | bool:
    if isinstance(a, DataNode) and isinstance(b, DataNode):
        return a | b
    if isinstance(a, DataNode):
        return a if not b else True
    if isinstance(b, DataNode):
        return b if not a else True
    return a or b


def _as_int(flag: DataNode | bool) -> DataNode | int:
    return fn.cast(flag, dtype=types.INT32) if isinstance(flag, DataNode) else int(flag)


def _as_node(value: DataNode | float) -> DataNode:
    return value if isinstance(value, DataNode) else types.Constant(float(value), dtype=types.FLOAT)


def _pair(a: DataNode | float, b: DataNode | float) -> DataNode | list[float]:
    if not isinstance(a, DataNode) and not isinstance(b, DataNode):
        return [float(a), float(b)]
    return fn.stack(_as_node(a), _as_node(b))


__all__ = [
    "EYEPACS_MEAN",
    "EYEPACS_STD",
    "VIEW1",
    "VIEW2",
    "AugmentationConfigError",
    "ViewAugmentation",
    "augment_view",
    "colour_jitter_grayscale",
    "gaussian_blur",
    "normalise_image",
    "resized_crop_pair",
    "rotate_flip_pair",
    "saliency_to_unit",
    "solarize",
]
