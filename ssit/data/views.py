"""What a method asks of the input pipeline: views of every image, each with its augmentation.

Plain parameters only (no DALI), so methods and configs can import them cheaply; the DALI
operator graphs that apply them are in `ssit.data.augment`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import torch

_PROBABILITIES = (
    "jitter_p",
    "grayscale_p",
    "blur_p",
    "solarize_p",
    "rotation_p",
    "hflip_p",
    "vflip_p",
)


CROP_INTERPOLATIONS = ("linear", "cubic")
# Fields added after checkpoints were first written: at these defaults they are left out of the
# fingerprint, so the recipes of older checkpoints still compare equal.
_LATER_FIELDS = {"crop_interpolation": "linear"}


class AugmentationConfigError(ValueError):
    """An augmentation parameter is out of its valid range."""


@dataclass(frozen=True)
class ViewAugmentation:
    """Parameters of one view's augmentation; probabilities are in [0, 1].

    `hue` is a fraction of the hue circle as in torchvision's ColorJitter (0.1 = +-36 degrees);
    `rotation_degrees` bounds the uniform rotation angle on both sides. `crop_interpolation`
    resamples the resized crop (`linear`, or `cubic` as DINO's bicubic crops).
    """

    crop_scale: tuple[float, float]
    blur_p: float
    solarize_p: float
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale_p: float = 0.2
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_threshold: int = 128
    rotation_p: float = 0.8
    rotation_degrees: float = 180.0
    hflip_p: float = 0.5
    vflip_p: float = 0.5
    crop_interpolation: str = "linear"

    def __post_init__(self) -> None:
        if self.crop_interpolation not in CROP_INTERPOLATIONS:
            raise AugmentationConfigError(
                f"crop_interpolation must be one of {', '.join(CROP_INTERPOLATIONS)}, "
                f"got {self.crop_interpolation!r}"
            )
        for name in _PROBABILITIES:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise AugmentationConfigError(f"{name} must be in [0, 1], got {value}")
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise AugmentationConfigError(
                f"crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}"
            )
        if not 0.0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise AugmentationConfigError(f"crop_ratio must be increasing, got {self.crop_ratio}")
        if not 0.0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise AugmentationConfigError(f"blur_sigma must be increasing, got {self.blur_sigma}")
        for name in ("brightness", "contrast", "saturation"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise AugmentationConfigError(
                    f"{name} must be in [0, 1), got {getattr(self, name)}"
                )
        if not 0.0 <= self.hue <= 0.5:
            raise AugmentationConfigError(f"hue must be in [0, 0.5], got {self.hue}")
        if not 0 <= self.solarize_threshold <= 256:
            raise AugmentationConfigError(
                f"solarize_threshold must be in [0, 256], got {self.solarize_threshold}"
            )


VIEW1 = ViewAugmentation(crop_scale=(0.08, 0.8), blur_p=1.0, solarize_p=0.0)
VIEW2 = ViewAugmentation(crop_scale=(0.8, 1.0), blur_p=0.1, solarize_p=0.2)


@dataclass(frozen=True)
class ViewSpec:
    """One view of every image: its augmentation, whether its saliency map comes along, and its
    output size in pixels (None: the backbone's image size)."""

    augmentation: ViewAugmentation
    with_map: bool = False
    size: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.augmentation, ViewAugmentation):
            raise AugmentationConfigError(
                f"a view needs a ViewAugmentation, got {type(self.augmentation).__name__}"
            )
        if self.size is not None and (isinstance(self.size, bool) or not isinstance(
                self.size, int) or self.size < 1):
            raise AugmentationConfigError(f"a view's size must be a positive integer or None, "
                                          f"got {self.size!r}")

    def output_size(self, default: int) -> int:
        """The view's side in pixels: its own size, else ``default`` (the backbone's)."""
        return default if self.size is None else self.size


SSIT_VIEWS = (ViewSpec(VIEW1, True), ViewSpec(VIEW2, True))
"""The SSiT paper's two asymmetric views, both with their saliency maps."""


class ViewBatch(NamedTuple):
    """One batch of every view: `images[v]` is view v of each image `(B, 3, S_v, S_v)` (`S_v`
    its own size), `maps[v]` its saliency maps `(B, 1, S_v, S_v)` in [0, 1], or None."""

    images: list[torch.Tensor]
    maps: list[torch.Tensor | None]


def views_fingerprint(views: tuple[ViewSpec, ...]) -> list[dict]:
    """The views as JSON data (count, map flags, sizes, every augmentation parameter), in the
    form a JSON round trip gives back (lists for tuples), so a saved copy compares equal.

    A view at the backbone's size and options added later at their defaults are left out, so a
    recipe that does not use them keeps the fingerprint older checkpoints saved."""
    described = []
    for view in views:
        augmentation = {
            name: value for name, value in dataclasses.asdict(view.augmentation).items()
            if name not in _LATER_FIELDS or value != _LATER_FIELDS[name]
        }
        entry: dict[str, Any] = {"with_map": view.with_map, "augmentation": augmentation}
        if view.size is not None:
            entry["size"] = view.size
        described.append(entry)
    return json.loads(json.dumps(described))


__all__ = [
    "CROP_INTERPOLATIONS",
    "SSIT_VIEWS",
    "VIEW1",
    "VIEW2",
    "AugmentationConfigError",
    "ViewAugmentation",
    "ViewBatch",
    "ViewSpec",
    "views_fingerprint",
]


def augmentation_with_overrides(
    base: ViewAugmentation, overrides: Mapping[str, Any]
) -> ViewAugmentation:
    """``base`` with the fields named in ``overrides`` replaced (lists become tuples).

    Raises ``ValueError`` (one line) for an unknown field or a value out of range.
    """
    fields = {field.name for field in dataclasses.fields(ViewAugmentation)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(
            f"unknown augmentation option(s) {', '.join(unknown)} "
            f"(known: {', '.join(sorted(fields))})"
        )
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    try:
        return dataclasses.replace(base, **values)
    except TypeError as error:
        raise ValueError(f"bad augmentation option value: {error}") from None
