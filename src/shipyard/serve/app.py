"""The HTTP transport: a raw ASGI app (no framework: on a 7 KB JSON body the framework and the
JSON codec are the cost, not the 11 µs model). It only translates bytes and status codes; the
logic lives in `handlers`, `runtime` and `codec`.

Routes: V2 Open Inference Protocol (health, server and model metadata, model ready, infer with
JSON or binary tensors, repository index/load/unload) and the v1 `:predict` route."""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import re
from collections.abc import Awaitable, Callable
from typing import Any

from shipyard import __version__
from shipyard.errors import BadRequest, NotFound, PayloadTooLarge, ShipyardError
from shipyard.serve.codec import decode_v1, decode_v2, dumps
from shipyard.serve.handlers import infer_v2, predict_v1
from shipyard.serve.runtime import ModelRuntime

log = logging.getLogger("shipyard.serve")
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
MAX_BODY = 8 << 20

_MODEL = re.compile(r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?(?P<rest>/ready|/infer)?$")
_V1 = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?::(?P<verb>predict))?$")
_REPO = re.compile(r"^/v2/repository/models/(?P<name>[^/]+)/(?P<action>load|unload)$")


class Unauthorized(ShipyardError):
    http_status = 401


class Forbidden(ShipyardError):
    http_status = 403


class MethodNotAllowed(ShipyardError):
    http_status = 405


class Models:
    """What this process serves: name → {version: runtime}, and each name's default version.
    `loader(ref)` returns (runtime) for a registry reference such as `digits@production`."""

    def __init__(self, refs: list[str], loader: Callable[[str], ModelRuntime]) -> None:
        self.refs = refs
        self.loader = loader
        self.by_name: dict[str, dict[str, ModelRuntime]] = {}
        self.default: dict[str, str] = {}
        self.ready = False

    def load_all(self) -> None:
        for ref in self.refs:
            self.load(ref)
        self.ready = True

    def load(self, ref: str) -> ModelRuntime:
        rt = self.loader(ref)
        version = str(rt.version)
        # the new version is loaded and warm before it becomes visible (swap, never a gap)
        self.by_name.setdefault(rt.name, {})[version] = rt
        self.default[rt.name] = version
        log.info("serving %s version %s (%s)", rt.name, version, rt.bundle.meta.get("variant"))
        return rt

    def unload(self, name: str) -> None:
        if name not in self.by_name:
            raise NotFound(f"model {name!r} is not loaded")
        del self.by_name[name]
        del self.default[name]

    def get(self, name: str, version: str | None) -> ModelRuntime:
        versions = self.by_name.get(name)
        if not versions:
            served = ", ".join(sorted(self.by_name)) or "none"
            raise NotFound(f"unknown model {name!r} (served: {served})")
        key = version or self.default[name]
        if key not in versions:
            raise NotFound(f"model {name!r} has no version {key!r} here (served: {', '.join(sorted(versions))})")
        return versions[key]


