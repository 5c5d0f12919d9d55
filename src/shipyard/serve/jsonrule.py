"""The JSON rule every request body follows (V2, v1, feedback, traffic), each break of it a 400
naming the problem: a key appears at most once in an object (no first- or last-wins), nesting
and numbers stay within the parser's limits. simdjson parses (its arrays of numbers become
buffers without a Python float per element); orjson writes answers. `codec` and `codec_v1`
build the protocols on this."""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection
from typing import Any

import numpy as np

from shipyard.errors import BadRequest

try:  # orjson is several times faster on 7 KB bodies of floats; the standard module works too
    import orjson as _orjson

    def loads(b: bytes | str) -> Any:
        return _orjson.loads(b)

    def dumps(obj: Any) -> bytes:
        return _orjson.dumps(obj, option=_orjson.OPT_SERIALIZE_NUMPY)

    JSONDecodeError: type[Exception] = _orjson.JSONDecodeError
except ImportError:  # pragma: no cover - exercised where orjson is absent
    import json as _json

    def loads(b: bytes | str) -> Any:
        return _json.loads(b)

    def dumps(obj: Any) -> bytes:
        return _json.dumps(obj, default=lambda o: o.tolist() if isinstance(o, np.ndarray) else o.item(),
                           separators=(",", ":")).encode()

    JSONDecodeError = _json.JSONDecodeError

try:  # simdjson turns a JSON array of numbers into a buffer without a Python float per element:
    # a 784-float request decodes in 10 µs instead of 26 (orjson + numpy); orjson is the fallback
    import simdjson as _simdjson
    _HAVE_SIMDJSON = True
    _CONTAINERS: tuple[type, ...] = (_simdjson.Object, _simdjson.Array)
except ImportError:  # pragma: no cover - exercised where pysimdjson is absent
    _HAVE_SIMDJSON = False

MAX_NESTING = 64  # arrays and objects outside tensor data
MAX_KEYS = 128  # keys in one object (simdjson looks keys up one by one: a huge object would be quadratic)


def parse_json(body: bytes, what: str = "request body") -> Any:
    """A JSON body as Python objects, by the one rule (duplicate keys, nesting and number limits
    refused with a 400 naming the problem)."""
    if not _HAVE_SIMDJSON:
        return _parse_fallback(body, what)
    return _strict(_parse_simd(body, what), 0)


_parsers = threading.local()  # a parser's buffers are reused (a new one costs 7 of its 18 µs)


def _parse_simd(body: bytes, what: str = "request body") -> Any:
    parser = getattr(_parsers, "p", None)
    try:
        if parser is None:
            parser = _parsers.p = _simdjson.Parser()
        try:
            return parser.parse(body)
        except RuntimeError as e:  # the last document is still referenced (an error being handled)
            if "re-use a parser" not in str(e):
                raise
            parser = _parsers.p = _simdjson.Parser()
            return parser.parse(body)
    except (ValueError, UnicodeDecodeError, RuntimeError) as e:
        raise _json_error(e, what) from None


def _json_error(e: Exception, what: str) -> BadRequest:
    text = str(e)
    if "DEPTH_ERROR" in text or "depth limit" in text or isinstance(e, RecursionError):
        return BadRequest(f"{what} is nested too deeply (arrays or objects over 1024 levels deep)")
    if "BIGINT" in text or "NUMBER_OUT_OF_RANGE" in text or "infinity" in text:
        return BadRequest(f"{what} holds a number too large to represent (integers over 64 bits, floats over "
                          "1.8e308)")
    if "NUMBER_ERROR" in text:
        return BadRequest(f"{what} holds a malformed number, or one out of range (floats over 1.8e308)")
    return BadRequest(f"{what} is not valid JSON: {text}")


def _parse_fallback(body: bytes, what: str) -> Any:  # pragma: no cover - pysimdjson is a dependency
    import json

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out = dict(items)
        if len(out) != len(items):
            raise BadRequest(_duplicate(next(k for i, (k, _) in enumerate(items) if k in dict(items[:i]))))
        return out

    try:
        return json.loads(body, object_pairs_hook=pairs)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise _json_error(e, what) from None


def _duplicate(key: str) -> str:
    return f"key {key!r} appears more than once in one object (duplicate keys are refused)"


def _strict(value: Any, depth: int) -> Any:
    """A simdjson value as Python objects, refusing duplicate keys at any depth."""
    if isinstance(value, _simdjson.Array):
        if depth >= MAX_NESTING:
            raise BadRequest(f"request body is nested too deeply (over {MAX_NESTING} levels outside tensor data)")
        return [_strict(v, depth + 1) if isinstance(v, _CONTAINERS) else v for v in value]
    if isinstance(value, _simdjson.Object):
        return _strict_object(value, depth, None)
    return value


def _strict_object(obj: Any, depth: int, convert: Callable[[str, Any, int], Any] | None) -> dict[str, Any]:
    """An object's keys, each once (`convert` takes the values that are arrays or objects)."""
    if depth >= MAX_NESTING:
        raise BadRequest(f"request body is nested too deeply (over {MAX_NESTING} levels outside tensor data)")
    if len(obj) > MAX_KEYS:
        raise BadRequest(f"an object in the request holds {len(obj)} keys; at most {MAX_KEYS}")
    out: dict[str, Any] = {}
    for key in obj:
        if key in out:
            raise BadRequest(_duplicate(key))
        try:
            value = obj[key]
        except KeyError:  # simdjson cannot look up a key holding NUL; no protocol has one
            raise BadRequest(f"key {key!r} cannot be read (it holds a NUL character)") from None
        if isinstance(value, _CONTAINERS):
            value = _strict(value, depth + 1) if convert is None else convert(key, value, depth + 1)
        out[key] = value
    return out


def parse_keeping(body: bytes, keys: Collection[str]) -> Any:
    """A body by the one rule, except that arrays under the top-level `keys`, directly or one
    object down (`{"inputs": {"NAME": [...]}}`), stay simdjson arrays when simdjson is installed:
    their numbers are then checked as one buffer, not a Python object per element."""
    if not _HAVE_SIMDJSON:
        return parse_json(body)
    return keeping(_parse_simd(body), keys)


def keeping(doc: Any, keys: Collection[str]) -> Any:
    """`parse_keeping` of a document simdjson has already parsed (a caller that looked at it first
    does not parse the body twice)."""
    if not isinstance(doc, _simdjson.Object):
        return _strict(doc, 0)

    def arrays(key: str, value: Any, depth: int) -> Any:
        return value if isinstance(value, _simdjson.Array) else _strict(value, depth)

    def keep(key: str, value: Any, depth: int) -> Any:
        if key not in keys:
            return _strict(value, depth)
        return value if isinstance(value, _simdjson.Array) else _strict_object(value, depth, arrays)

    return _strict_object(doc, 0, keep)
