"""Typed JSON records: a JSON object read into a frozen dataclass by the dataclass's type hints,
and written back in the same shape. What `bundle.json`'s schema (`meta.py`) is built from.

`Record.read` refuses an unknown key, a missing required one, or a value of the wrong type with
a `RecordError` naming the key (`signature.inputs[0].dtype`) and the value. Types understood:
str, int, float (an int is a number too), bool, Any, `X | None` and other unions, Literal,
`list[X]`, `tuple[X, ...]` (read from JSON arrays), `dict[str, X]`, Record subclasses, and other
dataclasses (their fields read the same way). `to_dict` writes back the keys a record was read
with (a key it did not hold stays absent, one it held as null stays null), sorted as on disk."""

from __future__ import annotations

import types
from collections.abc import Callable
from dataclasses import MISSING, Field, dataclass, field, fields, is_dataclass
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import numpy as np

R = TypeVar("R", bound="Record")


class RecordError(ValueError):
    """A JSON value that does not fit its record; the message names the key and the value."""


@dataclass(frozen=True)
class Record:
    """A JSON object with typed keys. `_keys`: the keys it was read with, so `to_dict` writes
    back exactly those (plus the required ones and any set to other than its default)."""

    _keys: frozenset[str] = field(default=frozenset(), kw_only=True, repr=False, compare=False)

    def check(self, key: str) -> None:
        """Rules across keys (a subclass's); `key` is this record's path, "" at the top."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in _fields(type(self)):
            value = getattr(self, f.name)
            if f.name in self._keys or _required(f) or value != _default(f):
                out[f.name] = dump(value)
        return dict(sorted(out.items()))

    @classmethod
    def read(cls: type[R], value: Any, key: str = "") -> R:
        record = cls(**read_fields(cls, value, key), _keys=frozenset(value))
        record.check(key)
        return record


def dump(value: Any) -> Any:
    """A value in its JSON form: records and other dataclasses as dicts, tuples as lists."""
    if isinstance(value, Record):
        return value.to_dict()
    if is_dataclass(value) and not isinstance(value, type):
        if callable(own := getattr(value, "to_dict", None)):  # its own JSON form (a spec that omits unused keys)
            return {k: dump(v) for k, v in sorted(own().items())}
        return {f.name: dump(getattr(value, f.name)) for f in sorted(fields(value), key=lambda f: f.name)}
    if isinstance(value, tuple | list):
        return [dump(v) for v in value]
    if isinstance(value, dict):
        return {k: dump(v) for k, v in value.items()}
    return value


def read_fields(cls: type, value: Any, key: str = "") -> dict[str, Any]:
    """A dict's keys checked against a dataclass's fields and their types: the keyword arguments
    that build it."""
    if not isinstance(value, dict):
        raise wrong(key, value, "an object")
    hints = _hints(cls)
    known = {f.name: f for f in _fields(cls)}
    for k in value:
        if k not in known:
            raise RecordError(f"unknown key {join(key, str(k))!r} (value {short(value[k])}); "
                              f"{key or 'the top level'} holds {', '.join(known)}")
    out: dict[str, Any] = {}
    for name, f in known.items():
        if name in value:
            out[name] = _value(value[name], hints[name], join(key, name))
        elif _required(f):
            raise RecordError(f"missing key {join(key, name)!r}")
    return out


def wrong(key: str, value: Any, expected: str) -> RecordError:
    return RecordError(f"{key!r} has value {short(value)}, expected {expected}")


def join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def short(value: Any) -> str:
    text = repr(list(value) if isinstance(value, tuple) else value)
    return text if len(text) <= 80 else text[:77] + "..."


_FIELDS: dict[type, tuple[Field[Any], ...]] = {}
_HINTS: dict[type, dict[str, Any]] = {}


def _fields(cls: type) -> tuple[Field[Any], ...]:
    if cls not in _FIELDS:
        _FIELDS[cls] = tuple(f for f in fields(cls) if f.name != "_keys")
    return _FIELDS[cls]


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = get_type_hints(cls)
    return _HINTS[cls]


def _required(f: Field[Any]) -> bool:
    return f.default is MISSING and f.default_factory is MISSING


def _default(f: Field[Any]) -> Any:
    return f.default_factory() if f.default_factory is not MISSING else f.default


_SCALARS: dict[Any, Callable[[Any], bool]] = {
    str: lambda v: isinstance(v, str),
    bool: lambda v: isinstance(v, bool),
    int: lambda v: isinstance(v, int) and not isinstance(v, bool),
    float: lambda v: isinstance(v, int | float) and not isinstance(v, bool),
}


def _value(value: Any, tp: Any, key: str) -> Any:
    """`value` checked against type `tp` (lists become tuples where `tp` says tuple)."""
    if isinstance(value, np.generic):  # writers may hand numpy scalars and arrays
        value = value.item()
    elif isinstance(value, np.ndarray):
        value = value.tolist()
    if tp is Any:
        return value
    if tp in _SCALARS:
        if _SCALARS[tp](value):
            return value
        raise wrong(key, value, _describe(tp))
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        options = [a for a in get_args(tp) if a is not type(None)]
        if value is None:
            if len(options) < len(get_args(tp)):
                return None
            raise wrong(key, value, _describe(tp))
        nested = options[0] not in _SCALARS and get_origin(options[0]) is not Literal
        if len(options) == 1 and nested:  # its own message, which may name a key inside
            return _value(value, options[0], key)
        for option in options:
            try:
                return _value(value, option, key)
            except RecordError:
                continue
        raise wrong(key, value, _describe(tp))
    if origin is Literal:
        if isinstance(value, str) and value in get_args(tp):
            return value
        raise wrong(key, value, _describe(tp))
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise wrong(key, value, _describe(tp))
        item = get_args(tp)[0]
        fast = _SCALARS.get(item)
        if fast is not None and all(fast(v) for v in value):
            items = list(value)
        else:
            items = [_value(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise wrong(key, value, _describe(tp))
        vt = get_args(tp)[1]
        return {k: _value(v, vt, join(key, k)) for k, v in value.items()}
    if isinstance(tp, type) and issubclass(tp, Record):
        return tp.read(value, key)
    if isinstance(tp, type) and is_dataclass(tp):
        return tp(**read_fields(tp, value, key))
    raise TypeError(f"no reader for {tp!r} ({key})")  # a field of a type this module does not know


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(tp))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (tuple, list):
        return f"a list of {_describe(get_args(tp)[0]).removeprefix('a ').removeprefix('an ')}s"
    return {str: "a string", bool: "true or false", int: "an integer", float: "a number",
            type(None): "null"}.get(tp, "an object")


__all__ = ["Record", "RecordError", "dump", "join", "read_fields", "short", "wrong"]