class App:
    """The ASGI application; `create_app` builds it."""

    def __init__(self, models: Models, *, max_body: int = MAX_BODY, token: str | None = None,
                 require_token_for_inference: bool = False, management: bool = True) -> None:
        self.models = models
        self.management = management
        self.max_body = max_body
        self.token = token
        self.require_token_for_inference = require_token_for_inference

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        headers: list[tuple[bytes, bytes]] = []
        try:
            status, body, headers = await self._route(scope, receive)
        except ShipyardError as e:
            status, body = e.http_status, dumps({"error": str(e)})
        except Exception as e:  # noqa: BLE001 - a bug must not take the server down
            log.exception("unexpected error on %s %s", scope.get("method"), scope.get("path"))
            status, body = 500, dumps({"error": f"internal error: {type(e).__name__}"})
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()), *headers]})
        await send({"type": "http.response.body", "body": body})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await asyncio.get_running_loop().run_in_executor(None, self.models.load_all)
                except Exception as e:  # noqa: BLE001 - report and refuse to start
                    log.error("start-up failed: %s", e)
                    await send({"type": "lifespan.startup.failed", "message": str(e)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _body(self, scope: Scope, receive: Receive) -> bytes:
        for k, v in scope["headers"]:
            if k == b"content-length" and v.isdigit() and int(v) > self.max_body:
                raise PayloadTooLarge(f"request body of {int(v):,} bytes is over the {self.max_body:,}-byte limit")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise PayloadTooLarge(f"request body is over the {self.max_body:,}-byte limit")
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    def _check_management(self, scope: Scope) -> None:
        if not self.management:
            raise Forbidden("management routes are off: set SHIPYARD_TOKEN to use them on a non-loopback address")
        self._check_token(scope)

    def _check_token(self, scope: Scope) -> None:
        if self.token is None:
            return
        auth = next((v for k, v in scope["headers"] if k == b"authorization"), b"").decode("latin-1")
        if not hmac.compare_digest(auth.encode(), f"Bearer {self.token}".encode()):
            raise Unauthorized("missing or wrong bearer token")

    async def _route(self, scope: Scope, receive: Receive) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        method, path = scope["method"], scope["path"]
        if path in ("/v2/health/live", "/v2/health/ready"):
            ready = path.endswith("live") or self.models.ready
            return (200 if ready else 503), dumps({"live": True} if path.endswith("live") else {"ready": ready}), []
        if path == "/openapi.json":
            from shipyard.serve.openapi import document

            return 200, dumps(document(sorted(self.models.by_name))), []
        if path == "/v2":
            return 200, dumps({"name": "shipyard", "version": __version__,
                               "extensions": ["binary_tensor_data", "model_repository"]}), []
        if m := _MODEL.match(path):
            name, version, rest = m["name"], m["version"], m["rest"]
            rt = self.models.get(name, version)
            if rest == "/ready":
                return 200, dumps({"name": name, "ready": True}), []
            if rest is None:
                return 200, dumps(rt.metadata()), []
            if method != "POST":
                raise MethodNotAllowed("infer takes POST")
            if self.require_token_for_inference:
                self._check_token(scope)
            body = await self._body(scope, receive)
            header_len = None
            for k, v in scope["headers"]:
                if k == b"inference-header-content-length":
                    if not v.isdigit():
                        raise BadRequest("Inference-Header-Content-Length must be an integer")
                    header_len = int(v)
            req = decode_v2(body, header_len)
            out, out_header, rid = infer_v2(rt, req)
            extra = [(b"x-request-id", rid.encode())]
            if out_header is not None:
                extra.append((b"inference-header-content-length", str(out_header).encode()))
            return 200, out, extra
        if m := _V1.match(path):
            rt = self.models.get(m["name"], None)
            if m["verb"] is None:
                return 200, dumps({"name": rt.name, "ready": True, "version": str(rt.version)}), []
            if method != "POST":
                raise MethodNotAllowed(":predict takes POST")
            if self.require_token_for_inference:
                self._check_token(scope)
            out, rid = predict_v1(rt, decode_v1(await self._body(scope, receive)))
            return 200, out, [(b"x-request-id", rid.encode())]
        if path == "/v2/repository/index":
            self._check_management(scope)
            return 200, dumps([{"name": n, "version": self.models.default[n], "state": "READY"}
                               for n in sorted(self.models.by_name)]), []
        if m := _REPO.match(path):
            self._check_management(scope)
            if method != "POST":
                raise MethodNotAllowed("repository actions take POST")
            if m["action"] == "unload":
                self.models.unload(m["name"])
            else:
                ref = m["name"] if "@" in m["name"] else f"{m['name']}@production"
                await asyncio.get_running_loop().run_in_executor(None, self.models.load, ref)
            return 200, b"{}", []
        raise NotFound(f"no route {method} {path}")


def create_app(registry: Any = None, models: list[str] | None = None, settings: Any = None, *,
               threads: int = 1, token: str | None = None, max_body: int = MAX_BODY,
               require_token_for_inference: bool = False, management: bool = True) -> App:
    """The server application over `registry`, serving `models` (`NAME` for its production alias,
    `NAME@ALIAS` or `NAME@VERSION`); embed it in any ASGI server or run it with `shipyard serve`."""
    from shipyard.registry import Registry

    reg = registry or Registry(settings=settings)

    def loader(ref: str) -> ModelRuntime:
        ref = ref if "@" in ref else f"{ref}@production"
        mv = reg.get(ref)
        return ModelRuntime(reg.load(mv.ref), version=mv.version, name=mv.name, threads=threads)

    refs = models if models is not None else [f"{m.name}@production" for m in reg.list() if "production" in m.aliases]
    return App(Models(refs, loader), max_body=max_body, token=token,
               require_token_for_inference=require_token_for_inference, management=management)


def app_from_env() -> App:
    """Factory for server worker processes: configuration arrives in SHIPYARD_SERVE_* variables."""
    from shipyard.settings import Settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    refs = [r for r in os.environ.get("SHIPYARD_SERVE_MODELS", "").split(",") if r]
    return create_app(None, refs or None, Settings.from_env(),
                      threads=int(os.environ.get("SHIPYARD_SERVE_THREADS", "1")),
                      token=os.environ.get("SHIPYARD_TOKEN") or None,
                      max_body=int(os.environ.get("SHIPYARD_SERVE_MAX_BODY", str(MAX_BODY))),
                      require_token_for_inference=os.environ.get("SHIPYARD_SERVE_AUTH_INFERENCE") == "1",
                      management=os.environ.get("SHIPYARD_SERVE_MANAGEMENT", "1") == "1")
