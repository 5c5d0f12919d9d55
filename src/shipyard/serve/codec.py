"""The V2 Open Inference Protocol's tensors ↔ numpy, JSON and the binary tensor data extension,
over the JSON rule every body follows (`jsonrule`; the v1 `:predict` bodies are in `codec_v1`).
Pure functions, no I/O: transports call these.

Binary extension: the JSON header is the first `Inference-Header-Content-Length` bytes of the
body; tensors with `parameters.binary_data_size` follow it in order, little-endian, row-major.

One rule for every JSON body (V2, v1, feedback, traffic), each break of it a 400 naming the problem:
a key appears at most once in an object (no first- or last-wins), nesting and numbers stay within
the parser's limits; integer tensors take whole numbers in their type's range, float tensors take
numbers (never booleans, null or strings) that stay finite in their type, BOOL takes true/false;
flags such as `binary_data_output` are JSON booleans. A request over the element cap is a 413."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from shipyard.errors import BadRequest, PayloadTooLarge
from shipyard.serve.jsonrule import (  # noqa: F401 - parse_json, dumps, loads: the codec's API too
    _CONTAINERS,
    _HAVE_SIMDJSON,
    MAX_KEYS,
    MAX_NESTING,
    JSONDecodeError,
    _parse_simd,
    _simdjson,
    _strict,
    _strict_object,
    dumps,
    loads,
    parse_json,
    parse_keeping,
)

_FLOAT_TYPES = {"FP16", "FP32", "FP64"}

DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"), "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"), "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"), "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
NUMPY_TO_V2 = {v.newbyteorder("="): k for k, v in DATATYPES.items()}
#: the default cap on elements in one request (64 instances of 784 floats is 50,176)
MAX_ELEMENTS = 4_000_000
MAX_DIMS = 32  # numpy's own limit is 64; no served model takes more than a handful
#: the cap on BYTES elements in one request (every table column together): each is a Python
#: string, decoded on the event loop (~0.6 µs each), so an 8 MiB body of one-letter strings
#: would hold a worker for a second; 65,536 rows of text per request stay under 50 ms
MAX_BYTES_ELEMENTS = 65_536
#: simdjson's buffer type per datatype: float64 holds every ≤32-bit integer exactly; 64-bit ones are read exactly
_BUFFER_TYPE: dict[str, Literal["d", "i", "u"]] = {
    **dict.fromkeys(("FP16", "FP32", "FP64", "UINT8", "UINT16", "UINT32", "INT8", "INT16", "INT32"), "d"),
    "INT64": "i", "UINT64": "u"}
#: the largest float input served: a request's float32 math (norms, the model, the prediction log's
#: projection and samples) stays finite up to it, whatever its size; no real feature comes near
MAX_FLOAT = 1e15
_FLOAT_MAX = {"FP16": float(np.finfo(np.float16).max), "FP32": MAX_FLOAT, "FP64": MAX_FLOAT}
_BUFFER_DTYPE = {"d": np.dtype(np.float64), "i": np.dtype(np.int64), "u": np.dtype(np.uint64)}


@dataclass
class Tensor:
    name: str
    array: np.ndarray
    checked: bool = False  # its values passed `check_values` (JSON data; binary data has not)


@dataclass
class InferRequest:
    id: str | None
    inputs: list[Tensor]
    binary_outputs: dict[str, bool] = field(default_factory=dict)
    binary_default: bool = False
    parameters: dict[str, Any] = field(default_factory=dict)


def decode_v2(body: bytes, header_length: int | None = None, *, max_elements: int = MAX_ELEMENTS) -> InferRequest:
    """A V2 inference request (JSON, optionally followed by binary tensors) → numpy tensors."""
    if header_length is not None:
        if not 0 < header_length <= len(body):
            raise BadRequest(f"Inference-Header-Content-Length {header_length} does not fit a body of "
                             f"{len(body)} bytes")
        header, binary = body[:header_length], memoryview(body)[header_length:]
    else:
        header, binary = body, memoryview(b"")
    if _HAVE_SIMDJSON:
        parsed = _parse_simd(header)
        usual = _usual(parsed, binary, max_elements)
        if usual is not None:
            return usual
        doc = _strict(parsed, 0) if not isinstance(parsed, _simdjson.Object) else \
            _strict_object(parsed, 0, _top_value)
    else:
        doc = parse_json(header)
    if not isinstance(doc, dict):
        raise BadRequest("request must be a JSON object with an 'inputs' list")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise BadRequest("request needs a non-empty 'inputs' list")
    rid = doc.get("id")
    if rid is not None and not isinstance(rid, str):
        raise BadRequest(f"'id' must be a string, got {type(rid).__name__}")
    offset = 0
    total = 0
    inputs: list[Tensor] = []
    for i, spec in enumerate(raw_inputs):
        text = sum(t.array.size for t in inputs if t.array.dtype.kind == "O")
        tensor, used = _decode_input(i, spec, binary, offset, max_elements, MAX_BYTES_ELEMENTS - text)
        offset += used
        total += tensor.array.size
        if total > max_elements:
            raise PayloadTooLarge(f"request holds more than {max_elements:,} tensor elements")
        inputs.append(tensor)
    if offset != len(binary):
        raise BadRequest(f"{len(binary) - offset} bytes of binary data after the last binary input")
    if len({t.name for t in inputs}) != len(inputs):
        raise BadRequest("an input name appears more than once")
    params = _object(doc, "parameters")
    binary_default = _flag(params, "binary_data_output", False, "parameters")
    raw_outputs = doc.get("outputs")
    if raw_outputs is None:
        raw_outputs = []
    if not isinstance(raw_outputs, list):
        raise BadRequest("'outputs' must be a list of {\"name\": …, \"parameters\": …} objects")
    outs: dict[str, bool] = {}
    for o in raw_outputs:
        if not isinstance(o, dict) or not isinstance(o.get("name"), str):
            raise BadRequest("each requested output needs a 'name'")
        if o["name"] in outs:
            raise BadRequest(f"output {o['name']!r} is requested more than once")
        p = _object(o, "parameters", o["name"], "output")
        outs[o["name"]] = _flag(p, "binary_data", binary_default, f"output {o['name']!r}: parameters")
    return InferRequest(rid, inputs, outs, binary_default, params)


def _object(doc: dict[str, Any], key: str, owner: str | None = None, kind: str = "input") -> dict[str, Any]:
    got = doc.get(key)
    if got is None:
        return {}
    if not isinstance(got, dict):
        where = f"{kind} {owner!r}: " if owner is not None else ""
        raise BadRequest(f"{where}'{key}' must be an object, got {type(got).__name__}")
    return got


def _flag(params: dict[str, Any], key: str, default: bool, where: str) -> bool:
    got = params.get(key, default)
    if not isinstance(got, bool):
        raise BadRequest(f"{where}.{key} must be true or false (a JSON boolean), got {got!r}")
    return got


_USUAL_TOP = frozenset({"inputs", "id"})
_USUAL_NEEDED = frozenset(("name", "datatype", "shape"))
_USUAL_INPUT = frozenset({"name", "datatype", "shape", "data", "parameters"})
_USUAL_FLOATS = {"FP32": np.dtype("<f4"), "FP64": np.dtype("<f8")}
_LARGEST, _SMALLEST = np.maximum.reduce, np.minimum.reduce


def _usual(doc: Any, binary: memoryview, max_elements: int) -> InferRequest | None:
    """The usual request — one FP32/FP64 input, its values as JSON numbers (or one binary
    tensor), an optional `id`, nothing else — straight from simdjson's document: 25 → 14 µs
    for 784 floats, most of it the parse itself. None for anything else, which the general
    path then decodes or refuses by the same rule (it names the problem; this path only
    recognises the usual shape, so every refusal stays worded in one place).

    Keys are listed, never looked up when absent (a missing key costs simdjson ~2 µs); a
    duplicate key anywhere sends the body to the general path, which refuses it."""
    if not isinstance(doc, _simdjson.Object):
        return None
    keys = list(doc.keys())
    if len(keys) > 2 or not _USUAL_TOP.issuperset(keys) or "inputs" not in keys or len(set(keys)) != len(keys):
        return None
    rid = doc["id"] if "id" in keys else None
    inputs = doc["inputs"]
    if (rid is not None and not isinstance(rid, str)) or not isinstance(inputs, _simdjson.Array) or len(inputs) != 1:
        return None
    spec = inputs[0]
    if not isinstance(spec, _simdjson.Object):
        return None
    ikeys = list(spec.keys())
    if len(ikeys) != 4 or not _USUAL_INPUT.issuperset(ikeys) or len(set(ikeys)) != 4 or \
            not _USUAL_NEEDED.issubset(ikeys):  # e.g. data and parameters but no datatype: the general path
        return None
    name, datatype, raw_shape = spec["name"], spec["datatype"], spec["shape"]
    dtype = _USUAL_FLOATS.get(datatype) if isinstance(datatype, str) else None
    if dtype is None or not isinstance(name, str) or not name or not isinstance(raw_shape, _simdjson.Array) \
            or not 0 < len(raw_shape) <= MAX_DIMS:
        return None
    shape = raw_shape.as_list()
    count = 1
    for d in shape:
        if type(d) is not int or d < 0:
            return None
        count *= d
    if count > max_elements:
        return None
    if "data" in ikeys:
        data = spec["data"]
        if binary or not isinstance(data, _simdjson.Array):
            return None
        try:
            src = np.frombuffer(data.as_buffer(of_type="d"), dtype=np.float64)
        except (TypeError, ValueError):
            return None
        if src.size != count:
            return None
        # every value within ±MAX_FLOAT (two reductions, no temporary array; JSON has no NaN);
        # otherwise `check_values` names the first one that is not
        if src.size and (_LARGEST(src) > MAX_FLOAT or _SMALLEST(src) < -MAX_FLOAT):
            check_values(f"input {name!r}", datatype, src)
        arr = src.astype(dtype)
        return InferRequest(rid, [Tensor(name, arr.reshape(shape), checked=True)])
    params = spec["parameters"]
    if not isinstance(params, _simdjson.Object) or list(params.keys()) != ["binary_data_size"]:
        return None
    size = params["binary_data_size"]
    if type(size) is not int or size != count * dtype.itemsize or size != len(binary):
        return None
    return InferRequest(rid, [Tensor(name, np.frombuffer(binary, dtype=dtype).reshape(shape))])


def _top_value(key: str, value: Any, depth: int) -> Any:
    if key == "inputs" and isinstance(value, _simdjson.Array):
        return [_strict_object(v, 2, _input_value) if isinstance(v, _simdjson.Object) else _strict(v, 2)
                for v in value]
    return _strict(value, depth)


def _input_value(key: str, value: Any, depth: int) -> Any:
    """One input's fields; `data` stays a simdjson array (`_decode_input` reads it as a buffer)."""
    if key == "data" and isinstance(value, _simdjson.Array):
        return value
    return _strict(value, depth)


