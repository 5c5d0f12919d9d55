"""Bare ASGI handlers for serve_bench: parse the same JSON body fully, answer a constant. The
fastest of them is the HTTP limit our server is measured against."""

import json

import orjson

ANSWER = b'{"model_name":"bare","outputs":[]}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())]


async def _read(receive):  # type: ignore[no-untyped-def]
    chunks = []
    while True:
        m = await receive()
        chunks.append(m.get("body", b""))
        if not m.get("more_body"):
            return b"".join(chunks)


def _make(loads):  # type: ignore[no-untyped-def]
    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                while (await receive())["type"] != "lifespan.shutdown":
                    await send({"type": "lifespan.startup.complete"})
                await send({"type": "lifespan.shutdown.complete"})
            return
        doc = loads(await _read(receive))
        assert doc["inputs"]
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        await send({"type": "http.response.body", "body": ANSWER})
    return app


json_app = _make(json.loads)
orjson_app = _make(orjson.loads)


def _simdjson_loads(body):  # type: ignore[no-untyped-def]
    # parse fully (simdjson validates the whole document) and take the tensor as a buffer, as the
    # server's codec does: the fastest honest parse of this body
    import numpy as np
    import simdjson

    doc = simdjson.Parser().parse(body)
    data = np.frombuffer(doc["inputs"][0]["data"].as_buffer(of_type="d"))
    return {"inputs": [data.size]}


simdjson_app = _make(_simdjson_loads)


def starlette_app():  # type: ignore[no-untyped-def]
    """What most teams start from: Starlette with the standard json module (a factory, so the
    bench can run without starlette installed)."""
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    async def infer(request):  # type: ignore[no-untyped-def]
        doc = json.loads(await request.body())
        assert doc["inputs"]
        return Response(ANSWER, media_type="application/json")

    return Starlette(routes=[Route("/{path:path}", infer, methods=["POST", "GET"])])
