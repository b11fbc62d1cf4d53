"""A pickle module for ``torch.load`` that rebuilds only what a checkpoint needs, never runs code.

Every way torch reads a pickle record goes through :class:`RestrictedUnpickler`: its
``Unpickler`` and also its ``load``/``loads``, which torch's legacy (pre-1.6) format uses for
the records around the object (magic number, protocol, system information, storage keys).

A global that the file names is resolved as follows:

- tensor, dtype and container types on torch's weights-only allow-list are rebuilt;
- globals that could run code or touch the system (anything from ``os``, ``subprocess``,
  ``sys``, ``importlib``, ``pickle``, ... and every ``builtins`` name not on the allow-list,
  such as ``eval``, ``exec``, ``getattr`` or ``__import__``) are refused with
  :class:`ForbiddenGlobalError`;
- every other class (a model's or a config's) becomes an inert :class:`ForeignObject` that
  records its constructor arguments and state, so whole pickled models still read.
"""

from __future__ import annotations

import _compat_pickle
import io
import pickle
import types
from typing import Any, BinaryIO, ClassVar

# Top-level modules (or dotted prefixes) whose globals a weights file may never name.
FORBIDDEN_MODULES = frozenset({
    "__builtin__", "_ctypes", "_frozen_importlib", "_frozen_importlib_external", "_imp", "_io",
    "_operator", "_pickle", "_posixsubprocess", "_socket", "_thread", "asyncio", "bdb",
    "builtins", "cloudpickle", "code", "codeop", "copyreg", "ctypes", "dill", "ensurepip",
    "http", "imp", "importlib", "inspect", "io", "joblib", "marshal", "multiprocessing", "nt",
    "operator", "os", "pathlib", "pdb", "pickle", "pip", "pkgutil", "posix", "pty", "pydoc",
    "runpy", "setuptools", "shutil", "signal", "socket", "subprocess", "sys", "tempfile",
    "threading", "timeit", "types", "urllib", "webbrowser", "xmlrpc", "zipimport",
    "numpy.f2py", "numpy.testing", "torch._C", "torch.hub", "torch.jit", "torch.ops",
    "torch.package", "torch.serialization", "torch.utils.cpp_extension",
})


class ForbiddenGlobalError(pickle.UnpicklingError):
    """A pickle names a global that could run code; ``qualified`` is its ``module.name``."""

    def __init__(self, qualified: str) -> None:
        super().__init__(f"refers to {qualified}, which a weights file may not use")
        self.qualified = qualified


class ForeignObject:
    """Stand-in for an instance of a class that a restricted load does not rebuild.

    ``args`` are the arguments the pickle called the class with and ``state`` what it set on
    the instance (for a pickled ``nn.Module``: its ``__dict__`` with ``_parameters``,
    ``_buffers`` and ``_modules``). ``foreign_class`` is the ``module.name`` the file named.
    """

    foreign_class: ClassVar[str] = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> ForeignObject:
        made = super().__new__(cls)
        made.args, made.state = args, None
        return made

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


def is_forbidden(module: str) -> bool:
    """Whether no global of ``module`` (beyond the allow-list) may be named by a weights file."""
    parts = module.split(".")
    prefixes = {".".join(parts[:count]) for count in range(1, len(parts) + 1)}
    return bool(prefixes & FORBIDDEN_MODULES)


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds only tensor and container types; other classes are stand-ins.

    Raises :class:`ForbiddenGlobalError` for a global that could run code.
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
        if is_forbidden(module):
            raise ForbiddenGlobalError(qualified)
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


def restricted_pickle_load(file: BinaryIO, **kwargs: Any) -> Any:
    """``pickle.load`` through :class:`RestrictedUnpickler`."""
    return RestrictedUnpickler(file, **kwargs).load()


def restricted_pickle_loads(data: bytes, **kwargs: Any) -> Any:
    """``pickle.loads`` through :class:`RestrictedUnpickler`."""
    return RestrictedUnpickler(io.BytesIO(data), **kwargs).load()


# The ``pickle_module`` handed to ``torch.load``: every reading entry is the restricted one,
# and it cannot write.
RESTRICTED_PICKLE = types.SimpleNamespace(
    __name__="restricted_pickle", Unpickler=RestrictedUnpickler, load=restricted_pickle_load,
    loads=restricted_pickle_loads, UnpicklingError=pickle.UnpicklingError,
)