def _decode_input(i: int, spec: Any, binary: memoryview, offset: int, max_elements: int = MAX_ELEMENTS,
                  max_text: int = MAX_BYTES_ELEMENTS) -> tuple[Tensor, int]:
    if not isinstance(spec, dict):
        raise BadRequest(f"inputs[{i}] must be an object")
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise BadRequest(f"inputs[{i}] needs a 'name'")
    datatype = spec.get("datatype")
    if not isinstance(datatype, str) or (datatype not in DATATYPES and datatype != "BYTES"):
        raise BadRequest(f"input {name!r}: datatype {datatype!r} is not one of {', '.join(DATATYPES)}, BYTES")
    shape = spec.get("shape")
    if not isinstance(shape, list) or not shape or not all(isinstance(d, int) and not isinstance(d, bool)
                                                           and d >= 0 for d in shape):
        raise BadRequest(f"input {name!r}: 'shape' must be a list of non-negative integers, got "
                         f"{_brief(shape)}")
    if len(shape) > MAX_DIMS:
        raise BadRequest(f"input {name!r}: 'shape' has {len(shape):,} dimensions; at most {MAX_DIMS}")
    count = math.prod(shape)
    if count > max_elements:
        raise PayloadTooLarge(f"input {name!r}: shape {_brief(shape)} holds more than {max_elements:,} elements")
    params = _object(spec, "parameters", name)
    if datatype == "BYTES":
        if count > max_text:
            raise PayloadTooLarge(f"input {name!r}: more than {MAX_BYTES_ELEMENTS:,} BYTES elements in one "
                                  "request (for files, `shipyard predict`)")
        return _decode_bytes(name, spec, params, shape, count, binary, offset)
    dtype = DATATYPES[datatype]
    size = params.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise BadRequest(f"input {name!r}: binary_data_size must be a non-negative integer")
        if size != count * dtype.itemsize:
            raise BadRequest(f"input {name!r}: binary_data_size {size} does not match shape {shape} of "
                             f"{datatype} ({count * dtype.itemsize} bytes)")
        if offset + size > len(binary):
            raise BadRequest(f"input {name!r}: body ends before its {size} bytes of binary data")
        return Tensor(name, np.frombuffer(binary[offset : offset + size], dtype=dtype).reshape(shape)), size
    if "data" not in spec:
        raise BadRequest(f"input {name!r} has neither 'data' nor a binary_data_size parameter")
    where = f"input {name!r}"
    data = spec["data"]
    arr: np.ndarray | None = None
    if _HAVE_SIMDJSON and isinstance(data, _simdjson.Array):
        kind = _BUFFER_TYPE.get(datatype)
        if kind is not None:
            buf: np.ndarray | None
            try:
                buf = np.frombuffer(data.as_buffer(of_type=kind), dtype=_BUFFER_DTYPE[kind])
            except (TypeError, ValueError):  # not all numbers, or not in range: `_values` says which
                buf = None
            if buf is not None:
                arr = check_values(where, datatype, buf)
        if arr is None:
            data = data.as_list()
    if arr is None:
        if not isinstance(data, list):
            raise BadRequest(f"{where}: 'data' must be an array of {datatype} values, got {type(data).__name__}")
        arr = _values(where, datatype, data)
    if arr.size != count:
        raise BadRequest(f"input {name!r}: shape {shape} needs {count} values, 'data' has {arr.size}")
    return Tensor(name, arr.reshape(shape), checked=True), 0


