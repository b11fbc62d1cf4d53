"""One configuration system for every job: YAML files over dataclass defaults, then overrides.

A job's schema is a (nested) dataclass. ``load_config`` reads a YAML file, applies
``dotted.key=value`` overrides (values parsed as YAML scalars), checks every key and type against
the schema and returns a populated instance. Unknown keys, wrong types, malformed overrides, a file
that is not UTF-8 text, YAML syntax errors and keys given twice raise :class:`ConfigError` with a
one-line message.

A section may be a choice between several schemas (a method or a backbone with options of its
own): its base dataclass has a ``name`` field and a ``config_variants()`` classmethod mapping
each name to the dataclass of that variant; the section's ``name`` picks the schema its other
keys are checked against.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from ssit.atomic_write import replacing
from ssit.error_text import first_line

CONFIG_DIR = Path(__file__).parent / "configs"

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration that cannot be used; the message is one line meant for the user."""


def resolve_config_path(name: str | Path) -> Path:
    """Return the YAML file for ``name``: an existing path, or a packaged config's bare name."""
    path = Path(name)
    if path.is_file():
        return path
    packaged = CONFIG_DIR / f"{path.stem}.yaml"
    if path.suffix in ("", ".yaml", ".yml") and path.parent == Path(".") and packaged.is_file():
        return packaged
    available = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    raise ConfigError(f"config '{name}' not found (packaged configs: {available or 'none'})")


def load_config(
    schema: type[T], source: str | Path | None = None, overrides: Sequence[str] = ()
) -> T:
    """Build ``schema`` from its defaults, an optional YAML file and ``key=value`` overrides."""
    values: dict[str, Any] = {}
    if source is not None:
        path = resolve_config_path(source)
        loaded = read_yaml(path, "config")
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config {path} must be a mapping of keys to values")
        values = loaded
    for override in overrides:
        key, value = parse_override(override)
        _set_dotted(values, key, value)
    return config_from_values(schema, values)


def config_from_values(schema: type[T], values: Mapping[str, Any]) -> T:
    """Build ``schema`` from nested values (e.g. a saved config), defaults filling the gaps."""
    upgrade = getattr(schema, "upgrade_config_values", None)
    if upgrade is not None:
        values = upgrade(values)
    return _build(schema, values, prefix="")


def read_yaml(path: str | Path, what: str = "file") -> Any:
    """Parse the YAML file ``path``; raise ConfigError naming ``what`` and the problem in one line.

    The file must be UTF-8 text and may not give a key twice in one mapping.
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read {what} {path}: {first_line(error)}") from None
    except UnicodeDecodeError as error:
        byte = error.object[error.start]
        raise ConfigError(f"{what} {path} is not UTF-8 text (byte 0x{byte:02x} at offset "
                          f"{error.start}); give a YAML file") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as error:
        raise ConfigError(f"{what} {path} is not valid YAML: {yaml_error_text(error)}") from None


def yaml_error_text(error: yaml.YAMLError) -> str:
    """One line for a YAML error: its problem and where (``line L, column C``)."""
    if isinstance(error, yaml.MarkedYAMLError):
        problem = error.problem or error.context or type(error).__name__
        mark = error.problem_mark or error.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        return f"{problem}{where}"
    return first_line(error)


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a mapping giving the same key twice (YAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark,
                    f"key {key!r} is given twice", key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def non_finite_values(config: Any) -> dict[str, float]:
    """The NaN or infinite floats of ``config`` (a config dataclass), by dotted key."""
    found: dict[str, float] = {}

    def visit(value: Any, key: str) -> None:
        if isinstance(value, dict):
            for name, item in value.items():
                visit(item, f"{key}.{name}" if key else str(name))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                visit(item, f"{key}[{index}]")
        elif isinstance(value, float) and not math.isfinite(value):
            found[key] = value

    visit(config_to_dict(config), "")
    return found


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``a.b=value`` into the dotted key and the value parsed as a YAML scalar."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part.isidentifier() for part in key.split(".")):
        raise ConfigError(f"override '{text}' is not of the form key=value (e.g. optim.lr=1e-3)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key, value


def config_to_dict(config: Any) -> dict[str, Any]:
    """Return a config dataclass as plain nested dicts, lists and scalars."""
    return _plain(dataclasses.asdict(config))


def save_config(config: Any, path: str | Path) -> Path:
    """Write ``config`` as YAML to ``path`` (keys in schema order, atomically); return the path."""
    path = Path(path)
    with replacing(path) as partial:
        partial.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
    return path


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _set_dotted(values: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = values
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{key}': '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def _build(schema: type[T], values: Mapping[str, Any], prefix: str) -> T:
    fields = {field.name: field for field in dataclasses.fields(schema) if field.init}
    hints = typing.get_type_hints(schema)
    for key in values:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown config key '{prefix}{key}'{hint}")
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        kwargs[name] = _convert(value, hints[name], f"{prefix}{name}")
    try:
        return schema(**kwargs)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"invalid config{' section ' + prefix[:-1] if prefix else ''}: "
                          f"{first_line(error)}") from None


def _convert(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key '{key}' is a section; give it as a mapping of keys")
        return _build(_variant(hint, value, key), value, prefix=f"{key}.")
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (arg for arg in args if arg is not type(None)):
            try:
                return _convert(value, option, key)
            except ConfigError as error:
                errors.append(error)
        raise errors[0]
    if origin is Literal:
        if value not in args:
            choices = ", ".join(repr(arg) for arg in args)
            raise ConfigError(f"config key '{key}' must be one of {choices}, got {value!r}")
        return value
    if origin in (list, tuple, Sequence) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        item = args[0] if args else Any
        items = [_convert(element, item, f"{key}[{i}]") for i, element in enumerate(value)]
        return tuple(items) if origin is tuple or hint is tuple else items
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}")
        return dict(value)
    return _convert_scalar(value, hint, key)


def _variant(schema: type, values: Mapping[str, Any], key: str) -> type:
    """The dataclass that a section's ``name`` selects, for sections with variants."""
    variants = getattr(schema, "config_variants", None)
    if variants is None:
        return schema
    choices = variants()
    name = values.get("name", schema.__dataclass_fields__["name"].default)
    if name not in choices:
        known = ", ".join(sorted(choices))
        raise ConfigError(f"config key '{key}.name' must be one of {known}, got {name!r}")
    return choices[name]


def _convert_scalar(value: Any, hint: Any, key: str) -> Any:
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    elif hint is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
    else:
        raise ConfigError(f"config key '{key}' has an unsupported type {hint!r}")
    name = getattr(hint, "__name__", str(hint))
    raise ConfigError(f"config key '{key}' must be {_article(name)} {name}, got {value!r}")


def _article(name: str) -> str:
    return "an" if name[:1] in "aeiou" else "a"
