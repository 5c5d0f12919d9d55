"""The HTTP transport: a raw RSGI and ASGI app (no framework: on a 7 KB JSON body the framework
and the JSON codec are the cost, not the 11 µs model). It turns bytes into data-plane calls and
answers into bytes and status codes; it owns the route table (from which `/openapi.json` is
generated), authentication, the body limit, the drain and the start-up and shutdown. The server
interfaces themselves (granian's RSGI, which `shipyard serve` runs; ASGI for uvicorn and
embedding) are in `serve/wire.py`; what is served lives in `dataplane`.

Routes: V2 Open Inference Protocol (health, server and model metadata, model ready, infer with
JSON or binary tensors, repository index/load/unload), the v1 `:predict` route, feedback, and
management routes to re-read the registry and to set a model's traffic split."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from shipyard._version import __version__
from shipyard.errors import BadRequest, NotFound, Overloaded, ShipyardError
from shipyard.monitor import metrics
from shipyard.serve import openapi
from shipyard.serve.codec import decode_v2, dumps, parse_json
from shipyard.serve.codec_v1 import decode_v1
from shipyard.serve.config import ServeConfig
from shipyard.serve.dataplane import DataPlane, request_id
from shipyard.serve.explaining import ExplainService
from shipyard.serve.follow import Follower, freeze_heap
from shipyard.serve.guard import CLOSES, Guard
from shipyard.serve.supervisor import capacity, worker_up
from shipyard.serve.wire import AsgiRequest, Receive, Request, RsgiRequest, Send, TextHeaders, asgi_reply

log = logging.getLogger("shipyard.serve")
Scope = dict[str, Any]
Reply = tuple[int, bytes, TextHeaders]
ROUTE_KEY = "x-shipyard-route-key"
_JSON: TextHeaders = [("content-type", "application/json")]
_HTML: TextHeaders = [("content-type", "text/html; charset=utf-8")]
_PATH_CACHE = 4096  # paths come from clients: the cache of matched paths stays bounded


class MethodNotAllowed(ShipyardError):
    http_status = 405


Handler = Callable[[Request], Awaitable[Reply]]


@dataclass(frozen=True)
class Route:
    """One row of the route table. `access`: `public` (health, server metadata, the OpenAPI
    document: always open), `read` (model metadata, metrics, dashboard) and `inference` (infer,
    feedback) need the token when `auth_inference`; `management` needs the token, or a server
    bound to loopback. `writes`: the methods that change state — they refuse cross-site
    requests (an Origin not allowed) and bodies that are not JSON. `docs`: the OpenAPI
    operation per method."""

    pattern: str
    methods: dict[str, Handler]
    access: str
    what: str  # names the route in a 405 message
    docs: dict[str, dict[str, Any]] = field(default_factory=dict)
    metric_route: str | None = None  # inference routes count their errors under this route label
    writes: frozenset[str] = frozenset()

    @property
    def regex(self) -> re.Pattern[str]:
        # `{name}` is one path segment; non-greedy so `/v1/models/{name}:predict` splits at the colon
        return re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+?)", re.escape(self.pattern)
                                       .replace(r"\{", "{").replace(r"\}", "}")) + "$")


class HttpApp:
    """The RSGI and ASGI application; `serve.app.create_app` builds it."""

    def __init__(self, plane: DataPlane, config: ServeConfig, *, follower: Follower | None = None) -> None:
        self.plane = plane
        self.follower = follower
        self.guard = Guard(config)
        self.auth_inference = config.auth_inference
        self.drain_timeout_s = config.drain_timeout_s
        self.drain_file = config.drain_file  # created by the supervisor on SIGTERM, for every worker
        self._draining = False
        self.inflight = 0
        self.explainer = ExplainService(plane.fleet.registry.engine)
        self.routes = self._routes()
        self._compiled = [(r.regex, r) for r in self.routes]
        self._paths: dict[str, tuple[Route, dict[str, str]] | None] = {}
        self._ticker: asyncio.Task[None] | None = None

    # -- the route table ----------------------------------------------------------------------
    def _routes(self) -> list[Route]:
        d = openapi
        return [
            Route("/v2/models/{name}/infer", {"POST": self._infer_v2}, "inference", "infer",
                  {"POST": d.infer([d.NAME])}, "v2"),
            Route("/v2/models/{name}/versions/{version}/infer", {"POST": self._infer_v2}, "inference", "infer",
                  {"POST": d.infer([d.NAME, d.VERSION])}, "v2"),
            Route("/v1/models/{name}:predict", {"POST": self._infer_v1}, "inference", ":predict",
                  {"POST": d.V1_PREDICT}, "v1"),
            Route("/v2/models/{name}/explain", {"POST": self._explain_v2}, "inference", "explain",
                  {"POST": d.explain([d.NAME])}, "explain"),
            Route("/v2/models/{name}/versions/{version}/explain", {"POST": self._explain_v2}, "inference",
                  "explain", {"POST": d.explain([d.NAME, d.VERSION])}, "explain"),
            Route("/v1/models/{name}:explain", {"POST": self._explain_v1}, "inference", ":explain",
                  {"POST": d.V1_EXPLAIN}, "explain"),
            Route("/v2/models/{name}/feedback", {"POST": self._feedback}, "inference", "feedback",
                  {"POST": d.FEEDBACK}, writes=frozenset({"POST"})),
            Route("/v2/health/live", {"GET": self._live}, "public", "live", {"GET": d.ok(schema="Live")}),
            Route("/v2/health/ready", {"GET": self._health}, "public", "ready", {"GET": d.READY}),
            Route("/v2", {"GET": self._server}, "public", "server metadata",
                  {"GET": d.ok("Server metadata", "ServerMetadata")}),
            Route("/v2/", {"GET": self._server}, "public", "server metadata",
                  {"GET": d.ok("Server metadata", "ServerMetadata")}),
            Route("/", {"GET": self._alive}, "public", "liveness", {"GET": d.ok("KServe v1 liveness", "Alive")}),
            Route("/v2/models", {"GET": self._models}, "read", "models",
                  {"GET": d.ok("The models served here", "ModelList")}),
            Route("/v1/models", {"GET": self._models_v1}, "read", "models",
                  {"GET": d.ok("The models served here (KServe v1)", "ModelNames")}),
            Route("/v2/models/{name}", {"GET": self._meta}, "read", "model metadata",
                  {"GET": d.model_get(schema="ModelMetadata")}),
            Route("/v2/models/{name}/ready", {"GET": self._ready}, "read", "model ready",
                  {"GET": d.model_get()}),
            Route("/v2/models/{name}/versions/{version}", {"GET": self._meta}, "read", "model metadata",
                  {"GET": d.model_get(version=True, schema="ModelMetadata")}),
            Route("/v2/models/{name}/versions/{version}/ready", {"GET": self._ready}, "read", "model ready",
                  {"GET": d.model_get(version=True)}),
            Route("/v1/models/{name}", {"GET": self._v1_meta}, "read", "model status", {"GET": d.model_get()}),
            Route("/v2/repository/index", {"GET": self._index, "POST": self._index}, "management", "index",
                  {"GET": d.INDEX, "POST": d.INDEX}),
            Route("/v2/repository/refresh", {"POST": self._refresh}, "management", "refresh",
                  {"POST": d.REFRESH}, writes=frozenset({"POST"})),
            Route("/v2/repository/models/{name}/load", {"POST": self._load}, "management", "load",
                  {"POST": d.repository_action()}, writes=frozenset({"POST"})),
            Route("/v2/repository/models/{name}/unload", {"POST": self._unload}, "management", "unload",
                  {"POST": d.repository_action()}, writes=frozenset({"POST"})),
            Route("/v2/repository/models/{name}/traffic", {"GET": self._traffic, "POST": self._set_traffic},
                  "management", "traffic", {"GET": d.TRAFFIC_GET, "POST": d.TRAFFIC_POST},
                  writes=frozenset({"POST"})),
            Route("/metrics", {"GET": self._metrics}, "read", "metrics", {"GET": d.METRICS}),
            Route("/openapi.json", {"GET": self._openapi}, "public", "openapi", {"GET": d.ok()}),
            Route("/dashboard", {"GET": self._dashboard}, "read", "dashboard", {"GET": d.DASHBOARD}),
            Route("/dashboard/fragment", {"GET": self._fragment}, "read", "dashboard", {"GET": d.FRAGMENT}),
            Route("/dashboard/assets/{file}", {"GET": self._asset}, "read", "dashboard", {"GET": d.ASSET}),
        ]

    def _match(self, path: str) -> tuple[Route, dict[str, str]] | None:
        try:
            return self._paths[path]
        except KeyError:
            pass
        found = None
        for regex, route in self._compiled:
            if m := regex.match(path):
                found = (route, m.groupdict())
                break
        if len(self._paths) >= _PATH_CACHE:
            self._paths.clear()
        self._paths[path] = found
        return found

    # -- the server interfaces (serve/wire.py) -----------------------------------------------
    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        """A request from granian (RSGI): a HEAD answer's body is left out by granian itself."""
        if scope.proto == "http":
            status, body, headers = await self.handle(RsgiRequest(scope, proto))
            proto.response_bytes(status, headers, body)

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        """granian calls this in each worker before it serves: start up, or exit (as a failed
        ASGI lifespan start-up does), naming why."""
        try:
            loop.run_until_complete(self.startup())
        except Exception as e:  # noqa: BLE001 - report and refuse to start
            log.error("start-up failed: %s", e)
            sys.exit(1)

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.run_until_complete(self.shutdown())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI (uvicorn, embedding, the in-process tests)."""
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self._lifespan(receive, send)
            return
        status, body, headers = await self.handle(AsgiRequest(scope, receive))
        await asgi_reply(send, scope["method"], status, body, headers)

    async def handle(self, req: Request) -> Reply:
        """Route, guard and answer one request; every error becomes its status and a JSON body."""
        self.inflight += 1
        headers = _JSON
        t0 = time.perf_counter()
        matched = client = None
        try:
            matched = self._match(req.path)
            if matched is None:
                raise NotFound(f"no route {req.method} {req.path}")
            route, req.params = matched
            method = req.method
            # HEAD is GET without the body (RFC 9110), for balancers and probes that use it
            handler = route.methods.get("GET" if method == "HEAD" else method)
            if handler is None:
                raise MethodNotAllowed(f"{route.what} takes {' or '.join(route.methods)}")
            guard = self.guard
            if guard.hosts is not None:
                guard.check_host(req)
            if route.access == "management" or (self.auth_inference and route.access != "public"):
                guard.authorize(req, route.access)
            if method in route.writes:
                guard.check_write(req)
            if route.access != "public":  # health and metadata stay open to balancers under any load
                client = guard.admit(req, self.inflight)
            status, body, headers = await handler(req)
        except ShipyardError as e:
            status, body = e.http_status, dumps({"error": str(e)})
            if isinstance(e, Overloaded):
                headers = [*_JSON, ("retry-after", str(e.retry_after))]
            if isinstance(e, CLOSES):  # its body was not read (all of it): the connection cannot go on
                headers = [*headers, ("connection", "close")]
            self._count_error(matched, status, t0)
        except Exception as e:  # noqa: BLE001 - a bug must not take the server down
            log.exception("unexpected error on %s %s", req.method, req.path)
            status, body = 500, dumps({"error": f"internal error: {type(e).__name__}"})
            self._count_error(matched, status, t0)
        finally:
            self.inflight -= 1
            if client is not None:
                self.guard.release(client)
        return status, body, headers

    def _count_error(self, matched: tuple[Route, dict[str, str]] | None, status: int, t0: float) -> None:
        if matched is not None and matched[0].metric_route is not None:
            self.plane.observe_error(matched[1].get("name"), matched[0].metric_route, status,
                                     time.perf_counter() - t0)

    async def startup(self) -> None:
        """Load what is served, start following the registry, the log and the gauges; then this
        worker counts as capacity. Raises when it cannot serve."""
        loop = asyncio.get_running_loop()
        fleet = self.plane.fleet
        await loop.run_in_executor(None, fleet.refresh)
        await loop.run_in_executor(None, fleet.check_marker)
        freeze_heap()
        if self.follower is not None:
            self.follower.start(loop)
        if self.plane.request_metrics.enabled:
            self._ticker = loop.create_task(self._tick())
        self.plane.start()
        worker_up(self.drain_file)  # this worker now counts as capacity (serve/supervisor.py)

    async def shutdown(self) -> None:
        await self.drain()
        await self.plane.stop()
        self.explainer.close()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as e:  # noqa: BLE001 - report and refuse to start
                    log.error("start-up failed: %s", e)
                    await send({"type": "lifespan.startup.failed", "message": str(e)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    @property
    def draining(self) -> bool:
        if not self._draining and self.drain_file is not None and os.path.exists(self.drain_file):
            self._draining = True
        return self._draining

    async def drain(self) -> None:
        """Stop following the registry; wait (up to the drain timeout) for requests in flight,
        queued batches and shadow copies to finish."""
        self._draining = True
        if self.follower is not None:
            self.follower.stop()
        if self._ticker is not None:
            self._ticker.cancel()
        deadline = time.monotonic() + self.drain_timeout_s
        while self.inflight or self.plane.busy:
            if time.monotonic() >= deadline:
                log.warning("drain timeout (%.0f s) reached with %d request(s) in flight", self.drain_timeout_s,
                            self.inflight)
                break
            await asyncio.sleep(0.01)

    async def _tick(self) -> None:
        """Once a second: the gauges that describe this worker (queue depth, in flight, aliases)."""
        while True:
            self.plane.export_metrics(inflight=self.inflight)
            await asyncio.sleep(1.0)

    # -- inference ----------------------------------------------------------------------------
    async def _infer_v2(self, req: Request) -> Reply:
        t0 = time.perf_counter()
        headers = req.headers
        raw_len: str | None = headers.get("inference-header-content-length")
        header_len: int | None = None
        if raw_len is not None:
            if not (raw_len.isascii() and raw_len.isdigit()):  # str.isdigit alone takes "²", which int() refuses
                raise BadRequest("Inference-Header-Content-Length must be an integer")
            header_len = int(raw_len)
        key = _route_key(req)
        hrid: str | None = headers.get("x-request-id")
        name, version = req.params["name"], req.params.get("version")
        rt = self.plane.pick(name, version, key)  # an unknown model is refused before its body is read
        request = decode_v2(await self.guard.body(req), header_len)
        ans = await self.plane.infer_v2(name, version, request, key=key, request_id_header=hrid, runtime=rt)
        self.plane.observe(ans.model, ans.version, "v2", 200, time.perf_counter() - t0)
        if ans.binary_header is not None:
            out = [("content-type", "application/octet-stream"), ("x-request-id", ans.rid),
                   ("inference-header-content-length", str(ans.binary_header))]
        else:
            out = [("content-type", "application/json"), ("x-request-id", ans.rid)]
        if ans.proof is not None:
            out.append(("x-feedback-token", ans.proof))
        return 200, ans.body, out

    async def _infer_v1(self, req: Request) -> Reply:
        t0 = time.perf_counter()
        key = _route_key(req)
        hrid: str | None = req.headers.get("x-request-id")
        name = req.params["name"]
        rt = self.plane.pick(name, None, key)
        request = decode_v1(await self.guard.body(req))
        ans = await self.plane.predict_v1(name, request, key=key, request_id_header=hrid, runtime=rt)
        self.plane.observe(ans.model, ans.version, "v1", 200, time.perf_counter() - t0)
        headers = [("content-type", "application/json"), ("x-request-id", ans.rid)]
        if ans.proof is not None:
            headers.append(("x-feedback-token", ans.proof))
        return 200, ans.body, headers

    async def _explain_v2(self, req: Request) -> Reply:
        t0 = time.perf_counter()
        raw_len: str | None = req.headers.get("inference-header-content-length")
        if raw_len is not None and not (raw_len.isascii() and raw_len.isdigit()):
            raise BadRequest("Inference-Header-Content-Length must be an integer")
        name, version = req.params["name"], req.params.get("version")
        rt = self.plane.pick(name, version, _route_key(req))
        request = decode_v2(await self.guard.body(req), int(raw_len) if raw_len is not None else None)
        rid = request_id(request.id or req.headers.get("x-request-id"))
        body, header = await self.explainer.v2(rt, request, rid)
        self.plane.observe(rt.name, str(rt.version), "explain", 200, time.perf_counter() - t0)
        out = [("content-type", "application/json" if header is None else "application/octet-stream"),
               ("x-request-id", rid)]
        return 200, body, out + ([("inference-header-content-length", str(header))] if header is not None else [])

    async def _explain_v1(self, req: Request) -> Reply:
        t0 = time.perf_counter()
        rt = self.plane.pick(req.params["name"], None, _route_key(req))
        rid = request_id(req.headers.get("x-request-id"))
        body = await self.explainer.v1(rt, await self.guard.body(req), rid)
        self.plane.observe(rt.name, str(rt.version), "explain", 200, time.perf_counter() - t0)
        return 200, body, [("content-type", "application/json"), ("x-request-id", rid)]

    async def _feedback(self, req: Request) -> Reply:
        name = req.params["name"]
        self.plane.pick(name)
        status, doc = await self.plane.feedback(name, parse_json(await self.guard.body(req)),
                                                client=self.guard.client(req) or None,
                                                identity="bearer" if self.guard.has_token(req) else None)
        return status, dumps(doc), _JSON

    # -- models, health, metadata -------------------------------------------------------------
    async def _live(self, req: Request) -> Reply:
        return 200, dumps({"live": True}), _JSON

    async def _health(self, req: Request) -> Reply:
        """Open to every balancer; the detail (models, errors, pid, `degraded` and the database's
        state) only to who may read, when `auth_inference` closes the rest. A server whose
        database cannot take its writes (file deleted, PostgreSQL away) still answers predictions,
        so it stays ready (200) but says `degraded` and why: a database shared by every replica
        must not take them all out of rotation at once. `?strict=1` makes degraded a 503, for a
        balancer that should move traffic to replicas that still log it."""
        draining = self.draining
        ready = self.plane.fleet.ready and not draining
        db = self.plane.database_health()
        detail: dict[str, Any] = {"ready": ready, "draining": draining}
        workers = capacity(self.drain_file)  # alive/expected HTTP workers, as the supervisor sees them
        if workers is not None:
            detail["workers"] = workers
        if not self.auth_inference or self.guard.has_token(req):
            detail.update({**self.plane.health(), "degraded": not db["ok"], "database": db, "pid": os.getpid()})
        strict = "strict=1" in req.query.split("&")
        return (200 if ready and not (strict and not db["ok"]) else 503), dumps(detail), _JSON

    async def _alive(self, req: Request) -> Reply:
        return 200, dumps({"status": "alive"}), _JSON

    async def _models(self, req: Request) -> Reply:
        return 200, dumps({"models": self.plane.index()}), _JSON

    async def _models_v1(self, req: Request) -> Reply:
        return 200, dumps({"models": sorted(self.plane.fleet.served)}), _JSON

    async def _server(self, req: Request) -> Reply:
        return 200, dumps({"name": "shipyard", "version": __version__,
                           "extensions": ["binary_tensor_data", "model_repository"]}), _JSON

    async def _meta(self, req: Request) -> Reply:
        return 200, dumps(self.plane.metadata(req.params["name"], req.params.get("version"))), _JSON

    async def _ready(self, req: Request) -> Reply:
        name = req.params["name"]
        self.plane.pick(name, req.params.get("version"))
        return 200, dumps({"name": name, "ready": True}), _JSON

    async def _v1_meta(self, req: Request) -> Reply:
        rt = self.plane.pick(req.params["name"])
        return 200, dumps({"name": rt.name, "ready": True, "version": str(rt.version)}), _JSON

    async def _metrics(self, req: Request) -> Reply:
        self.plane.export_metrics(inflight=self.inflight)  # this worker's latest; the others' are ≤ 1 s old
        body, ctype = metrics.render()
        return 200, body, [("content-type", ctype)]

    async def _openapi(self, req: Request) -> Reply:
        return 200, dumps(openapi.document(self.routes, sorted(self.plane.fleet.served))), _JSON

    async def _dashboard(self, req: Request) -> Reply:
        from shipyard.serve import dashboard

        return 200, dashboard.page(sorted(self.plane.fleet.served)).encode(), _HTML

    async def _asset(self, req: Request) -> Reply:
        from shipyard.charts import ASSETS, asset

        file = req.params["file"]
        if file not in ASSETS:
            raise NotFound(f"no dashboard asset {file!r}")
        body, ctype = asset(file)
        return 200, body, [("content-type", ctype), ("cache-control", "max-age=3600")]

    async def _fragment(self, req: Request) -> Reply:
        from urllib.parse import parse_qs

        from shipyard.serve import dashboard

        query = parse_qs(req.query)
        name = query.get("model", [""])[0]
        if name not in self.plane.fleet.served:
            raise NotFound(f"this server does not serve {name!r}")
        try:
            minutes = float(query.get("minutes", ["60"])[0])
        except ValueError:
            raise BadRequest("minutes must be a number") from None
        if not 1 <= minutes <= 30 * 1440:
            raise BadRequest("minutes must be in 1..43200")
        html = await asyncio.get_running_loop().run_in_executor(None, dashboard.fragment, self.plane.fleet.registry,
                                                                name, minutes)
        return 200, html.encode(), _HTML

    # -- management ---------------------------------------------------------------------------
    async def _index(self, req: Request) -> Reply:
        return 200, dumps(self.plane.index()), _JSON

    async def _refresh(self, req: Request) -> Reply:
        return 200, dumps(await self.plane.refresh()), _JSON

    async def _load(self, req: Request) -> Reply:
        await self.plane.load(req.params["name"])
        return 200, b"{}", _JSON

    async def _unload(self, req: Request) -> Reply:
        self.plane.unload(req.params["name"])
        return 200, b"{}", _JSON

    async def _traffic(self, req: Request) -> Reply:
        return 200, dumps(await self.plane.traffic(req.params["name"])), _JSON

    async def _set_traffic(self, req: Request) -> Reply:
        doc = parse_json(await self.guard.body(req))
        return 200, dumps(await self.plane.set_traffic(req.params["name"], doc)), _JSON


def _route_key(req: Request) -> bytes | None:
    """The sticky-routing key a client sent (its bytes, as the traffic split hashes them)."""
    key: str | None = req.headers.get(ROUTE_KEY)
    return key.encode("latin-1") if key is not None else None