def _decode_bytes(name: str, spec: dict[str, Any], params: dict[str, Any], shape: list[int], count: int,
                  binary: memoryview, offset: int) -> tuple[Tensor, int]:
    """A BYTES input (a table's categorical column): JSON strings, or binary elements each a
    4-byte little-endian length and its bytes (Triton's layout). Strings must be UTF-8; the
    tensor holds Python `str` objects."""
    size = params.get("binary_data_size")
    values: list[Any]
    used = 0
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise BadRequest(f"input {name!r}: binary_data_size must be a non-negative integer")
        if offset + size > len(binary):
            raise BadRequest(f"input {name!r}: body ends before its {size} bytes of binary data")
        chunk, at, values = binary[offset: offset + size], 0, []
        while at < size:
            if at + 4 > size:
                raise BadRequest(f"input {name!r}: BYTES element {len(values)} is cut off in its length prefix")
            n = int.from_bytes(chunk[at: at + 4], "little")
            if at + 4 + n > size:
                raise BadRequest(f"input {name!r}: BYTES element {len(values)} says {n} bytes, "
                                 f"{size - at - 4} are left")
            values.append(bytes(chunk[at + 4: at + 4 + n]))
            at += 4 + n
        used = size
    else:
        if "data" not in spec:
            raise BadRequest(f"input {name!r} has neither 'data' nor a binary_data_size parameter")
        data = spec["data"]
        if _HAVE_SIMDJSON and isinstance(data, _simdjson.Array):
            data = data.as_list()
        if not isinstance(data, list):
            raise BadRequest(f"input {name!r}: 'data' must be an array of strings, got {type(data).__name__}")
        values = flatten(f"input {name!r}", data)
        odd = [v for v in values if not isinstance(v, str)][:1]
        if odd:
            raise BadRequest(f"input {name!r} is BYTES: 'data' takes strings, got {_kind(odd[0])} such as "
                             f"{_brief(odd[0])}")
    if len(values) != count:
        raise BadRequest(f"input {name!r}: shape {shape} needs {count} values, 'data' has {len(values)}")
    out = np.empty(count, dtype=object)
    for i, v in enumerate(values):
        if isinstance(v, bytes):
            try:
                v = v.decode("utf-8")
            except UnicodeDecodeError:
                raise BadRequest(f"input {name!r}: BYTES element {i} is not UTF-8 text") from None
        out[i] = v
    return Tensor(name, out.reshape(shape), checked=True), used


