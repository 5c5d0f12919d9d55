"""What real clients expect besides inference: KServe's v1 liveness and model lists, `/v2/` as
`/v2`, and compressed request bodies (tritonclient's `request_compression_algorithm`)."""

from __future__ import annotations

import gzip
import zlib

import httpx
import numpy as np

from shipyard.registry import Registry
from shipyard.serve.http import HttpApp

from .test_app import features, infer_body, run


def test_liveness_and_model_lists(registry: Registry) -> None:
    async def scenario(c: httpx.AsyncClient, app: HttpApp) -> None:
        assert (await c.get("/")).json() == {"status": "alive"}
        assert (await c.get("/v2/")).json() == (await c.get("/v2")).json()
        assert (await c.get("/v2/models")).json() == {"models": [{"name": "tiny", "version": "1", "state": "READY"}]}
        assert (await c.get("/v1/models")).json() == {"models": ["tiny"]}
        head = await c.head("/v2/health/ready")  # GET without the body, for probes that use HEAD
        assert head.status_code == 200 and head.content == b"" and int(head.headers["content-length"]) > 0
        assert (await c.head("/v2/models/tiny/infer")).status_code == 405

    run(registry, scenario)


def test_gzip_and_deflate_bodies_are_decoded_within_the_limit(registry: Registry) -> None:
    x = features(2)
    body = infer_body(x)

    async def scenario(c: httpx.AsyncClient, app: HttpApp) -> None:
        plain = (await c.post("/v2/models/tiny/infer", content=body)).json()["outputs"][0]["data"]
        for encoding, packed in (("gzip", gzip.compress(body)), ("deflate", zlib.compress(body))):
            r = await c.post("/v2/models/tiny/infer", content=packed, headers={"content-encoding": encoding})
            assert r.status_code == 200, r.text
            np.testing.assert_allclose(r.json()["outputs"][0]["data"], plain)
        r = await c.post("/v2/models/tiny/infer", content=body, headers={"content-encoding": "br"})
        assert r.status_code == 415 and "Content-Encoding 'br'" in r.json()["error"]
        r = await c.post("/v2/models/tiny/infer", content=b"not gzip", headers={"content-encoding": "gzip"})
        assert r.status_code == 400 and "does not decompress" in r.json()["error"]
        bomb = gzip.compress(b"0" * (3 << 20))  # 3 MiB of zeros in a few KB: over the 1 MiB limit once decoded
        assert len(bomb) < 10_000
        r = await c.post("/v2/models/tiny/infer", content=bomb, headers={"content-encoding": "gzip"})
        assert r.status_code == 413 and "decompressed" in r.json()["error"]

    run(registry, scenario, max_body_mb=1.0)
