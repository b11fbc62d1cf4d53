"""The names of timm's architectures, read from timm's sources without importing timm.

Importing timm imports torch (seconds); a launcher that only checks a configuration reads the
``@register_model`` functions of timm's model modules instead (milliseconds).
"""

from __future__ import annotations

import functools
import importlib.util
import re
from pathlib import Path

from ssit.validators import RangeCheck

_REGISTERED = re.compile(r"@register_model\s*\n\s*def\s+(\w+)\s*\(")
# A checkpoint given as ``timm:<name>[=<weights file>]`` is a timm model's own weights.
TIMM_PREFIX = "timm:"
# The timm modules whose models are Vision Transformers with a class token (backbone ``vit``).
TIMM_VIT_MODULES = ("timm.models.vision_transformer", "timm.models.deit")


@functools.cache
def timm_model_modules() -> dict[str, str]:
    """The module of every architecture timm registers, by name; empty when timm or its
    sources cannot be found."""
    spec = importlib.util.find_spec("timm")
    if spec is None or spec.origin is None:
        return {}
    modules: dict[str, str] = {}
    for path in sorted((Path(spec.origin).parent / "models").glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        for name in _REGISTERED.findall(text):
            modules[name] = f"timm.models.{path.stem}"
    return modules


def timm_model_names() -> frozenset[str]:
    """Every architecture timm registers (empty when its sources cannot be found)."""
    return frozenset(timm_model_modules())


def timm_backbone_name(arch: str) -> str:
    """The backbone kind of a timm architecture: ``vit`` for timm's ViT family, else ``cnn``.

    Raises ValueError for a name timm does not know.
    """
    modules = timm_model_modules()
    base = arch.split(".")[0]
    if modules and base in modules:
        module = modules[base]
    else:
        import timm

        if not timm.is_model(arch):
            raise ValueError(f"unknown timm model {arch!r}")
        module = timm.models.model_entrypoint(arch).__module__
    return "vit" if module in TIMM_VIT_MODULES else "cnn"


def timm_architecture(key: str, name: str) -> RangeCheck:
    """A check that ``name`` is one of timm's architectures, with or without a ``.tag`` of
    pretrained weights; Hugging Face hub names and an unknown list (no timm) pass."""
    known = timm_model_names()
    if not isinstance(name, str) or not name:
        return (key, name, False, "a timm architecture name (see timm.list_models())")
    ok = not known or name.startswith(("hf-hub:", "hf_hub:")) or name.split(".")[0] in known
    return (key, name, ok, "a timm architecture name (see timm.list_models())")
