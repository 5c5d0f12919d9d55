"""The client's wire format: V2 requests encoded (JSON or the binary tensor extension, Triton's
4-byte length prefix for BYTES), answers decoded, DataFrames and images turned into tensors.
No server code: a client imports this alone."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

#: V2 datatype → numpy dtype (little-endian on the wire, as the binary extension says)
DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"), "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"), "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"), "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
# -- encoding -----------------------------------------------------------------------------------
def _bytes_blob(values: np.ndarray) -> bytes:
    """BYTES elements as the binary extension carries them (Triton's convention): a 4-byte
    little-endian length, then the UTF-8 bytes, for each element in row-major order."""
    encoded = (v if isinstance(v, bytes) else str(v).encode() for v in values.ravel().tolist())
    return b"".join(len(b).to_bytes(4, "little") + b for b in encoded)


def encode_request(inputs: Sequence[tuple[str, str, np.ndarray]], *, binary: bool = True,
                   request_id: str | None = None, outputs: Sequence[str] | None = None,
                   parameters: dict[str, Any] | None = None,
                   input_parameters: dict[str, dict[str, Any]] | None = None) -> tuple[bytes, int | None]:
    """A V2 request body from (name, datatype, array) inputs, and the JSON header's length when
    the tensors travel as binary (the `Inference-Header-Content-Length` header). `binary` also
    asks for binary outputs. Public so the wire format can be checked without a server."""
    entries: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, datatype, arr in inputs:
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(arr.shape)}
        params = dict((input_parameters or {}).get(name, {}))
        if binary:
            blob = _bytes_blob(arr) if datatype == "BYTES" else \
                np.ascontiguousarray(arr, dtype=DTYPES[datatype]).tobytes()
            params["binary_data_size"] = len(blob)
            chunks.append(blob)
        elif datatype == "BYTES":
            entry["data"] = [v.decode() if isinstance(v, bytes) else str(v) for v in arr.ravel().tolist()]
        else:
            entry["data"] = np.ascontiguousarray(arr, dtype=DTYPES[datatype]).ravel()
        if params:
            entry["parameters"] = params
        entries.append(entry)
    doc: dict[str, Any] = {"inputs": entries}
    if request_id is not None:
        doc["id"] = request_id
    top = {**(parameters or {}), **({"binary_data_output": True} if binary else {})}
    if top:
        doc["parameters"] = top
    if outputs is not None:
        doc["outputs"] = [{"name": o, "parameters": {"binary_data": binary}} for o in outputs]
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    return (header + b"".join(chunks), len(header)) if binary else (header, None)


def dataframe_inputs(df: Any) -> list[tuple[str, str, np.ndarray]]:
    """One V2 input per column, MLServer's pandas convention: numeric columns as FP32, booleans
    as BOOL, everything else (object, string, category) as BYTES of each value's text; shape [N].
    A missing value in a text column is refused: V2 has no null element."""
    import pandas as pd

    out: list[tuple[str, str, np.ndarray]] = []
    for col in df.columns:
        s = df[col]
        if pd.api.types.is_bool_dtype(s.dtype):
            out.append((str(col), "BOOL", s.to_numpy(dtype=bool)))
        elif pd.api.types.is_numeric_dtype(s.dtype):
            out.append((str(col), "FP32", s.to_numpy(dtype=np.float32, na_value=np.nan)))
        else:
            if s.isna().any():
                raise ValueError(f"column {col!r} has missing values; V2 BYTES tensors cannot hold null")
            out.append((str(col), "BYTES", np.array([str(v) for v in s.tolist()], dtype=object)))
    return out


def _is_dataframe(x: Any) -> bool:
    return type(x).__module__.startswith("pandas") and hasattr(x, "columns") and hasattr(x, "dtypes")


def _is_image(x: Any) -> bool:
    return hasattr(x, "mode") and hasattr(x, "convert") and hasattr(x, "size")


def _stack_images(items: Sequence[Any]) -> np.ndarray:
    """PIL images (converted to 8-bit grayscale, mode L) or 2-D arrays → uint8 [N, H, W]. Sizes
    must agree: the client never resizes, which would change what the model sees."""
    arrays = []
    for i, item in enumerate(items):
        a = np.asarray(item if not _is_image(item) or item.mode == "L" else item.convert("L"))
        if a.ndim != 2:
            raise ValueError(f"image {i} has shape {list(a.shape)}; send 2-D (grayscale) images")
        arrays.append(_lossless(a, np.dtype(np.uint8), f"image {i}"))
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ValueError(f"images differ in size: {sorted(shapes)}; resize them to the model's input first")
    return np.stack(arrays)


def _lossless(a: np.ndarray, dtype: np.dtype[Any], where: str) -> np.ndarray:
    """`a` as `dtype` when nothing is lost (float → float always: FP32 is what models take)."""
    if a.dtype == dtype:
        return a
    if dtype.kind == "f" and a.dtype.kind in "fiub":
        return a.astype(dtype)
    with np.errstate(invalid="ignore", over="ignore"):  # NaN or out of range: refused just below
        cast = a.astype(dtype)
    if not np.array_equal(cast, a):
        raise ValueError(f"{where} holds values that are not {dtype.name} (e.g. floats in 0..1 where "
                         f"0..255 pixels are taken); convert them first")
    return cast


# -- decoding -----------------------------------------------------------------------------------
def decode_response(body: bytes, header_length: int | None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A V2 answer (JSON, or JSON header + binary tensors) → (its JSON document, outputs as numpy:
    numeric ones in their datatype, BYTES as str)."""
    buf = bytearray(body)  # one copy: the arrays below are writable views of it
    header = bytes(buf[:header_length]) if header_length is not None else bytes(buf)
    doc = orjson.loads(header)
    offset = header_length or 0
    outputs: dict[str, np.ndarray] = {}
    for out in doc.get("outputs", []):
        shape, datatype = out["shape"], out["datatype"]
        size = (out.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            raw = memoryview(buf)[offset:offset + size]
            offset += size
            if datatype == "BYTES":
                values, pos = [], 0
                while pos < len(raw):
                    n = int.from_bytes(raw[pos:pos + 4], "little")
                    values.append(bytes(raw[pos + 4:pos + 4 + n]).decode())
                    pos += 4 + n
                arr = np.array(values, dtype=str).reshape(shape)
            else:
                arr = np.frombuffer(raw, dtype=DTYPES[datatype]).reshape(shape)
        elif datatype == "BYTES":
            arr = np.array([str(v) for v in out["data"]], dtype=str).reshape(shape)
        else:
            arr = np.asarray(out["data"], dtype=DTYPES[datatype]).reshape(shape)
        outputs[out["name"]] = arr
    return doc, outputs


