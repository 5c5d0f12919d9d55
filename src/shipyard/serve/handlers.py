"""Protocol logic shared by every transport: a decoded request and a runtime in, the response
body out. The HTTP layer only translates bytes and status codes."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np

from shipyard.errors import BadRequest
from shipyard.serve.codec import InferRequest, dumps, encode_v2
from shipyard.serve.runtime import LABEL, ModelRuntime

OUTPUTS = ("probabilities", LABEL)


def request_id(rid: str | None) -> str:
    return rid if rid else uuid.uuid4().hex


def infer_v2(runtime: ModelRuntime, req: InferRequest) -> tuple[bytes, int | None, str]:
    """Run a V2 request; returns (body, binary header length or None, request id)."""
    if len(req.inputs) != 1:
        names = [t.name for t in req.inputs]
        raise BadRequest(f"send exactly one input (features or the raw form), got {len(names)}: {names}")
    tensor = req.inputs[0]
    probs = runtime.predict(runtime.features(tensor.name, tensor.array))
    wanted = req.binary_outputs or dict.fromkeys(OUTPUTS, req.binary_default)
    if unknown := [n for n in wanted if n not in OUTPUTS]:
        raise BadRequest(f"model {runtime.name!r} has no output {unknown[0]!r}; outputs: {', '.join(OUTPUTS)}")
    rid = request_id(req.id)
    outputs: list[tuple[str, np.ndarray, bool]] = []
    for name, binary in wanted.items():
        arr = probs if name == "probabilities" else runtime.labels(probs)
        outputs.append((name, arr, binary))
    version = str(runtime.version) if runtime.version is not None else None
    body, header = encode_v2(runtime.name, version, rid, outputs)
    return body, header, rid


def predict_v1(runtime: ModelRuntime, instances: np.ndarray, rid: str | None = None) -> tuple[bytes, str]:
    """`{"instances": …}` → `{"predictions": [{"label", "probabilities"}, …]}`. The instance
    shape says which input it is: ready features, or the raw form (e.g. 28×28 pixels)."""
    match = next((s for s in runtime.inputs.values() if tuple(instances.shape[1:]) == s.shape), None)
    if match is None:
        shapes = " or ".join(str(list(s.shape)) for s in runtime.inputs.values())
        raise BadRequest(f"each instance must have shape {shapes}, got {list(instances.shape[1:])}")
    arr = instances
    if match.dtype.kind in "iu":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise BadRequest(f"input {match.name!r} takes whole numbers ({match.v2_datatype})")
        info = np.iinfo(match.dtype)
        if arr.min() < info.min or arr.max() > info.max:
            raise BadRequest(f"input {match.name!r} takes values in {info.min}..{info.max}")
    arr = arr.astype(match.dtype)
    probs = runtime.predict(runtime.features(match.name, arr))
    labels = runtime.labels(probs)
    rid = request_id(rid)
    doc: dict[str, Any] = {
        "predictions": [{"label": str(lab), "probabilities": p} for lab, p in zip(labels, probs, strict=True)],
        "model_name": runtime.name, "model_version": str(runtime.version) if runtime.version is not None else None,
        "id": rid,
    }
    return dumps(doc), rid
