"""The v1 `:predict` bodies (TF Serving's REST API, which KServe v1 follows), both of its forms:

- row form `{"instances": [INSTANCE, …]}` → `{"predictions": [{"label", "probabilities"}, …]}`;
- columnar form `{"inputs": [INSTANCE, …]}`, or `{"inputs": {"INPUT": [INSTANCE, …]}}` naming the
  input, → `{"outputs": {"label": [...], "probabilities": [[...], …]}}` (two named outputs, so
  TF Serving's object of columns).
- a table's named columns, in either form as TF Serving takes several named inputs: rows of
  objects `{"instances": [{"COLUMN": value, …}, …]}`, or `{"inputs": {"COLUMN": [values], …}}`;
  values are numbers, strings or booleans, null where one is missing (`V1Request.columns`).

Each answer also carries `model_name`, `model_version` and `id`. The values follow the V2 rule
(`codec.check_values`, applied once the input is known, so one rule serves both protocols); a
body with both keys is refused, as TF Serving does. Pure functions, no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from shipyard.errors import BadRequest, PayloadTooLarge
from shipyard.serve.codec import MAX_ELEMENTS, dumps, flatten, numbers_only, parse_keeping
from shipyard.serve.jsonrule import _HAVE_SIMDJSON, _parse_simd, _simdjson, keeping

Form = Literal["instances", "inputs"]
FORMS: tuple[Form, ...] = ("instances", "inputs")
#: the answer's key for each request form, as TF Serving answers
ANSWER_KEY = {"instances": "predictions", "inputs": "outputs"}
_NONE = object()


@dataclass(frozen=True)
class V1Request:
    """One decoded `:predict` body: the batch as float64 (the input's datatype is applied later,
    by `check_values`), which form it came in (the answer's form), and the input it names."""

    array: np.ndarray
    form: Form = "instances"
    input: str | None = None  # named by `{"inputs": {"NAME": …}}`; otherwise the instance shape says which
    columns: dict[str, np.ndarray] | None = None  # a table's named columns (then `array` is empty)


def decode_v1(body: bytes, *, max_elements: int = MAX_ELEMENTS) -> V1Request:
    """A `:predict` body in either form → `V1Request`; every break of the rule is a 400 naming
    it (a request over `max_elements` values: 413)."""
    if _HAVE_SIMDJSON:
        parsed = _parse_simd(body)
        usual = _usual(parsed, body, max_elements)
        if usual is not None:
            return usual
        doc = keeping(parsed, FORMS)  # the same document: the body is parsed once
    else:
        doc = parse_keeping(body, FORMS)
    given = [k for k in FORMS if k in doc] if isinstance(doc, dict) else []
    if len(given) > 1:
        raise BadRequest("send 'instances' (row form) or 'inputs' (columnar form), not both")
    if not given:
        raise BadRequest("request must be a JSON object with a non-empty 'instances' list (row form) or "
                         "'inputs' (columnar form: a list, or {\"INPUT\": list})")
    form = given[0]
    raw = doc[form]
    name: str | None = None
    where = f"'{form}'"
    if (cols := _named_columns(form, raw, max_elements)) is not None:
        return V1Request(np.zeros((0,)), form, None, cols)
    if form == "inputs" and isinstance(raw, dict):
        if len(raw) != 1:
            raise BadRequest(f"'inputs' must name exactly one input (this server's models take one), got "
                             f"{len(raw)}: {sorted(raw)[:8]}")
        [(name, raw)] = raw.items()
        where = f"'inputs' {name!r}"
    return V1Request(_numbers(where, raw, max_elements, body.count(b"[")), form, name)


def _named_columns(form: Form, raw: Any, max_elements: int) -> dict[str, np.ndarray] | None:
    """A table's columns from rows of objects or from several named inputs (or one holding text,
    booleans or nulls); None for anything else (arrays of numbers: an input's instances)."""
    if form == "instances":
        rows = raw.as_list() if hasattr(raw, "as_list") else raw
        if not isinstance(rows, list) or not rows or not isinstance(rows[0], dict):
            return None
        names = list(rows[0])
        for i, row in enumerate(rows):
            if not isinstance(row, dict) or list(row) != names:
                got = sorted(row)[:8] if isinstance(row, dict) else type(row).__name__
                raise BadRequest(f"'instances'[{i}] must name the same columns as 'instances'[0] ({names[:8]}), "
                                 f"got {got}")
        values = {n: [row[n] for row in rows] for n in names}
    elif isinstance(raw, dict) and raw:
        values = {n: (v.as_list() if hasattr(v, "as_list") else v) for n, v in raw.items()}
        plain = len(values) == 1 and all(isinstance(v, list) for v in values.values()) and \
            all(isinstance(e, int | float | list) and not isinstance(e, bool)
                for v in values.values() for e in v)
        if plain or any(isinstance(e, list) for v in values.values() if isinstance(v, list) for e in v):
            return None  # one input of numbers, or inputs of arrays: the columnar form of array inputs
        for n, v in values.items():
            if not isinstance(v, list) or not v:
                raise BadRequest(f"'inputs' {n!r} must be a non-empty list of values")
    else:
        return None
    if sum(len(v) for v in values.values()) > max_elements:
        raise PayloadTooLarge(f"request holds more than {max_elements:,} values")
    return {n: _column(n, v) for n, v in values.items()}


def _column(name: str, values: list[Any]) -> np.ndarray:
    """One named column's JSON values as an array: numbers (null: NaN, a missing value) as
    float64, booleans as bool, anything else (text) as objects for the table's own checks."""
    present = [v for v in values if v is not None]
    if any(isinstance(v, list | dict) for v in present):
        raise BadRequest(f"column {name!r} takes one value per row (a number, a string, true/false or null)")
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    if present and len(present) == len(values) and all(isinstance(v, bool) for v in present):
        return np.array(values, dtype=bool)
    return np.array(values, dtype=object)


def _usual(doc: Any, body: bytes, max_elements: int) -> V1Request | None:
    """`{"instances": [...]}` with nothing else, regular (`_regular`): straight from simdjson's
    document `doc` (of `body`), without the general path's object walk; None for anything else
    (the general path decides it, by the same rule)."""
    if not isinstance(doc, _simdjson.Object) or list(doc.keys()) != ["instances"]:
        return None
    raw = doc["instances"]
    if not isinstance(raw, _simdjson.Array):
        return None
    arr = _regular(raw, body.count(b"["))
    if arr is None or arr.size > max_elements:
        return None
    return V1Request(arr, "instances")


def _numbers(where: str, raw: Any, max_elements: int, brackets: int = -1) -> np.ndarray:
    """Equally shaped nested arrays of numbers → one float64 array (booleans, null and strings
    refused, naming the first). `brackets`: how many `[` the whole body holds (see `_regular`)."""
    as_buffer = getattr(raw, "as_buffer", None)  # an array `parse_keeping` left to simdjson
    if as_buffer is not None and (arr := _regular(raw, brackets)) is not None:
        if arr.size > max_elements:
            raise PayloadTooLarge(f"request holds more than {max_elements:,} values")
        return arr
    values = raw.as_list() if as_buffer is not None else raw
    if not isinstance(values, list) or not values:
        raise BadRequest(f"{where} must be a non-empty list of instances, got "
                         f"{'an empty list' if isinstance(values, list) else type(values).__name__}")
    numbers = False
    if as_buffer is not None:
        try:
            as_buffer(of_type="d")  # every leaf a number (no booleans, null or strings)
            numbers = True
        except (TypeError, ValueError):
            pass
    if not numbers:
        bad = next((v for v in flatten(where, values) if isinstance(v, bool) or not isinstance(v, (int, float))),
                   _NONE)
        if bad is not _NONE:
            raise BadRequest(f"{where} must be equally shaped arrays of numbers: an input {numbers_only(bad)}")
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (ValueError, TypeError, OverflowError):
        raise BadRequest(f"{where} must be equally shaped arrays of numbers") from None
    if arr.size > max_elements:
        raise PayloadTooLarge(f"request holds more than {max_elements:,} values")
    return arr


def _regular(raw: Any, brackets: int) -> np.ndarray | None:
    """The usual body (equally shaped arrays of numbers, nothing else) as float64 straight from
    simdjson's buffer, without a Python float per value (66 → ~15 µs for one 784-value
    instance); None for anything else, which the general path then takes or refuses.

    The shape comes from the first element at each depth; every array above the innermost level
    is checked to hold exactly that many arrays, and every innermost array that many values. An
    array nested among the innermost values (`[[1, [2]]]`, which a flat buffer would hide) is
    ruled out by counting: the body's `[` must be exactly the arrays that shape has (a `[` in a
    string, or any other array, sends the body to the general path)."""
    dims: list[int] = []
    node = raw
    while hasattr(node, "as_buffer"):
        if not len(node) or len(dims) >= 8:
            return None
        dims.append(len(node))
        node = node[0]
    if len(dims) < 2:  # scalar instances: the general path
        return None
    arrays, level, width = 1, [raw], 1
    for depth in range(len(dims) - 1):  # every array above the innermost level, level by level
        width *= dims[depth]
        arrays += width
        below = []
        for a in level:
            if len(a) != dims[depth]:
                return None
            for child in a:
                if not hasattr(child, "as_buffer") or len(child) != dims[depth + 1]:
                    return None
                below.append(child)
        level = below
    if arrays != brackets:
        return None
    try:
        flat = np.frombuffer(raw.as_buffer(of_type="d"), dtype=np.float64)
    except (TypeError, ValueError):  # not all numbers: the general path names the first
        return None
    return flat.reshape(dims) if flat.size == width * dims[-1] else None


def encode_v1_values(form: Form, values: np.ndarray, *, model: str, version: str | None, rid: str) -> bytes:
    """A regression's answer as TF Serving gives it: one number per instance (a list with several
    targets) under `predictions`, or the `prediction` column for the `inputs` form."""
    rows: Any = np.ascontiguousarray(values[:, 0] if values.shape[1] == 1 else values)
    body = {"outputs": {"prediction": rows}} if form == "inputs" else {"predictions": rows}
    return dumps({**body, "model_name": model, "model_version": version, "id": rid})


def encode_v1(form: Form, labels: np.ndarray, probabilities: np.ndarray, *, model: str, version: str | None,
              rid: str) -> bytes:
    """The answer in the form TF Serving gives for the request's form: rows for `instances`,
    columns (one per output) for `inputs`."""
    body: dict[str, Any]
    if form == "inputs":
        body = {"outputs": {"label": [str(lab) for lab in labels], "probabilities": probabilities}}
    else:
        body = {"predictions": [{"label": str(lab), "probabilities": p}
                                for lab, p in zip(labels, probabilities, strict=True)]}
    return dumps({**body, "model_name": model, "model_version": version, "id": rid})
