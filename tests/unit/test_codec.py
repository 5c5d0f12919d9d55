"""The V2 codec: JSON and binary tensors, and the errors a client gets for bad requests."""

from __future__ import annotations

import json
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shipyard.errors import BadRequest
from shipyard.serve import codec, codec_v1
from shipyard.serve.codec import decode_v2, encode_v2
from shipyard.serve.codec_v1 import decode_v1, encode_v1


def body(inputs: list[dict], **extra: object) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


def test_json_tensor_round_trip() -> None:
    req = decode_v2(body([{"name": "input", "datatype": "FP32", "shape": [2, 3], "data": [1, 2, 3, 4, 5, 6]}],
                        id="r1"))
    assert req.id == "r1" and req.inputs[0].name == "input"
    np.testing.assert_array_equal(req.inputs[0].array, np.arange(1, 7, dtype=np.float32).reshape(2, 3))
    assert req.inputs[0].array.dtype == np.float32
    nested = decode_v2(body([{"name": "x", "datatype": "UINT8", "shape": [1, 2, 2], "data": [[[1, 2], [3, 4]]]}]))
    assert nested.inputs[0].array.dtype == np.uint8 and nested.inputs[0].array.shape == (1, 2, 2)


def test_binary_tensors_follow_the_json_header() -> None:
    a = np.arange(6, dtype="<f4").reshape(2, 3)
    b = np.arange(4, dtype=np.uint8).reshape(1, 4)
    header = body([
        {"name": "a", "datatype": "FP32", "shape": [2, 3], "parameters": {"binary_data_size": a.nbytes}},
        {"name": "b", "datatype": "UINT8", "shape": [1, 4], "parameters": {"binary_data_size": b.nbytes}},
    ], outputs=[{"name": "probabilities", "parameters": {"binary_data": True}}])
    req = decode_v2(header + a.tobytes() + b.tobytes(), len(header))
    np.testing.assert_array_equal(req.inputs[0].array, a)
    np.testing.assert_array_equal(req.inputs[1].array, b)
    assert req.binary_outputs == {"probabilities": True}


