"""``ssit export``: a checkpoint's backbone as a timm state dict in a ``.safetensors`` file.

Any backbone kind (ViT or CNN) of any method's checkpoint. The file loads with
``timm.create_model(arch, pretrained=True, num_classes=0, pretrained_cfg_overlay=dict(file=FILE))``
(plus the ViT's ``img_size`` and any non-default ``model_kwargs`` stored in it). Its metadata
records ``backbone`` (the kind), ``arch``, ``img_size``, ``model_kwargs`` (JSON), ``branch`` and
``source``. Heavy modules are imported inside the functions so that ``ssit --help`` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ssit.atomic_write import replacing

LOGGER = logging.getLogger(__name__)
EXPORT_HELP = "write the query (or momentum) backbone of a checkpoint as a timm .safetensors file"


class ExportError(ValueError):
    """A checkpoint that cannot be exported as asked; one line for the user."""


def export_backbone(
    checkpoint: str | Path,
    out: str | Path,
    *,
    branch: str = "auto",
    arch: str | None = None,
    img_size: int | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
) -> Path:
    """Write one branch's backbone of ``checkpoint`` to ``out`` (atomically) and return the path.

    The backbone kind, ``arch``, ``img_size`` and ``model_kwargs`` default to those recorded in
    the checkpoint's config (a checkpoint without record needs ``arch``); the weights are loaded
    strictly into that backbone before writing, so a file that timm cannot load is never
    produced. A ViT exported at another ``img_size`` gets its position embeddings resampled.
    """
    from safetensors.torch import save_file

    from ssit.backbones import (
        BACKBONE_CONFIGS,
        backbone_kind,
        extract_backbone,
        read_checkpoint,
        saved_backbone_config,
    )
    from ssit.backbones.extract import resolve_branch
    from ssit.evaluate.architecture import backbone_name_of

    out = Path(out)
    if out.suffix != ".safetensors":
        raise ExportError(f"--out must end in .safetensors, got {out.name}")
    loaded = read_checkpoint(checkpoint)
    saved = saved_backbone_config(loaded)
    if saved is None:
        if not arch:
            raise ExportError(f"{checkpoint} does not record its architecture; pass --arch")
        saved = BACKBONE_CONFIGS[backbone_name_of(arch)](arch=arch)
    cfg = dataclasses.replace(
        saved, arch=arch or saved.arch, img_size=int(img_size or saved.img_size),
        kwargs={**saved.kwargs, **(model_kwargs or {})},
    )
    kind = backbone_kind(cfg.name)
    branch = resolve_branch(loaded, branch)
    model = extract_backbone(loaded, cfg, branch)
    tensors = {key: value.detach().contiguous() for key, value in model.state_dict().items()}
    metadata = {"backbone": kind.name, **kind.export_metadata(cfg), "branch": branch,
                "source": Path(checkpoint).name, "format": "timm"}
    with replacing(out) as partial:
        save_file(tensors, str(partial), metadata=metadata)
    LOGGER.info("wrote %s (%s %s branch, %d tensors)", out, cfg.arch, branch, len(tensors))
    return out


def timm_load_call(path: str | Path, metadata: Mapping[str, str]) -> str:
    """The call that loads an exported file, as Python source.

    timm models load with ``timm.create_model``; backbones of our own (the MsSSL hybrid) are
    rebuilt from the file's metadata by their kind.
    """
    name = metadata.get("backbone", "vit")
    if name not in ("vit", "cnn"):
        return f"ssit.backbones.load_exported_backbone({str(path)!r})"
    extra: dict[str, Any] = {}
    if metadata.get("backbone", "vit") == "vit":
        extra["img_size"] = int(metadata["img_size"])
    extra.update(json.loads(metadata.get("model_kwargs") or "{}"))
    kwargs = "".join(f", {key}={value!r}" for key, value in extra.items())
    return (f"timm.create_model({metadata['arch']!r}, pretrained=True, num_classes=0, "
            f"pretrained_cfg_overlay=dict(file={str(path)!r}){kwargs})")


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``ssit export``."""
    parser.add_argument("checkpoint", type=Path, help="training checkpoint (.pt) of any method")
    parser.add_argument("--out", type=Path, required=True, help="file to write (.safetensors)")
    parser.add_argument("--branch", choices=("auto", "query", "momentum"), default="auto",
                        help="which encoder to export (default: auto, the one the "
                        "checkpoint's method declares, e.g. DINO's teacher; else query)")
    parser.add_argument("--arch", help="timm architecture (default: from the checkpoint)")
    parser.add_argument("--img-size", type=int,
                        help="input size of the exported model (default: from the checkpoint)")


def run_export(args: argparse.Namespace) -> int:
    """Run ``ssit export`` and print where the file went and how to load it."""
    out = export_backbone(args.checkpoint, args.out, branch=args.branch, arch=args.arch,
                          img_size=args.img_size)
    from ssit.evaluate.architecture import exported_metadata

    print(f"wrote {out}")
    print(f"load with: {timm_load_call(out, exported_metadata(out))}")
    return 0


def export_errors() -> tuple[type[BaseException], ...]:
    """Exceptions of ``ssit export`` that are the user's fault."""
    from ssit.backbones import CheckpointError

    return ExportError, CheckpointError, ValueError
