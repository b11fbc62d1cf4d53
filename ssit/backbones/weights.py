"""Reading model weights from checkpoints, ours and other projects'.

Accepted inputs: a path to a ``torch.save`` file (or a ``.safetensors`` file), a ``timm:<name>``
pseudo-checkpoint (see :mod:`ssit.backbones.foreign`), or an in-memory mapping. The model
weights are found as the mapping itself, or under ``"model"`` (our training checkpoints,
RETFound's) or ``"state_dict"`` (the SSiT authors' checkpoints). Wrapper prefixes added by
DistributedDataParallel (``module.``) and ``torch.compile`` (``_orig_mod.``) are removed.

Files that hold more than tensors (RNG states, argparse namespaces, whole pickled models) are
read with a restricted unpickler (:mod:`ssit.backbones.restricted_pickle`), in every format
torch reads: only tensor and container types are rebuilt; globals that could run code are
refused; every other class a file names becomes an inert :class:`ForeignObject` that records
its constructor arguments and state. No code of the file runs, and its modules need not exist.
"""

from __future__ import annotations

import logging
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ssit.backbones.checkpoint_error import CheckpointError
from ssit.backbones.restricted_pickle import (
    RESTRICTED_PICKLE,
    ForbiddenGlobalError,
    ForeignObject,
    RestrictedUnpickler,
)
from ssit.error_text import first_line

logger = logging.getLogger(__name__)

CheckpointSource = str | Path | Mapping[str, Any]

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_CONTAINER_KEYS = ("model", "state_dict")
_ZIP_MAGIC = b"PK\x03\x04"
# Deeper nesting than any checkpoint needs; deeper contents are refused before anything walks
# them recursively.
MAX_NESTING = 200

__all__ = [
    "RESTRICTED_PICKLE",
    "CheckpointError",
    "ForeignObject",
    "RestrictedUnpickler",
    "checkpoint_state_dict",
    "load_into",
    "read_checkpoint",
    "restricted_load",
]


def restricted_load(path: str | Path) -> Any:
    """``torch.load`` of ``path`` onto the CPU through the restricted pickle module.

    No code of the file runs, whatever its format: TorchScript archives (which ``torch.load``
    would hand to ``torch.jit.load``) and globals that could run code are refused with a
    one-line CheckpointError naming the file.
    """
    if _is_torchscript_archive(path):
        raise CheckpointError(f"refused {path}: it is a TorchScript archive, not a weights file")
    try:
        return torch.load(path, map_location="cpu", weights_only=False,
                          pickle_module=RESTRICTED_PICKLE)
    except ForbiddenGlobalError as error:
        raise CheckpointError(f"refused {path}: it {error} (nothing of it was run)") from None


def _is_torchscript_archive(path: str | Path) -> bool:
    """Whether ``path`` is a zip archive holding TorchScript (its ``constants.pkl``)."""
    with open(path, "rb") as stream:
        if stream.read(len(_ZIP_MAGIC)) != _ZIP_MAGIC:
            return False
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(name.split("/", 1)[-1] == "constants.pkl" for name in names)


def nesting_depth_exceeds(value: Any, limit: int = MAX_NESTING) -> bool:
    """Whether containers (and stand-ins' arguments and state) in ``value`` nest deeper than
    ``limit``; walked without recursion, each object once (cycles end the walk)."""
    seen: set[int] = set()
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if depth > limit:
            return True
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, Mapping):
            children: Any = [*item.keys(), *item.values()]
        elif isinstance(item, list | tuple | set | frozenset):
            children = item
        elif isinstance(item, ForeignObject):
            children = [item.args, item.state]
        else:
            continue
        pending.extend((child, depth + 1) for child in children)
    return False


