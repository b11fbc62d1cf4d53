"""``ssit export``: a checkpoint's backbone as a timm state dict in a ``.safetensors`` file.

The file loads with ``timm.create_model(arch, pretrained=True, num_classes=0,
pretrained_cfg_overlay=dict(file=FILE))`` (plus any non-default ``model_kwargs`` stored in it).
Its metadata records ``arch``, ``img_size``, ``model_kwargs`` (JSON), ``branch`` and ``source``.
Heavy modules are imported inside the functions so that ``ssit --help`` stays fast.
"""

from __future__ import annotations

import argparse
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


def saved_model_config(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The ``model`` section of the config stored in a training checkpoint (empty if none)."""
    config = checkpoint.get("config")
    model = config.get("model") if isinstance(config, Mapping) else None
    return dict(model) if isinstance(model, Mapping) else {}


def export_backbone(
    checkpoint: str | Path,
    out: str | Path,
    *,
    branch: str = "query",
    arch: str | None = None,
    img_size: int | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
) -> Path:
    """Write one branch's ViT of ``checkpoint`` to ``out`` (atomically) and return the path.

    ``arch``, ``img_size`` and ``model_kwargs`` default to those stored in the checkpoint's
    config; the weights are loaded strictly into that ViT before writing, so a file that
    timm cannot load is never produced.
    """
    from safetensors.torch import save_file

    from ssit.model.backbone import backbone_state_dict, create_vit
    from ssit.model.checkpoint import load_into, read_checkpoint

    out = Path(out)
    if out.suffix != ".safetensors":
        raise ExportError(f"--out must end in .safetensors, got {out.name}")
    loaded = read_checkpoint(checkpoint)
    saved = saved_model_config(loaded)
    arch = arch or saved.get("arch")
    if not arch:
        raise ExportError(f"{checkpoint} does not record its architecture; pass --arch")
    size = int(img_size or saved.get("img_size") or 224)
    kwargs = {**(saved.get("encoder_kwargs") or {}), **(model_kwargs or {})}
    model = create_vit(arch, size, encoder_kwargs=kwargs)
    load_into(model, backbone_state_dict(loaded, branch), strict=True, what=f"{arch} backbone")
    tensors = {key: value.detach().contiguous() for key, value in model.state_dict().items()}
    metadata = {"arch": arch, "img_size": str(size), "model_kwargs": json.dumps(kwargs),
                "branch": branch, "source": Path(checkpoint).name, "format": "timm"}
    with replacing(out) as partial:
        save_file(tensors, str(partial), metadata=metadata)
    LOGGER.info("wrote %s (%s %s branch, %d tensors)", out, arch, branch, len(tensors))
    return out


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``ssit export``."""
    parser.add_argument("checkpoint", type=Path, help="SSiT training checkpoint (.pt)")
    parser.add_argument("--out", type=Path, required=True, help="file to write (.safetensors)")
    parser.add_argument("--branch", choices=("query", "momentum"), default="query",
                        help="which encoder to export (default: query)")
    parser.add_argument("--arch", help="timm architecture (default: from the checkpoint)")
    parser.add_argument("--img-size", type=int,
                        help="input size of the exported model (default: from the checkpoint)")


def run_export(args: argparse.Namespace) -> int:
    """Run ``ssit export`` and print where the file went and how to load it."""
    out = export_backbone(args.checkpoint, args.out, branch=args.branch, arch=args.arch,
                          img_size=args.img_size)
    from safetensors import safe_open

    with safe_open(str(out), framework="pt") as handle:
        metadata = handle.metadata()
    extra = json.loads(metadata["model_kwargs"])
    kwargs = "".join(f", {key}={value!r}" for key, value in extra.items())
    print(f"wrote {out}")
    print(f"load with: timm.create_model({metadata['arch']!r}, pretrained=True, num_classes=0, "
          f"pretrained_cfg_overlay=dict(file={str(out)!r}){kwargs})")
    return 0


def export_errors() -> tuple[type[BaseException], ...]:
    """Exceptions of ``ssit export`` that are the user's fault."""
    from ssit.model.checkpoint import CheckpointError

    return ExportError, CheckpointError, ValueError