@pytest.mark.parametrize(("raw", "header", "message"), [
    (b"{not json", None, "not valid JSON"),
    (b"[]", None, "JSON object"),
    (b'{"inputs": []}', None, "non-empty 'inputs'"),
    (body([{"datatype": "FP32", "shape": [1], "data": [1]}]), None, "needs a 'name'"),
    (body([{"name": "x", "datatype": "FLOAT", "shape": [1], "data": [1]}]), None, "datatype 'FLOAT'"),
    (body([{"name": "x", "datatype": "FP32", "shape": [-1, 2], "data": [1, 2]}]), None, "non-negative"),
    (body([{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3]}]), None, "needs 4 values"),
    (body([{"name": "x", "datatype": "FP32", "shape": [1], "data": ["a"]}]), None, "not an array of FP32"),
    (body([{"name": "x", "datatype": "FP32", "shape": [1]}]), None, "neither 'data'"),
    (body([{"name": "x", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 4}}]), None,
     "does not match shape"),
    (body([{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]) + b"xx", 10**6, "does not fit"),
    (body([{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}], id=5), None, "'id' must be a string"),
    (body([{"name": "x", "datatype": "FP32", "shape": [100000, 100000], "data": []}]), None, "more than"),
])
def test_bad_requests_say_what_is_wrong(raw: bytes, header: int | None, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        decode_v2(raw, header)


def test_trailing_binary_bytes_are_refused() -> None:
    header = body([{"name": "x", "datatype": "FP32", "shape": [1], "parameters": {"binary_data_size": 4}}])
    with pytest.raises(BadRequest, match="bytes of binary data after"):
        decode_v2(header + b"\0" * 8, len(header))


def test_encode_json_and_binary() -> None:
    probs = np.array([[0.25, 0.75]], dtype=np.float32)
    labels = np.array(["cat"], dtype=object)
    text, header = encode_v2("m", "3", "id1", [("probabilities", probs, False), ("label", labels, False)])
    assert header is None
    doc = json.loads(text)
    assert doc["model_version"] == "3" and doc["id"] == "id1"
    assert doc["outputs"][0] == {"name": "probabilities", "shape": [1, 2], "datatype": "FP32", "data": [0.25, 0.75]}
    assert doc["outputs"][1]["datatype"] == "BYTES" and doc["outputs"][1]["data"] == ["cat"]
    raw, header = encode_v2("m", "3", "id1", [("probabilities", probs, True), ("label", labels, True)])
    assert header is not None
    doc = json.loads(raw[:header])
    assert doc["outputs"][0]["parameters"]["binary_data_size"] == 8
    np.testing.assert_array_equal(np.frombuffer(raw[header:header + 8], "<f4"), probs.ravel())
    assert raw[header + 8:] == (3).to_bytes(4, "little") + b"cat"


def test_v1_instances() -> None:
    req = decode_v1(b'{"instances": [[1, 2], [3, 4]]}')
    assert req.array.shape == (2, 2) and req.form == "instances" and req.input is None
    for bad, message in ((b'{"instances": []}', "non-empty"), (b'{"instances": [[1], [1, 2]]}', "equally shaped"),
                         (b"nope", "not valid JSON")):
        with pytest.raises(BadRequest, match=message):
            decode_v1(bad)


def test_v1_inputs_rows_or_named_columns() -> None:
    """TF Serving's columnar form: a list (the one input), or an object naming the input."""
    rows = decode_v1(b'{"inputs": [[1, 2], [3, 4]], "signature_name": "serving_default"}')
    assert rows.form == "inputs" and rows.input is None and rows.array.tolist() == [[1, 2], [3, 4]]
    named = decode_v1(b'{"inputs": {"pixels": [[1, 2]]}}')
    assert named.form == "inputs" and named.input == "pixels" and named.array.shape == (1, 2)
    for bad, message in ((b'{"instances": [[1]], "inputs": [[1]]}', "not both"),
                         (b'{"inputs": {}}', "exactly one input"),
                         (b'{"inputs": {"a": [[1]], "b": [[1]]}}', "exactly one input"),
                         (b'{"inputs": {"a": [[1]], "a": [[2]]}}', "more than once"),
                         (b'{"inputs": {"a": [[true]]}}', "'inputs' 'a' must be equally shaped .* not booleans"),
                         (b'{"inputs": {"a": "x"}}', "non-empty list"),
                         (b'{"inputs": []}', "non-empty list"),
                         (b'{"inputs": [["1"]]}', "not strings"),
                         (b'{"other": 1}', "'instances' .* or 'inputs'")):
        with pytest.raises(BadRequest, match=message):
            decode_v1(bad)


def test_v1_answers_in_the_form_asked() -> None:
    probs = np.array([[0.25, 0.75], [0.5, 0.5]], np.float32)
    labels = np.array(["cat", "dog"], dtype=object)
    rows = json.loads(encode_v1("instances", labels, probs, model="m", version="3", rid="r"))
    assert rows["predictions"] == [{"label": "cat", "probabilities": [0.25, 0.75]},
                                   {"label": "dog", "probabilities": [0.5, 0.5]}]
    cols = json.loads(encode_v1("inputs", labels, probs, model="m", version="3", rid="r"))
    assert cols["outputs"] == {"label": ["cat", "dog"], "probabilities": [[0.25, 0.75], [0.5, 0.5]]}
    assert (cols["model_name"], cols["model_version"], cols["id"]) == ("m", "3", "r") and "predictions" not in cols


def test_the_reused_parser_survives_a_document_still_held() -> None:
    """The codec reuses one simdjson parser per thread; a document still referenced (an error
    being handled, a caller keeping it) must not break the next request or change its data."""
    from shipyard.serve import codec

    held = codec._parse_simd(b'{"inputs": [1, 2, 3]}')  # keeps the parser's last document alive
    first = decode_v2(b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1.5, 2.5]}]}')
    assert first.inputs[0].array.tolist() == [1.5, 2.5]
    assert list(held["inputs"]) == [1, 2, 3]  # the held document is intact
    second = decode_v2(b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [7]}]}')
    assert second.inputs[0].array.tolist() == [7.0] and first.inputs[0].array.tolist() == [1.5, 2.5]


