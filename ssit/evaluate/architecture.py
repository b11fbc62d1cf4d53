"""Which backbone an encoder under grading is: its checkpoint's record first, the config second.

A training checkpoint records its backbone (``config.backbone``; ``config.model`` in checkpoints
written before backbones were configurable) and a file written by ``ssit export`` records it in
its metadata. With ``encoder.backbone: auto`` (the default) that record wins over the grading
config's ``encoder.arch`` and ``encoder.model_kwargs``, which are then only defaults: for a
random encoder and for checkpoints that record nothing (the authors' files, plain state dicts).
Settings the user names explicitly (on the launcher's command line) are kept over the record,
and the weights must still fit them. ``encoder.backbone: vit`` or ``cnn`` takes ``arch`` and
``model_kwargs`` exactly as configured. The input size always comes from the grading config.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ssit.backbones.checkpoint_error import CheckpointError
from ssit.backbones.config import BACKBONE_CONFIGS, BackboneConfig
from ssit.backbones.names import timm_backbone_name
from ssit.evaluate.config import AUTO_BACKBONE, RANDOM_ENCODER, EncoderConfig
from ssit.train.checkpoint import ZIP_MAGIC, verify_or_warn

# The first byte of a pickle stream of protocol 2 or later (torch's legacy format).
PICKLE_PROTOCOL = b"\x80"

LOGGER = logging.getLogger(__name__)


class EncoderError(ValueError):
    """An encoder that cannot be built; one line for the user."""


@dataclass(frozen=True)
class EncoderSource:
    """A checkpoint or exported file, read once: its contents and the backbone it records."""

    path: Path
    contents: Mapping[str, Any]
    recorded: BackboneConfig | None


def exported_metadata(path: str | Path) -> dict[str, str]:
    """The metadata stored in a ``.safetensors`` file (empty when it has none)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except Exception as error:  # safetensors raises its own error types for malformed files
        raise EncoderError(f"cannot read {path}: {error}") from None


def recorded_in_export(metadata: Mapping[str, str]) -> BackboneConfig | None:
    """The backbone an exported file's metadata describes (files without ``backbone`` are ViTs)."""
    from ssit.backbones.registry import BACKBONE_KINDS, backbone_kind

    if not metadata.get("arch"):
        return None
    name = metadata.get("backbone", "vit")
    if name not in BACKBONE_KINDS:
        raise EncoderError(f"the exported file names an unknown backbone {name!r}")
    return backbone_kind(name).config_from_metadata(metadata)


def load_encoder_source(checkpoint: str) -> EncoderSource | None:
    """Read ``checkpoint`` (None for ``random``); raise EncoderError when it cannot be read."""
    if checkpoint == RANDOM_ENCODER:
        return None
    from ssit.backbones.extract import saved_backbone_config
    from ssit.backbones.weights import read_checkpoint

    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise EncoderError(f"encoder checkpoint {path} does not exist")
    try:
        if path.suffix != ".safetensors":
            check_torch_file(path)
        contents = read_checkpoint(path)
        if path.suffix == ".safetensors":
            recorded = recorded_in_export(exported_metadata(path))
        else:
            recorded = saved_backbone_config(contents)
    except (CheckpointError, ValueError, KeyError) as error:
        raise EncoderError(f"cannot use {path.name}: {error}") from None
    return EncoderSource(path, contents, recorded)


def check_torch_file(path: Path) -> None:
    """Refuse, in words, a file that ``torch.save`` did not write, and a checkpoint whose
    SHA-256 trailer does not match (bit rot, truncation); raise CheckpointError.

    Zip archives (torch's format since 1.6) go through the checksum check (a warning is logged
    when they have no trailer); files in torch's older pickle format start with the pickle
    protocol opcode and are left to the restricted reader.
    """
    try:
        with open(path, "rb") as stream:
            head = stream.read(len(ZIP_MAGIC))
    except OSError as error:
        raise CheckpointError(f"cannot read {path.name}: {error.strerror or error}") from None
    if head == ZIP_MAGIC or not head:
        verify_or_warn(path)
    elif not head.startswith(PICKLE_PROTOCOL):
        raise CheckpointError(f"{path.name} is not a checkpoint (not a file written by "
                              "torch.save)")


