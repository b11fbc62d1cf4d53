"""Encoders published by other projects, brought to the layout our loaders read.

- **The SSiT authors' files.** ``epoch_N.pt`` is a whole pickled model (``torch.save(model)`` of
  their ``SSiT`` module, encoders of their ``VisionTransformer`` class, SyncBatchNorm layers).
  The restricted unpickler of :mod:`ssit.backbones.weights` turns it into a tree of inert
  stand-ins; :func:`module_state_dict` walks that tree (``_parameters``, ``_buffers``,
  ``_modules``) into the state dict the model would have given, so the encoders appear under
  ``base_encoder.*`` and ``momentum_encoder.*`` as in our checkpoints. Their ``checkpoint.pt``
  (``state_dict`` with ``module.`` prefixes) needs nothing beyond the prefix removal.
- **RETFound** (MAE pre-training of a ViT-L/16): a dict whose ``model`` holds timm ViT names
  plus the MAE decoder (``decoder_*``) and ``mask_token``; :func:`without_pretraining_extras`
  drops the latter two.
- **timm models by name**: ``timm:<name>`` is a pseudo-checkpoint holding timm's ImageNet
  weights of ``<name>`` (downloaded or taken from the Hugging Face cache by timm), and
  ``timm:<name>=<file>`` the same model with the weights of a local file timm can read
  (``.safetensors``, ``.pth``, ``.bin``). It records its backbone kind and architecture.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch

from ssit.backbones.names import TIMM_PREFIX
from ssit.backbones.weights import CheckpointError, ForeignObject
from ssit.error_text import first_line

logger = logging.getLogger(__name__)

MAE_EXTRAS = ("decoder_", "mask_token")
_CONTAINER_KEYS = ("model", "state_dict")


def is_module_stand_in(value: Any) -> bool:
    """Whether ``value`` is a stand-in for a pickled ``nn.Module`` (it has ``_modules``)."""
    return (isinstance(value, ForeignObject) and isinstance(value.state, Mapping)
            and isinstance(value.state.get("_modules"), Mapping))


def module_state_dict(module: ForeignObject, prefix: str = "") -> dict[str, torch.Tensor]:
    """The state dict of a pickled ``nn.Module`` read as stand-ins (non-persistent buffers out)."""
    if not is_module_stand_in(module):
        raise CheckpointError(f"{module!r} is not a pickled torch module")
    state = module.state
    tensors: dict[str, torch.Tensor] = {}
    for name, value in (state.get("_parameters") or {}).items():
        if isinstance(value, torch.Tensor):
            tensors[prefix + name] = value.detach()
    transient = set(state.get("_non_persistent_buffers_set") or ())
    for name, value in (state.get("_buffers") or {}).items():
        if isinstance(value, torch.Tensor) and name not in transient:
            tensors[prefix + name] = value
    for name, child in state["_modules"].items():
        if child is not None:
            tensors.update(module_state_dict(child, f"{prefix}{name}."))
    return tensors


def normalise_foreign(loaded: Any) -> Any:
    """A whole pickled model becomes ``{"model": state dict}``, also under a container key.

    Anything else is returned unchanged.
    """
    if is_module_stand_in(loaded):
        logger.info("checkpoint holds a whole pickled %s; reading its weights only",
                    loaded.foreign_class)
        return {"model": module_state_dict(loaded)}
    if isinstance(loaded, Mapping):
        for key in _CONTAINER_KEYS:
            if is_module_stand_in(loaded.get(key)):
                return {**loaded, key: module_state_dict(loaded[key])}
    return loaded


def without_pretraining_extras(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` without an MAE decoder and mask token (RETFound's pre-training checkpoints)."""
    if "mask_token" not in state and not any(key.startswith("decoder_") for key in state):
        return state
    dropped = [key for key in state if key.startswith(MAE_EXTRAS)]
    logger.info("dropping %d MAE pre-training entries (decoder, mask token)", len(dropped))
    return {key: value for key, value in state.items() if not key.startswith(MAE_EXTRAS)}


def parse_timm_spec(spec: str) -> tuple[str, str | None]:
    """``timm:<name>[=<file>]`` -> (name, file or None); CheckpointError when malformed."""
    if not spec.startswith(TIMM_PREFIX):
        raise CheckpointError(f"{spec!r} is not of the form timm:<name>[=<file>]")
    name, sep, file = spec[len(TIMM_PREFIX):].partition("=")
    name = name.strip()
    if not name or (sep and not file.strip()):
        raise CheckpointError(f"{spec!r} is not of the form timm:<name>[=<file>]")
    return name, file.strip() or None


def timm_checkpoint(spec: str) -> dict[str, Any]:
    """The pseudo-checkpoint ``timm:<name>[=<file>]``: timm's weights and the backbone record.

    Raises CheckpointError with one line when the model is unknown or its weights cannot be
    loaded here (no internet and no cached copy: give a local file with ``=<file>``).
    """
    import timm

    from ssit.backbones.registry import timm_backbone_name

    name, file = parse_timm_spec(spec)
    try:
        kind = timm_backbone_name(name)
    except ValueError as error:
        raise CheckpointError(f"{spec}: {error}") from None
    options: dict[str, Any] = {"pretrained": True, "num_classes": 0}
    if file is not None:
        from pathlib import Path

        if not Path(file).expanduser().is_file():
            raise CheckpointError(f"{spec}: weight file {file} does not exist")
        options["pretrained_cfg_overlay"] = {"file": str(Path(file).expanduser())}
    try:
        model = timm.create_model(name, **options)
    except Exception as error:  # hub, network and file errors come in many types
        where = f"from {file}" if file else "(no internet or cached copy here?)"
        raise CheckpointError(
            f"{spec}: cannot load the pre-trained weights of {name} {where}: "
            f"{first_line(error)}; give a local file as timm:{name}=<file>") from None
    input_size = model.pretrained_cfg.get("input_size", (3, 224, 224))
    logger.info("timm %s: pre-trained weights from %s", name, file or "timm's hub")
    backbone = {"name": kind, "arch": name, "img_size": int(input_size[-1])}
    return {"model": model.state_dict(), "config": {"backbone": backbone},
            "source": spec}