@pytest.mark.parametrize(("body", "shape"), [
    (b'{"instances": [[1, 2], [3, 4]]}', [2, 2]),
    (b'{"inputs": {"image": [[[1, 2], [3, 4]]]}}', [1, 2, 2]),
    (b'{"instances": [[1, 2]], "signature_name": "[x"}', [1, 2]),  # a `[` in a string: the general path
    (b'{"instances": [1, 2, 3]}', [3]),
])
def test_v1_regular_bodies_decode_the_same_by_either_path(body: bytes, shape: list[int]) -> None:
    doc = json.loads(body)
    raw = doc.get("instances", doc.get("inputs"))
    expected = np.asarray(raw["image"] if isinstance(raw, dict) else raw, dtype=np.float64)
    got = decode_v1(body).array
    assert list(got.shape) == shape and got.dtype == np.float64 and np.array_equal(got, expected)


@pytest.mark.parametrize("body", [
    b'{"instances": [[1, [2]]]}',  # one value nested deeper: a flat buffer would hide it
    b'{"instances": [[1, 2], [3]]}', b'{"instances": [[1, 2], [3, [4]]]}', b'{"instances": [[[], [1, 2]]]}',
    b'{"instances": [[[1], [2, 3]]]}', b'{"instances": [[1, true]]}', b'{"instances": [[1, null]]}',
    b'{"instances": [[1, "2"]]}', b'{"instances": []}',
])
def test_v1_irregular_bodies_are_refused_whatever_the_path(body: bytes) -> None:
    with pytest.raises(BadRequest):
        decode_v1(body)


# -- the usual V2 body's fast path (`codec._usual`) must decide exactly as the general path -----
_VALUES = st.one_of(st.floats(-2e15, 2e15, allow_nan=False), st.integers(-300, 300), st.sampled_from(
    [1e15, -1e15, 1.0000001e15, 3e38, -3.5e38, 1e300, True, None, "1", 0.5]))


_BREAKS = ["name", "datatype", "fp64", "fp16", "shape", "shape-count", "data-scalar", "data-object", "nested",
           "inputs-2", "inputs-0", "inputs-object", "id", "int-id", "outputs", "parameters", "unknown", "dup-top",
           "dup-input", "binary", "binary-size", "binary-tail", "binary-str"]


@st.composite
def _v2_bodies(draw: st.DrawFn) -> tuple[bytes, int | None]:
    """A usual body (one FP32 input, JSON numbers, maybe an id) with at most one thing changed:
    half of them stay usual (the fast path's own decisions: values near and over the limits),
    the rest break one rule or leave the usual shape (the general path's)."""
    n = draw(st.integers(0, 6))
    values = draw(st.lists(_VALUES if draw(st.booleans()) else st.floats(-1, 1), min_size=n, max_size=n))
    change = draw(st.sampled_from([None] * len(_BREAKS) + _BREAKS))
    spec: dict[str, object] = {"name": "input", "datatype": "FP32", "shape": [1, n], "data": values}
    doc: dict[str, object] = {"inputs": [spec]}
    binary = b""
    if change == "name":
        spec["name"] = draw(st.sampled_from(["", 7, None]))
    elif change in ("datatype", "fp64", "fp16"):
        spec["datatype"] = {"fp64": "FP64", "fp16": "FP16"}.get(change) or draw(st.sampled_from(["INT32", "fp32", 7]))
    elif change == "shape":
        spec["shape"] = draw(st.sampled_from([[-1, n], [True, n], [1.0, n], [[1], n], "1", [], [1] * 40]))
    elif change == "shape-count":
        spec["shape"] = [1, n + 1]
    elif change in ("data-scalar", "data-object", "nested"):
        spec["data"] = {"data-scalar": 1.0, "data-object": {}, "nested": [values]}[change]
    elif change in ("inputs-2", "inputs-0", "inputs-object"):
        doc["inputs"] = {"inputs-2": [spec, {**spec, "name": "b"}], "inputs-0": [], "inputs-object": spec}[change]
    elif change in ("id", "int-id"):
        doc["id"] = "r1" if change == "id" else 5
    elif change in ("outputs", "parameters", "unknown"):
        doc[change] = {} if change != "outputs" else [{"name": "label"}]
    elif change is not None and change.startswith("binary"):
        del spec["data"]
        arr = np.asarray([v if type(v) in (int, float) and abs(v) < 3e38 else 0.0 for v in values], "<f4")
        spec["parameters"] = {"binary_data_size": {"binary-size": arr.nbytes + 4, "binary-str": "8"}.get(
            change, arr.nbytes)}
        binary = arr.tobytes() + (b"\0\0\0\0" if change == "binary-tail" else b"")
    text = json.dumps(doc)
    if change == "dup-top":
        text = text.replace('{"inputs"', '{"id": "a", "id": "b", "inputs"', 1)
    elif change == "dup-input":
        text = text.replace('"name"', '"shape": [1], "name"', 1)
    return text.encode() + binary, (len(text.encode()) if binary else None)


