"""`/explain` on a server: the same body as `/infer` (JSON or binary tensors, raw, feature or
column inputs) plus request-level parameters (`shipyard.attribution.explainer.Params`), answered as
a V2 response whose outputs are the attributions, shaped like the inputs sent, and whose
parameters say how they came (target, method, the target's output and baseline output). The v1
route `/v1/models/NAME:explain` answers in v1 form.

Explanations run on a thread of their own, never inside an inference batch, a few at a time
(more wait for a 503 with Retry-After); each is recorded with its request id apart from the
prediction log, so it never enters a drift window."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np
import sqlalchemy as sa

from shipyard.attribution import record
from shipyard.attribution.explainer import Explainer, Explanation, Params
from shipyard.errors import BadRequest, Overloaded
from shipyard.serve.codec import InferRequest, encode_v2
from shipyard.serve.codec_v1 import decode_v1
from shipyard.serve.jsonrule import dumps, parse_json

if TYPE_CHECKING:
    from shipyard.serve.runtime import ModelRuntime

log = logging.getLogger("shipyard.serve")
#: explanations admitted at once (one computes, the rest wait); beyond: 503
MAX_WAITING = 4


class ExplainService:
    """One per server worker: an explainer per served version, one thread to run them on."""

    def __init__(self, engine: sa.Engine | None) -> None:
        self.engine = engine
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="explain")
        self._explainers: dict[tuple[str, int | None, str], Explainer] = {}
        self._admitted = 0

    def _explainer(self, rt: ModelRuntime) -> Explainer:
        key = (rt.name, rt.version, str(rt.bundle.path))
        ex = self._explainers.get(key)
        if ex is None:
            ex = self._explainers[key] = Explainer(rt.bundle)
        return ex

    async def _run(self, rt: ModelRuntime, features: np.ndarray, params: Params, kind: str, name: str,
                   shape: tuple[int, ...] | None, rid: str) -> Explanation:
        if self._admitted >= MAX_WAITING:
            raise Overloaded(f"{self._admitted} explanations are under way on this worker; retry shortly")
        self._admitted += 1
        try:
            def work() -> Explanation:
                ex = self._explainer(rt).explain(features, params, kind=kind, input_name=name, shape=shape)
                if self.engine is not None:
                    try:
                        record.save(self.engine, rt.name, rt.version, rid, ex)
                    except sa.exc.SQLAlchemyError as e:  # the answer stands; the record is lost, and said so
                        log.warning("explain: %s %s not recorded (%s)", rt.name, rid, type(e).__name__)
                return ex
            return await asyncio.get_running_loop().run_in_executor(self._pool, work)
        finally:
            self._admitted -= 1

    async def v2(self, rt: ModelRuntime, request: InferRequest, rid: str) -> tuple[bytes, int | None]:
        """The V2 answer (body, binary header length) to an explain request."""
        params = Params.parse(request.parameters)
        first = rt.inputs.get(request.inputs[0].name) if len(request.inputs) == 1 else None
        if len(request.inputs) == 1 and (first is None or first.kind != "column"):  # an unknown name: its 400
            tensor = request.inputs[0]
            features = rt.features(tensor.name, tensor.array, checked=tensor.checked)
            kind, name, shape = rt.inputs[tensor.name].kind, tensor.name, tuple(tensor.array.shape[1:])
        else:  # a table's columns, one input each
            features = rt.table_features([(t.name, t.array) for t in request.inputs])
            kind, name, shape = "columns", "", None
        ex = await self._run(rt, features, params, kind, name, shape, rid)
        names = list(ex.attributions)
        wanted = request.binary_outputs or dict.fromkeys(names, request.binary_default)
        if unknown := [n for n in wanted if n not in names]:
            raise BadRequest(f"explain answers {', '.join(names)}; there is no output {unknown[0]!r}")
        outputs = [(n, ex.attributions[n], binary) for n, binary in wanted.items()]
        version = str(rt.version) if rt.version is not None else None
        return encode_v2(rt.name, version, rid, outputs, parameters=ex.summary())

    async def v1(self, rt: ModelRuntime, body: bytes, rid: str) -> bytes:
        """KServe v1 `:explain`: `{"instances": …}` or `{"inputs": …}` as for `:predict`, with an
        optional `parameters` object; answered as `{"explanations": [one per instance], …}`."""
        from shipyard.serve.dataplane import _v1_features

        doc = parse_json(body)
        params = Params.parse(doc.get("parameters") if isinstance(doc, dict) else None)
        if isinstance(doc, dict) and doc.get("parameters") is not None and not isinstance(doc["parameters"], dict):
            raise BadRequest("'parameters' must be an object")
        request = decode_v1(body)
        if request.columns is not None:
            features = rt.table_features(list(request.columns.items()))
            kind, name, shape = "columns", "", None
        else:
            features = _v1_features(rt, request.array, request.input)
            inst = tuple(request.array.shape[1:])
            spec = rt.inputs.get(request.input) if request.input else None
            if spec is None:
                f = rt.inputs.get(rt.onnx_input)
                spec = f if f is not None and inst == f.shape and not rt.raw_like_features else \
                    next((s for s in rt.inputs.values() if s.kind == "raw" and s.shape == inst), f)
            kind, name, shape = (spec.kind, spec.name, inst) if spec is not None else ("features", "input", inst)
        ex = await self._run(rt, features, params, kind, name, shape, rid)
        rows: list[dict[str, Any]] = []
        for i in range(len(ex.target)):
            attr: Any = ex.attributions["attributions"][i] if "attributions" in ex.attributions else \
                {k.split("/", 1)[1]: float(v[i]) for k, v in ex.attributions.items()}
            rows.append({"attributions": attr, "target": ex.target[i], "target_label": ex.target_label[i],
                         "output": float(ex.output[i]), "baseline_output": float(ex.baseline_output[i])})
        summary = {k: v for k, v in ex.summary().items()
                   if k not in ("target", "target_label", "output", "baseline_output")}
        return dumps({"explanations": rows, **summary, "model_name": rt.name,
                      "model_version": str(rt.version) if rt.version is not None else None, "id": rid})

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
