"""Bare handlers for serve_bench: each parses the request body fully with orjson and answers a
constant (a GET answers the constant without a body to parse: the readiness probe). No routing,
no validation, no model: the HTTP + JSON floor a server on this stack cannot go below.

- `rsgi_app`: granian's native RSGI interface (`granian --interface rsgi _bare:rsgi_app`), the
  fastest path granian has: THE LIMIT serve_bench measures everything against;
- `orjson_app`: the same as a raw ASGI app (`granian --interface asgi _bare:orjson_app`, or
  `uvicorn _bare:orjson_app`);
- `rsgi_model_app`: `rsgi_app` that also runs the model: the parsed instance through ONNX Runtime
  (one thread, inline, one request per call), its probabilities answered. The floor of any server
  that runs this model per request on this stack, with nothing else (no validation, batching,
  log or metrics). The model is the file `BARE_MODEL` names.
"""

import os

import numpy as np
import orjson

ANSWER = b'{"model_name":"bare","outputs":[]}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())]
RSGI_HEADERS = [("content-type", "application/json")]


async def rsgi_app(scope, proto):  # type: ignore[no-untyped-def]
    if scope.proto != "http":
        return
    body = await proto()
    if scope.method == "POST":
        doc = orjson.loads(body)
        assert doc["inputs"]
    proto.response_bytes(200, RSGI_HEADERS, ANSWER)


async def _read(receive):  # type: ignore[no-untyped-def]
    chunks = []
    while True:
        m = await receive()
        chunks.append(m.get("body", b""))
        if not m.get("more_body"):
            return b"".join(chunks)


async def orjson_app(scope, receive, send):  # type: ignore[no-untyped-def]
    if scope["type"] != "http":
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
        return
    body = await _read(receive)
    if scope["method"] == "POST":
        doc = orjson.loads(body)
        assert doc["inputs"]
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": ANSWER})


_session = None


def _model():  # type: ignore[no-untyped-def]
    global _session
    if _session is None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        _session = ort.InferenceSession(os.environ["BARE_MODEL"], opts, providers=["CPUExecutionProvider"])
    return _session


async def rsgi_model_app(scope, proto):  # type: ignore[no-untyped-def]
    if scope.proto != "http":
        return
    body = await proto()
    if scope.method != "POST":  # the readiness probe: load the model before the first request
        _model()
        proto.response_bytes(200, RSGI_HEADERS, ANSWER)
        return
    spec = orjson.loads(body)["inputs"][0]
    x = np.asarray(spec["data"], dtype=np.float32).reshape(spec["shape"])
    probs = _model().run(None, {"input": x})[0]
    answer = {"outputs": [{"name": "probabilities", "data": probs.ravel()}]}
    proto.response_bytes(200, RSGI_HEADERS, orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY))