def _outcome(raw: bytes, header: int | None) -> object:
    try:
        req = decode_v2(raw, header)
    except BadRequest as e:  # PayloadTooLarge too
        return type(e).__name__, str(e)
    return (req.id, req.binary_outputs, req.binary_default,
            [(t.name, t.array.dtype.str, t.array.shape, t.array.tobytes(), t.checked) for t in req.inputs])


@settings(max_examples=400, deadline=None)
@given(_v2_bodies())
def test_the_usual_body_path_decides_as_the_general_path(case: tuple[bytes, int | None]) -> None:
    raw, header = case
    fast = _outcome(raw, header)
    with mock.patch.object(codec, "_usual", lambda *args: None):
        general = _outcome(raw, header)
    assert fast == general


def test_the_usual_body_takes_the_fast_path() -> None:
    """The equivalence above would also hold if the fast path never ran: it must run for these."""
    x = np.arange(784, dtype="<f4") / 784
    usual = [body([{"name": "input", "datatype": "FP32", "shape": [1, 784], "data": x.tolist()}]),
             body([{"name": "input", "datatype": "FP32", "shape": [1, 784], "data": x.tolist()}], id="r1")]
    header = body([{"name": "input", "datatype": "FP32", "shape": [1, 784], "parameters": {"binary_data_size": 3136}}])
    for raw in usual:
        assert codec._usual(codec._parse_simd(raw), memoryview(b""), codec.MAX_ELEMENTS) is not None
    assert codec._usual(codec._parse_simd(header), memoryview(x.tobytes()), codec.MAX_ELEMENTS) is not None


def _v1_outcome(raw: bytes) -> object:
    try:
        req = decode_v1(raw)
    except BadRequest as e:
        return type(e).__name__, str(e)
    return req.form, req.input, req.array.dtype.str, req.array.shape, req.array.tobytes()


@pytest.mark.parametrize("raw", [
    b'{"instances": [[1, 2], [3, 4]]}', b'{"instances": [[[1, 2], [3, 4]]]}', b'{"instances": [1, 2, 3]}',
    b'{"instances": [[1, [2]]]}', b'{"instances": [[1, 2], [3]]}', b'{"instances": [[1, true]]}',
    b'{"instances": []}', b'{"instances": [[]]}', b'{"instances": [[1, 2]], "instances": [[3, 4]]}',
    b'{"instances": [[1, 2]], "signature_name": "x"}', b'{"instances": {"x": [[1]]}}', b'{"instances": 5}',
    b'{"instances": [[1e999]]}', b'{"instances": [[1e300, 2]]}', b'[[1, 2]]', b'{"inputs": [[1, 2]]}',
    b'{"instances": [["[", 2]]}', b'{"instances": [[' + b", ".join([b"0.5"] * 784) + b"]]}",
])
def test_the_usual_v1_body_path_decides_as_the_general_path(raw: bytes) -> None:
    fast = _v1_outcome(raw)
    with mock.patch.object(codec_v1, "_usual", lambda *args: None):
        general = _v1_outcome(raw)
    assert fast == general
    if fast[0] == "instances":  # decoded: which path took it
        usual = raw in (b'{"instances": [[1, 2], [3, 4]]}', b'{"instances": [[[1, 2], [3, 4]]]}',
                        b'{"instances": [[1e300, 2]]}') or len(raw) > 1000
        assert (codec_v1._usual(codec._parse_simd(raw), raw, codec.MAX_ELEMENTS) is not None) == usual


def test_a_four_key_input_without_a_datatype_is_refused_not_a_crash() -> None:
    # found by the fuzz test: name, shape, data and parameters (no datatype) passed the fast path's
    # key count and then looked up the absent key (simdjson raises KeyError → a 500)
    doc = body([{"name": "input", "shape": [1, 2], "data": [0.5, 0.5], "parameters": {}}])
    with pytest.raises(BadRequest, match="datatype"):
        decode_v2(doc)