def _brief(value: Any) -> str:
    """A value as the client wrote it (JSON spelling), cut to 80 characters."""
    text = {True: "true", False: "false", None: "null"}.get(value, repr(value)) if value is None or \
        isinstance(value, bool) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _kind(value: Any) -> str:
    kinds = {bool: "booleans", type(None): "null", str: "strings", dict: "objects", list: "arrays"}
    return kinds.get(type(value), type(value).__name__)


def flatten(where: str, data: list[Any]) -> list[Any]:
    """Nested lists of values, row-major (as V2 allows)."""
    if not any(isinstance(v, list) for v in data):
        return data
    flat: list[Any] = []
    stack: list[tuple[Any, int]] = [(iter(data), 0)]
    while stack:
        it, depth = stack[-1]
        for v in it:
            if isinstance(v, list):
                if depth + 1 >= MAX_NESTING:
                    raise BadRequest(f"{where}: 'data' is nested more than {MAX_NESTING} levels deep")
                stack.append((iter(v), depth + 1))
                break
            flat.append(v)
        else:
            stack.pop()
    return flat


def _values(where: str, datatype: str, data: list[Any]) -> np.ndarray:
    """Tensor values from JSON (nested lists of numbers), by the one rule; the slow path:
    simdjson's buffers take the usual requests."""
    flat = flatten(where, data)
    if datatype == "BOOL":
        bad = next((v for v in flat if not isinstance(v, bool)), _NONE)
        if bad is not _NONE:
            raise BadRequest(f"{where}: BOOL takes true or false, not {_kind(bad)} (got {_brief(bad)})")
        return np.array(flat, dtype=np.bool_)
    bad = next((v for v in flat if isinstance(v, bool) or not isinstance(v, (int, float))), _NONE)
    if bad is not _NONE:
        raise BadRequest(f"{where}: 'data' is not an array of {datatype} values: {datatype} {numbers_only(bad)}")
    dtype = DATATYPES[datatype]
    if dtype.kind == "f":
        try:
            src = np.array(flat, dtype=np.float64)
        except OverflowError:
            src = np.array([math.inf], dtype=np.float64)
        return check_values(where, datatype, src)
    info = np.iinfo(dtype)
    bad = next((v for v in flat if (isinstance(v, float) and not v.is_integer()) or not info.min <= v <= info.max),
               _NONE)
    if bad is not _NONE:
        raise BadRequest(_whole_numbers(where, datatype, bad))
    return np.array([int(v) for v in flat] if any(isinstance(v, float) for v in flat) else flat, dtype=dtype)


