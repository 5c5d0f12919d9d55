"""Protocol logic shared by every transport: a decoded request and a runtime in, the response
body out. The HTTP layer only translates bytes and status codes."""

from __future__ import annotations

import itertools
import os
from typing import Any

import numpy as np

from shipyard.errors import BadRequest
from shipyard.serve.codec import InferRequest, dumps, encode_v2
from shipyard.serve.runtime import LABEL, ModelRuntime

OUTPUTS = ("probabilities", LABEL)


_PREFIX = os.urandom(6).hex()
_COUNTER = itertools.count(1)


def request_id(rid: str | None) -> str:
    """The client's id (the V2 body's `id`, else an `X-Request-ID` header: a load balancer sets
    one per client request and keeps it when it retries, so the prediction log can tell a retry
    from a new request), or a new one: a random per-process prefix and a counter (unique across
    workers and restarts, and ten times cheaper than uuid4 on the hot path)."""
    if not rid:
        return f"{_PREFIX}-{next(_COUNTER)}"
    if len(rid) > 256 or not (rid.isascii() and rid.isprintable()):
        raise BadRequest("a request id must be at most 256 printable ASCII characters")
    return rid


def prepare_v2(runtime: ModelRuntime, req: InferRequest) -> tuple[np.ndarray, dict[str, bool]]:
    """Validate a V2 request against the model: (features for the graph, wanted outputs → binary?)."""
    if len(req.inputs) != 1:
        names = [t.name for t in req.inputs]
        raise BadRequest(f"send exactly one input (features or the raw form), got {len(names)}: {names}")
    tensor = req.inputs[0]
    features = runtime.features(tensor.name, tensor.array)
    wanted = req.binary_outputs or dict.fromkeys(OUTPUTS, req.binary_default)
    if req.binary_outputs and (unknown := [n for n in wanted if n not in OUTPUTS]):
        raise BadRequest(f"model {runtime.name!r} has no output {unknown[0]!r}; outputs: {', '.join(OUTPUTS)}")
    return features, wanted


def infer_v2(runtime: ModelRuntime, req: InferRequest) -> tuple[bytes, int | None, str]:
    """Run a V2 request inline; returns (body, binary header length or None, request id)."""
    features, wanted = prepare_v2(runtime, req)
    rid = request_id(req.id)
    body, header = respond_v2(runtime, runtime.predict(features), wanted, rid)
    return body, header, rid


def respond_v2(runtime: ModelRuntime, probs: np.ndarray, wanted: dict[str, bool], rid: str) -> tuple[bytes, int | None]:
    """The V2 response body for the model's probabilities (and its binary header length, if any)."""
    outputs: list[tuple[str, np.ndarray, bool]] = []
    for name, binary in wanted.items():
        arr = probs if name == "probabilities" else runtime.labels(probs)
        outputs.append((name, arr, binary))
    version = str(runtime.version) if runtime.version is not None else None
    return encode_v2(runtime.name, version, rid, outputs)


def predict_v1(runtime: ModelRuntime, instances: np.ndarray, rid: str | None = None) -> tuple[bytes, str]:
    """`{"instances": …}` → `{"predictions": [{"label", "probabilities"}, …]}`, inline."""
    rid = request_id(rid)
    return respond_v1(runtime, runtime.predict(prepare_v1(runtime, instances)), rid), rid


def prepare_v1(runtime: ModelRuntime, instances: np.ndarray) -> np.ndarray:
    """The instance shape says which input it is: ready features, or the raw form (e.g. 28×28
    pixels). Returns the graph's features."""
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
    return runtime.features(match.name, arr.astype(match.dtype))


def respond_v1(runtime: ModelRuntime, probs: np.ndarray, rid: str) -> bytes:
    labels = runtime.labels(probs)
    doc: dict[str, Any] = {
        "predictions": [{"label": str(lab), "probabilities": p} for lab, p in zip(labels, probs, strict=True)],
        "model_name": runtime.name, "model_version": str(runtime.version) if runtime.version is not None else None,
        "id": rid,
    }
    return dumps(doc)
