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