_NONE = object()


def numbers_only(bad: Any) -> str:
    """Why a non-number is refused where numbers go (the same words for V2 and v1)."""
    return f"takes numbers, not {_kind(bad)} (got {_brief(bad)})"


def _whole_numbers(where: str, datatype: str, bad: Any) -> str:
    info = np.iinfo(DATATYPES[datatype])
    shown = bad.item() if isinstance(bad, np.generic) else bad
    if isinstance(shown, float) and shown.is_integer():
        shown = int(shown)
    return f"{where}: {datatype} takes whole numbers in {info.min}..{info.max}, got {shown!r}"


def float_limit(datatype: str) -> str:
    """Why a float value is refused (the same words for V2, v1 and binary tensors)."""
    return f"not a finite number within ±{_FLOAT_MAX[datatype]:.4g}, the {datatype} range served " \
        "(float32 math on the request must stay finite)"


def check_values(where: str, datatype: str, src: np.ndarray) -> np.ndarray:
    """Numbers read from JSON (float64, or int64/uint64) as `datatype`, by the one rule (V2 and
    v1 alike): integer types take whole numbers in their range, float types values within
    ±MAX_FLOAT (FP16: its range). Raises BadRequest naming the first value that breaks it."""
    top = _FLOAT_MAX.get(datatype)
    if top is not None:
        if src.size and not np.abs(src).max() <= top:  # NaN fails it too
            flat = src.ravel()
            bad = flat[np.flatnonzero(~(np.abs(flat) <= top))[0]].item()
            raise BadRequest(f"{where}: {bad!r} is {float_limit(datatype)}")
        return src.astype(DATATYPES[datatype])
    dtype = DATATYPES[datatype]
    if src.dtype == dtype:
        return src
    if dtype.kind == "b":
        raise BadRequest(f"{where}: BOOL takes true or false")
    info = np.iinfo(dtype)
    if src.dtype.kind == "f":
        bad_mask = (src != np.trunc(src)) | (src < info.min) | (src >= info.max + 1) | np.isnan(src)
    elif src.dtype.kind in "iu":
        bad_mask = (src < info.min) | (src > info.max)
    else:
        raise BadRequest(f"{where}: {datatype} takes whole numbers in {info.min}..{info.max}")
    if bad_mask.any():
        raise BadRequest(_whole_numbers(where, datatype, src.ravel()[np.flatnonzero(bad_mask.ravel())[0]]))
    return src.astype(dtype)


