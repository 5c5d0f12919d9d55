"""Bare handlers for serve_bench: each parses the request body fully with orjson and answers a
constant (a GET answers the constant without a body to parse: the readiness probe). No routing,
no validation, no model: the HTTP + JSON floor a server on this stack cannot go below.

- `rsgi_app`: granian's native RSGI interface (`granian --interface rsgi _bare:rsgi_app`), the
  fastest path granian has: THE LIMIT serve_bench measures everything against;
- `orjson_app`: the same as a raw ASGI app (`granian --interface asgi _bare:orjson_app`, or
  `uvicorn _bare:orjson_app`), the interface `shipyard serve` uses.
"""

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
