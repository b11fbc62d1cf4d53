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
  (``.safetensors``, ``.pth``, ``.bin``; tensors only). The model is built with the grading's
  ``model_kwargs`` and the weights must fill it (:func:`fill_model`); a partial load is an
  explicit choice. It records its backbone kind and architecture.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from pathlib import Path
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


def module_state_dict(module: ForeignObject, prefix: str = "",
                      _ancestors: tuple[int, ...] = ()) -> dict[str, torch.Tensor]:
    """The state dict of a pickled ``nn.Module`` read as stand-ins (non-persistent buffers out).

    Raises CheckpointError when a module contains itself (a cyclic module graph).
    """
    if not is_module_stand_in(module):
        raise CheckpointError(f"{module!r} is not a pickled torch module")
    if id(module) in _ancestors:
        where = prefix.rstrip(".") or "the model"
        raise CheckpointError(f"the pickled model's module graph is cyclic ({where} contains "
                              "a module that contains it)")
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
            tensors.update(module_state_dict(child, f"{prefix}{name}.",
                                             (*_ancestors, id(module))))
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


def timm_checkpoint(spec: str, model_kwargs: Mapping[str, Any] | None = None,
                    allow_partial: bool = False) -> dict[str, Any]:
    """The pseudo-checkpoint ``timm:<name>[=<file>]``: timm's weights and the backbone record.

    The model is built with ``model_kwargs`` (the file's architecture: depth, width, ...) and
    the weights must fill it: every parameter found, of the same shape. Classifier weights,
    which a backbone has no place for, and an MAE decoder are dropped. Anything else missing or
    left over raises CheckpointError (one line) unless ``allow_partial``, which loads what fits
    and logs what stays random. Also raises CheckpointError when the model is unknown or its
    weights cannot be loaded here (no internet and no cached copy: give ``=<file>``).
    """
    import timm

    from ssit.backbones.registry import timm_backbone_name

    name, file = parse_timm_spec(spec)
    try:
        kind = timm_backbone_name(name)
    except ValueError as error:
        raise CheckpointError(f"{spec}: {error}") from None
    path = Path(file).expanduser() if file is not None else None
    if path is not None and not path.is_file():
        raise CheckpointError(f"{spec}: weight file {file} does not exist")
    kwargs = dict(model_kwargs or {})
    try:
        model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    except Exception as error:  # timm raises TypeError, ValueError, AssertionError... for options
        raise CheckpointError(f"{spec}: cannot create {name} with model_kwargs {kwargs}: "
                              f"{first_line(error)}") from None
    try:
        state = _pretrained_state(name, path)
    except Exception as error:  # hub, network and file errors come in many types
        where = f"from {file}" if file else "(no internet or cached copy here?)"
        raise CheckpointError(
            f"{spec}: cannot load the pre-trained weights of {name} {where}: "
            f"{first_line(error)}; give a local file as timm:{name}=<file>") from None
    fill_model(model, _as_timm_layout(state, model), spec, allow_partial)
    logger.info("timm %s: pre-trained weights from %s", name, file or "timm's hub")
    backbone = {"name": kind, "arch": name, "img_size": _input_size(model),
                "kwargs": {key: value for key, value in kwargs.items() if key != "img_size"}}
    return {"model": model.state_dict(), "config": {"backbone": backbone}, "source": spec}


def _pretrained_state(name: str, path: Path | None) -> dict[str, torch.Tensor]:
    """The weights of ``path`` (read as timm reads files, tensors only) or timm's own."""
    import timm

    if path is not None:
        return dict(timm.models.load_state_dict(str(path)))
    return timm.create_model(name, pretrained=True).state_dict()


def _as_timm_layout(state: Mapping[str, Any], model: torch.nn.Module) -> dict[str, Any]:
    """``state`` through the conversion timm applies to its pre-trained files of ``model``'s
    family (e.g. position embeddings resampled), without MAE extras and classifier weights."""
    state = without_pretraining_extras(dict(state))
    convert = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if callable(convert):
        state = dict(convert(state, model))
    own = model.state_dict()
    classifiers = model.pretrained_cfg.get("classifier") or ()
    prefixes = tuple(f"{name}." for name in (
        [classifiers] if isinstance(classifiers, str) else classifiers))
    dropped = [key for key in state if key.startswith(prefixes) and key not in own] if prefixes \
        else []
    if dropped:
        logger.info("dropping the classifier weights %s (a backbone has no classifier)",
                    ", ".join(dropped))
    return {key: value for key, value in state.items() if key not in dropped}


def fill_model(model: torch.nn.Module, state: Mapping[str, Any], what: str,
               allow_partial: bool) -> None:
    """Load ``state`` into ``model``, which it must fill: every entry found, shapes equal.

    Raises CheckpointError (one line) naming what is missing, left over or of another shape;
    with ``allow_partial`` loads the entries that fit and logs what stays random instead.
    """
    own = model.state_dict()
    missing = [key for key in own if key not in state]
    left_over = [key for key in state if key not in own]
    reshaped = [key for key in own if key in state
                and tuple(getattr(state[key], "shape", ())) != tuple(own[key].shape)]
    problems = [f"{len(keys)} {label} ({_examples(keys, state, own)})"
                for keys, label in ((missing, "missing"), (left_over, "left over"),
                                    (reshaped, "of another shape")) if keys]
    if problems and not allow_partial:
        raise CheckpointError(
            f"{what}: the weights do not fit the model: {', '.join(problems)}; give the file's "
            "architecture in encoder.model_kwargs (e.g. depth, embed_dim, num_heads) or set "
            "encoder.allow_partial_load=true to load only what fits (the rest stays random)")
    if problems:
        left_random = [*missing, *reshaped]
        logger.warning("%s: partial load (encoder.allow_partial_load): %d of %d entries stay "
                       "randomly initialised: %s; %d entries of the file are not used: %s",
                       what, len(left_random), len(own), ", ".join(left_random) or "none",
                       len(left_over), ", ".join(left_over) or "none")
    fitting = {key: value for key, value in state.items()
               if key in own and key not in reshaped}
    model.load_state_dict(fitting, strict=False)


def _examples(keys: list[str], state: Mapping[str, Any], own: Mapping[str, Any]) -> str:
    shown = [f"{key} {tuple(state[key].shape)} vs {tuple(own[key].shape)}"
             if key in state and key in own else key for key in keys[:3]]
    return "e.g. " + ", ".join(shown)


def _input_size(model: torch.nn.Module) -> int:
    patch_embed = getattr(model, "patch_embed", None)
    size = getattr(patch_embed, "img_size", None)
    if size:
        return int(size[0])
    return int(model.pretrained_cfg.get("input_size", (3, 224, 224))[-1])