def timm_model_kwargs(cfg: EncoderConfig | None, explicit: Collection[str] | None = None
                      ) -> dict[str, Any]:
    """The model_kwargs a ``timm:<name>`` encoder is built with: all of ``cfg``'s, or with
    ``backbone: auto`` and ``explicit`` given (at submission) only those set explicitly, as the
    config's are otherwise defaults for checkpoints without record."""
    if cfg is None:
        return {}
    if explicit is None or cfg.backbone != AUTO_BACKBONE or "model_kwargs" in explicit:
        return dict(cfg.model_kwargs)
    return {key: value for key, value in cfg.model_kwargs.items()
            if f"model_kwargs.{key}" in explicit}


def backbone_name_of(arch: str) -> str:
    """The backbone kind of a timm architecture (see ``ssit.backbones.timm_backbone_name``)."""
    try:
        return timm_backbone_name(arch)
    except ValueError as error:
        raise EncoderError(str(error)) from None


def backbone_config(cfg: EncoderConfig, recorded: BackboneConfig | None = None) -> BackboneConfig:
    """The backbone section that ``cfg`` describes as configured (``auto``: kind from the arch).

    A ``recorded`` section of the same kind keeps its other fields (the hybrid's CNN branch).
    """
    name = cfg.backbone
    if name == AUTO_BACKBONE:
        name = backbone_name_of(cfg.arch)
    values = {"arch": cfg.arch, "img_size": cfg.img_size, "kwargs": dict(cfg.model_kwargs)}
    if recorded is not None and recorded.name == name:
        return dataclasses.replace(recorded, **values)
    return BACKBONE_CONFIGS[name](**values)


def resolve_encoder(
    cfg: EncoderConfig, source: EncoderSource | None, explicit: Collection[str] = ()
) -> EncoderConfig:
    """``cfg`` with a concrete backbone kind and the checkpoint's recorded architecture.

    ``explicit`` names the encoder keys the user set on purpose (``arch``, ``model_kwargs`` or
    ``model_kwargs.<name>``); they are kept over the record. A concrete ``cfg.backbone``, a
    random encoder and a checkpoint without record keep ``cfg`` as it is.
    """
    if cfg.backbone != AUTO_BACKBONE:
        return cfg
    recorded = source.recorded if source is not None else None
    if recorded is None:
        return dataclasses.replace(cfg, backbone=backbone_config(cfg).name)
    saved_arch = str(getattr(recorded, "arch", cfg.arch))
    saved_kwargs = dict(getattr(recorded, "kwargs", {}))
    arch = cfg.arch if "arch" in explicit else saved_arch
    chosen = {key: value for key, value in cfg.model_kwargs.items()
              if "model_kwargs" in explicit or f"model_kwargs.{key}" in explicit}
    if arch != saved_arch and (name := backbone_name_of(arch)) != recorded.name:
        raise EncoderError(f"{source.path.name} holds a {recorded.name} backbone ({saved_arch}), "
                           f"not a {name} like {arch}")
    resolved = dataclasses.replace(cfg, backbone=recorded.name, arch=arch,
                                   model_kwargs={**saved_kwargs, **chosen})
    if arch != saved_arch or any(saved_kwargs.get(k) != v for k, v in chosen.items()):
        LOGGER.warning("encoder: %s records %s %s; grading %s %s as set explicitly",
                       source.path.name, saved_arch, saved_kwargs, arch, resolved.model_kwargs)
    return resolved


def check_encoder(cfg: EncoderConfig, source: EncoderSource | None) -> None:
    """Build the resolved encoder of ``cfg`` on the meta device and check the weights fit it.

    Raises EncoderError with one line naming what the checkpoint holds.
    """
    import torch

    from ssit.backbones.extract import backbone_state_dict, fit_backbone_state
    from ssit.backbones.registry import backbone_kind
    from ssit.backbones.weights import load_into

    resolved = resolve_encoder(cfg, source)
    backbone = backbone_config(resolved, source.recorded if source is not None else None)
    try:
        with torch.device("meta"):
            model = backbone_kind(backbone.name).build(backbone)
    except (ValueError, TypeError, RuntimeError) as error:
        raise EncoderError(f"encoder {resolved.arch}: {error}") from None
    if source is None:
        return
    held = "no record of its architecture"
    if source.recorded is not None:
        held = (f"a {getattr(source.recorded, 'arch', source.recorded.name)} with "
                f"{getattr(source.recorded, 'kwargs', {})}")
    what = (f"encoder {resolved.arch} with {resolved.model_kwargs} ({source.path.name} holds "
            f"{held})")
    try:
        state = fit_backbone_state(backbone_state_dict(source.contents, resolved.branch), model,
                                   backbone)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # copying into a meta model is a no-op, as intended
            load_into(model, state, strict=True, what=what)
    except CheckpointError as error:
        raise EncoderError(str(error)) from None