def encode_v2(model: str, version: str | None, rid: str | None, outputs: list[tuple[str, np.ndarray, bool]],
              parameters: dict[str, Any] | None = None) -> tuple[bytes, int | None]:
    """Response body and, when any output is binary, the JSON header's length."""
    entries: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, arr, binary in outputs:
        entry: dict[str, Any] = {"name": name, "shape": list(arr.shape)}
        if arr.dtype.kind in "OUS":
            entry["datatype"] = "BYTES"
            if binary:
                blob = b"".join(len(b).to_bytes(4, "little") + b for b in (str(v).encode() for v in arr.ravel()))
                entry["parameters"] = {"binary_data_size": len(blob)}
                chunks.append(blob)
            else:  # class names are already text: no new string per value
                entry["data"] = [v if type(v) is str else str(v) for v in arr.ravel().tolist()]
        else:
            entry["datatype"] = NUMPY_TO_V2.get(arr.dtype) or NUMPY_TO_V2[arr.dtype.newbyteorder("=")]
            if binary:
                blob = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
                entry["parameters"] = {"binary_data_size": len(blob)}
                chunks.append(blob)
            else:
                entry["data"] = arr.ravel()
        entries.append(entry)
    doc: dict[str, Any] = {"model_name": model, "outputs": entries}
    if version is not None:
        doc["model_version"] = version
    if rid is not None:
        doc["id"] = rid
    if parameters:
        doc["parameters"] = parameters
    header = dumps(doc)
    if not chunks:
        return header, None
    return header + b"".join(chunks), len(header)
