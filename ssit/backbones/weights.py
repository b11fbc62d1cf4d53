"""Reading model weights from checkpoints, ours and the SSiT authors'.

Accepted inputs: a path to a ``torch.save`` file (or a ``.safetensors`` file), or an in-memory
mapping. The model weights are found as the mapping itself, or under ``"model"`` (our training
checkpoints) or ``"state_dict"`` (the authors' checkpoints). Wrapper prefixes added by
DistributedDataParallel (``module.``) and ``torch.compile`` (``_orig_mod.``) are removed.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ssit.error_text import first_line

logger = logging.getLogger(__name__)

CheckpointSource = str | Path | Mapping[str, Any]

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_CONTAINER_KEYS = ("model", "state_dict")


class CheckpointError(ValueError):
    """A checkpoint that cannot be written, read or used (e.g. does not fit the model or the run).

    The message is one line.
    """


def read_checkpoint(path: str | Path) -> Mapping[str, Any]:
    """Load a checkpoint file onto the CPU.

    Files are first read with ``weights_only=True``; files holding other Python objects
    (e.g. RNG states) are then read with full unpickling, so only load files you trust.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
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
            loaded = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as error:
            raise CheckpointError(f"cannot read checkpoint {path}: {first_line(error)}") from None
        logger.warning("checkpoint %s holds non-tensor objects; it was unpickled fully", path)
    except Exception as error:  # torch raises many types (IndexError, EOFError...) for garbage
        raise CheckpointError(f"cannot read checkpoint {path}: {first_line(error)}") from None
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
    tensors = {
        _strip_wrapper_prefixes(key): value
        for key, value in state.items()
        if isinstance(value, torch.Tensor)
    }
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