def read_checkpoint(path: str | Path) -> Mapping[str, Any]:
    """Load a checkpoint file (or a ``timm:<name>`` pseudo-checkpoint) onto the CPU.

    Files are first read with ``weights_only=True``; files holding other Python objects are
    then read with :func:`restricted_load`, never with full unpickling. Contents nested deeper
    than ``MAX_NESTING`` are refused. A whole pickled model becomes
    ``{"model": <its state dict>}`` and other projects' layouts are brought to ours
    (:func:`ssit.backbones.foreign.normalise_foreign`).
    """
    from ssit.backbones.foreign import TIMM_PREFIX, normalise_foreign, timm_checkpoint

    if str(path).startswith(TIMM_PREFIX):
        return timm_checkpoint(str(path))
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if _is_torchscript_archive(path):
        raise CheckpointError(f"refused {path}: it is a TorchScript archive, not a weights file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu")
        except (SafetensorError, OSError) as error:
            raise CheckpointError(f"cannot read checkpoint {path}: {first_line(error)}") from None
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        try:
            loaded = restricted_load(path)
        except CheckpointError:
            raise
        except Exception as error:  # a malformed pickle can raise nearly anything
            raise CheckpointError(f"cannot read checkpoint {path}: {first_line(error)}") from None
        logger.info("checkpoint %s holds Python objects; read without running their code", path)
    except Exception as error:  # torch raises many types (IndexError, EOFError...) for garbage
        raise CheckpointError(f"cannot read checkpoint {path}: {first_line(error)}") from None
    if nesting_depth_exceeds(loaded):
        raise CheckpointError(f"cannot read checkpoint {path}: its contents are nested more "
                              f"than {MAX_NESTING} levels deep")
    try:
        loaded = normalise_foreign(loaded)
    except CheckpointError as error:
        raise CheckpointError(f"cannot read checkpoint {path}: {error}") from None
    if not isinstance(loaded, Mapping):
        raise CheckpointError(f"checkpoint {path} holds a {type(loaded).__name__}, not a mapping")
    return loaded


def _strip_wrapper_prefixes(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix) :], True
    return key


def checkpoint_state_dict(checkpoint: CheckpointSource) -> dict[str, torch.Tensor]:
    """The model weights in ``checkpoint`` with wrapper prefixes removed."""
    loaded = read_checkpoint(checkpoint) if isinstance(checkpoint, str | Path) else checkpoint
    state: Mapping[str, Any] = loaded
    for key in _CONTAINER_KEYS:
        if isinstance(loaded.get(key), Mapping):
            state = loaded[key]
            break
    from ssit.backbones.foreign import without_pretraining_extras

    tensors = without_pretraining_extras({
        _strip_wrapper_prefixes(key): value
        for key, value in state.items()
        if isinstance(value, torch.Tensor)
    })
    if not tensors:
        keys = ", ".join(list(loaded)[:5])
        raise CheckpointError(f"checkpoint holds no model weights (top-level keys: {keys})")
    return tensors


def load_into(model: nn.Module, state: Mapping[str, torch.Tensor], strict: bool, what: str) -> None:
    """``model.load_state_dict(state)`` with one-line ``CheckpointError`` messages."""
    own = model.state_dict()
    mismatched = [
        f"{key} {tuple(value.shape)} vs {tuple(own[key].shape)}"
        for key, value in state.items()
        if key in own and own[key].shape != value.shape
    ]
    if mismatched:
        raise CheckpointError(
            f"checkpoint does not fit the {what}: {len(mismatched)} shape mismatches "
            f"(e.g. {mismatched[0]})"
        )
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if strict and (missing or unexpected):
        raise CheckpointError(
            f"checkpoint does not fit the {what}: {len(missing)} missing keys"
            f"{_examples(missing)}, {len(unexpected)} unexpected keys{_examples(unexpected)}"
        )
    if missing or unexpected:
        logger.warning(
            "loading %s non-strictly: %d missing keys%s, %d unexpected keys%s",
            what,
            len(missing),
            _examples(missing),
            len(unexpected),
            _examples(unexpected),
        )
    model.load_state_dict(state, strict=False)


def _examples(keys: list[str]) -> str:
    return f" (e.g. {', '.join(keys[:3])})" if keys else ""
