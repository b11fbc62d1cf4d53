"""Reading model weights from checkpoints, ours and other projects'.

Accepted inputs: a path to a ``torch.save`` file (or a ``.safetensors`` file), a ``timm:<name>``
pseudo-checkpoint (see :mod:`ssit.backbones.foreign`), or an in-memory mapping. The model
weights are found as the mapping itself, or under ``"model"`` (our training checkpoints,
RETFound's) or ``"state_dict"`` (the SSiT authors' checkpoints). Wrapper prefixes added by
DistributedDataParallel (``module.``) and ``torch.compile`` (``_orig_mod.``) are removed.

Files that hold more than tensors (RNG states, argparse namespaces, whole pickled models) are
read with a restricted unpickler: only tensor and container types are rebuilt; every other
class a file names becomes an inert :class:`ForeignObject` that records its constructor
arguments and state. No code of the file's classes runs, and their modules need not exist.
"""

from __future__ import annotations

import _compat_pickle
import logging
import pickle
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ssit.backbones.checkpoint_error import CheckpointError
from ssit.error_text import first_line

logger = logging.getLogger(__name__)

CheckpointSource = str | Path | Mapping[str, Any]

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_CONTAINER_KEYS = ("model", "state_dict")


class ForeignObject:
    """Stand-in for an instance of a class that a restricted load does not rebuild.

    ``args`` are the arguments the pickle called the class with and ``state`` what it set on
    the instance (for a pickled ``nn.Module``: its ``__dict__`` with ``_parameters``,
    ``_buffers`` and ``_modules``). ``foreign_class`` is the ``module.name`` the file named.
    """

    foreign_class: ClassVar[str] = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> ForeignObject:
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __call__(self, *args: Any, **kwargs: Any) -> ForeignObject:
        """A call the pickle makes on a stand-in (e.g. a function it got by name) stays inert."""
        return type(self)(*args)

    def __repr__(self) -> str:
        return f"<foreign {self.foreign_class}>"


def _foreign_reconstructor(cls: Any, base: Any, state: Any) -> ForeignObject:
    """What ``copyreg._reconstructor`` becomes: an inert object, never the base's constructor."""
    if isinstance(cls, type) and issubclass(cls, ForeignObject):
        return cls()
    return ForeignObject()


def _allowed_globals() -> dict[str, Any]:
    """The globals torch's own weights-only loader rebuilds (tensors, dtypes, containers)."""
    from torch._weights_only_unpickler import _get_allowed_globals

    return dict(_get_allowed_globals())


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds only tensor and container types; other classes are stand-ins.

    ``foreign_classes`` collects the ``module.name`` of every stand-in made while loading.
    """

    _stand_ins: ClassVar[dict[str, type[ForeignObject]]] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.allowed = _allowed_globals()
        self.foreign_classes: set[str] = set()

    def find_class(self, module: str, name: str) -> Any:
        # protocol 2 files name Python 2 modules (``__builtin__.set``), as pickle's own does
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        qualified = f"{module}.{name}"
        if qualified in self.allowed:
            return self.allowed[qualified]
        if (module, name) == ("copyreg", "_reconstructor"):
            return _foreign_reconstructor
        self.foreign_classes.add(qualified)
        return self.stand_in(qualified)

    @classmethod
    def stand_in(cls, qualified: str) -> type[ForeignObject]:
        """The (cached) ForeignObject subclass standing for the class ``qualified``."""
        if qualified not in cls._stand_ins:
            module, _, name = qualified.rpartition(".")
            cls._stand_ins[qualified] = type(name, (ForeignObject,), {
                "foreign_class": qualified, "__module__": f"foreign:{module}"})
        return cls._stand_ins[qualified]


RESTRICTED_PICKLE = types.SimpleNamespace(
    __name__="restricted_pickle", Unpickler=RestrictedUnpickler, load=pickle.load,
    loads=pickle.loads, dump=pickle.dump, dumps=pickle.dumps, Pickler=pickle.Pickler,
    UnpicklingError=pickle.UnpicklingError, HIGHEST_PROTOCOL=pickle.HIGHEST_PROTOCOL,
    DEFAULT_PROTOCOL=pickle.DEFAULT_PROTOCOL,
)


def restricted_load(path: str | Path) -> Any:
    """``torch.load`` of ``path`` onto the CPU through :class:`RestrictedUnpickler`."""
    return torch.load(path, map_location="cpu", weights_only=False,
                      pickle_module=RESTRICTED_PICKLE)


def read_checkpoint(path: str | Path) -> Mapping[str, Any]:
    """Load a checkpoint file (or a ``timm:<name>`` pseudo-checkpoint) onto the CPU.

    Files are first read with ``weights_only=True``; files holding other Python objects are
    then read with :func:`restricted_load`, never with full unpickling. A whole pickled model
    becomes ``{"model": <its state dict>}`` and other projects' layouts are brought to ours
    (:func:`ssit.backbones.foreign.normalise_foreign`).
    """
    from ssit.backbones.foreign import TIMM_PREFIX, normalise_foreign, timm_checkpoint

    if str(path).startswith(TIMM_PREFIX):
        return timm_checkpoint(str(path))
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
            loaded = restricted_load(path)
        except Exception as error:  # a malformed pickle can raise nearly anything
            raise CheckpointError(f"cannot read checkpoint {path}: {first_line(error)}") from None
        logger.info("checkpoint %s holds Python objects; read without running their code", path)
    except Exception as error:  # torch raises many types (IndexError, EOFError...) for garbage
        raise CheckpointError(f"cannot read checkpoint {path}: {first_line(error)}") from None
    loaded = normalise_foreign(loaded)
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
