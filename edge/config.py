"""Typed, frozen configs loaded from YAML, plus the edge daemon's own config.

Every stage (model, train, export, edge) has one frozen dataclass. `load_config`
fills it from a YAML mapping and `key=value` overrides: values are converted with the
field's declared type, unknown keys are rejected, and each dataclass validates itself
in `__post_init__` by raising `ValueError` (here `ConfigError`) with a message.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Hashable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from edge.errors import ConfigError

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Convert `value` (from YAML or a command line string) to the annotated type `tp`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return _convert_union(value, typing.get_args(tp), where)
    if origin is Literal:
        return _convert_literal(value, typing.get_args(tp), where)
    if origin in (tuple, list):
        return _convert_sequence(value, origin, typing.get_args(tp), where)
    if origin is dict:
        return _convert_mapping(value, typing.get_args(tp), where)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_mapping(tp, value, where)
    if tp is Any:
        return value
    if tp in _SCALARS:
        return _SCALARS[tp](value, where)
    raise ConfigError(f"{where}: unsupported field type {tp}")


def _convert_union(value: Any, args: tuple, where: str) -> Any:
    """The first of `args` that `value` converts to; None (or the strings none/null) to None
    when the union allows it."""
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
        if type(None) in args:
            return None
    errors = []
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _convert(value, arg, where)
        except ConfigError as exc:
            errors.append(str(exc))
    raise ConfigError(f"{where}: {value!r} fits none of its types: " + "; ".join(errors))


def _convert_literal(value: Any, choices: tuple, where: str) -> Any:
    for choice in choices:
        try:
            if _convert(value, type(choice), where) == choice:
                return choice
        except ConfigError:
            continue
    raise ConfigError(f"{where}: {value!r} is not one of {list(choices)}")


def _to_bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
        return value.lower() in _TRUE
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ConfigError(f"{where}: expected true/false, got {value!r}")


def _to_int(value: Any, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ConfigError(f"{where}: expected an integer, got {value!r}")


def _to_float(value: Any, where: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise ConfigError(f"{where}: expected a number, got {value!r}")


def _to_str(value: Any, where: str) -> str:
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise ConfigError(f"{where}: expected a string, got {value!r}")


# A YAML or command-line value -> a field's scalar type; a bool is never taken for a number.
_SCALARS = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str}


def _convert_sequence(value: Any, origin: type, args: tuple, where: str) -> Any:
    """A list or tuple field: a YAML list, "a,b,c" or "[a, b]" from a command line, or (for a
    tuple of any length) one scalar."""
    if isinstance(value, str):
        value = [v for v in value.replace("[", "").replace("]", "").split(",") if v.strip()]
    if not isinstance(value, (list, tuple)):
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            value = [value]  # a scalar where any number of values may stand: one value
        else:
            raise ConfigError(f"{where}: expected a list, got {value!r}")
    item_tp = args[0] if args else Any
    items = [_convert(v.strip() if isinstance(v, str) else v, item_tp, where) for v in value]
    return tuple(items) if origin is tuple else items


def _convert_mapping(value: Any, args: tuple, where: str) -> dict[Any, Any]:
    """A dict field: a YAML mapping, or from a command line `field.KEY=VALUE` (parse_overrides
    nests it) or "{}" for none; each key and value converted by the field's types."""
    if isinstance(value, str) and value.strip() in ("", "{}"):
        value = {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping (KEY: VALUE), got {value!r}")
    key_tp, value_tp = args if args else (Any, Any)
    if typing.get_origin(value_tp) is not dict and not dataclasses.is_dataclass(value_tp):
        value = dict(_dotted(value))
    return {_convert(k, key_tp, where): _convert(v, value_tp, f"{where}.{k}") for k, v in value.items()}


def _dotted(mapping: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    """A mapping of scalars whose keys may hold dots ("line3.press1"), as parse_overrides nests
    `FIELD.line3.press1=V`: its keys joined again."""
    for key, value in mapping.items():
        if isinstance(value, Mapping):
            yield from _dotted(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def from_mapping(cls: type[T], data: Mapping[str, Any], where: str = "") -> T:
    """Build dataclass `cls` from `data`, converting each value and rejecting unknown keys."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    prefix = f"{where}." if where else ""
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(prefix + k for k in unknown)}; known: {sorted(names)}")
    kwargs = {k: _convert(v, hints[k], prefix + k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where or cls.__name__}: {exc}") from exc


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """Turn `a.b=1` strings into a nested mapping of raw strings (converted later by type)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, value = item.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override")
        node[parts[-1]] = value
    return out


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


class _UniqueKeyLoader(yaml.SafeLoader):
    """The safe loader, refusing a key given twice in one mapping: PyYAML keeps the last, so a
    setting changed at one of its two places in a long file would be served at the other."""


def _mapping_of_unique_keys(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    first_line: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`, merged by construct_mapping
            continue
        key = loader.construct_object(key_node, deep=deep)
        if not isinstance(key, Hashable):  # construct_mapping refuses it, in its words
            continue
        if key in first_line:
            raise yaml.constructor.ConstructorError(
                None, None, f"the key {key!r} is given twice (first at line {first_line[key]})", key_node.start_mark
            )
        first_line[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_of_unique_keys)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with the safe loader, each key of a mapping once; an empty file is an
    empty mapping."""
    path = Path(path)
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader) or {}  # a SafeLoader
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {_yaml_reason(exc)}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping, not {type(data).__name__}")
    return data


def _yaml_reason(exc: yaml.YAMLError) -> str:
    """PyYAML's complaint in one line, with the line and column it names (1-based)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}"


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    section: str | None = None,
) -> T:
    """Load `cls` from an optional YAML file (optionally one `section` of it) and overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        data = read_yaml(path)
        if section is not None:
            data = data.get(section, {}) or {}
    return config_from(cls, data, overrides, section or "")


def config_from(
    cls: type[T], data: Mapping[str, Any], overrides: Mapping[str, Any] | None = None, where: str = ""
) -> T:
    """`cls` from a mapping (a run's saved config) with `overrides` merged over it."""
    return from_mapping(cls, _merge(dict(data), overrides) if overrides else data, where)


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON/YAML-ready dict of a config dataclass (tuples become lists)."""

    def clean(v: Any) -> Any:
        if isinstance(v, tuple):
            return [clean(x) for x in v]
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        return v

    return clean(dataclasses.asdict(config))


def require(condition: bool, message: str) -> None:
    """Validation helper for `__post_init__`: raise ConfigError (a ValueError), never assert."""
    if not condition:
        raise ConfigError(message)
