"""The HTTP transport: a raw ASGI app (no framework: on a 7 KB JSON body the framework and the
JSON codec are the cost, not the 11 µs model). It translates bytes and status codes; what is
served lives in `fleet`, the protocol logic in `handlers` and `codec`, batching in `batching`.

Routes: V2 Open Inference Protocol (health, server and model metadata, model ready, infer with
JSON or binary tensors, repository index/load/unload), the v1 `:predict` route, and management
routes to re-read the registry and to set a model's traffic split."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import logging
import os
import re
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from shipyard import __version__
from shipyard.errors import BadRequest, NotFound, Overloaded, PayloadTooLarge, ShipyardError, UsageError
from shipyard.monitor import metrics
from shipyard.monitor import stats as stats_mod
from shipyard.monitor.alerts import DEFAULT_RULES, AlertConfig
from shipyard.monitor.alerts import load as load_alerts
from shipyard.monitor.evaluator import Evaluator, MonitorConfig
from shipyard.monitor.predlog import LogConfig, PredictionLog, record_feedback
from shipyard.monitor.stats import ServingStats
from shipyard.serve.batching import BatchConfig
from shipyard.serve.codec import decode_v1, decode_v2, dumps, parse_json
from shipyard.serve.fleet import Fleet, Spec
from shipyard.serve.handlers import prepare_v1, prepare_v2, request_id, respond_v1, respond_v2
from shipyard.serve.runtime import ModelRuntime

log = logging.getLogger("shipyard.serve")
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]
MAX_BODY = 8 << 20
ROUTE_KEY = b"x-shipyard-route-key"

_MODEL = re.compile(r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?(?P<rest>/ready|/infer|/feedback)?$")
_V1 = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?::(?P<verb>predict))?$")
_REPO = re.compile(r"^/v2/repository/models/(?P<name>[^/]+)/(?P<action>load|unload|traffic)$")
_JSON = [(b"content-type", b"application/json")]
_HTML = [(b"content-type", b"text/html; charset=utf-8")]


class Unauthorized(ShipyardError):
    http_status = 401


class Forbidden(ShipyardError):
    http_status = 403


class MethodNotAllowed(ShipyardError):
    http_status = 405


def _parse_path(path: str) -> tuple[str, str | None, str | None]:
    """(kind, model name, version) for a path; kinds: infer, ready, meta, v1, v1meta, other."""
    if m := _MODEL.match(path):
        rest = m["rest"]
        kind = {"/infer": "infer", "/ready": "ready", "/feedback": "feedback"}.get(rest or "", "meta")
        return kind, m["name"], m["version"]
    if m := _V1.match(path):
        return ("v1" if m["verb"] else "v1meta"), m["name"], None
    return "other", None, None


def _freeze_heap() -> None:
    """Move everything loaded so far (libraries, models) out of the garbage collector's sight:
    otherwise each full collection walks it all, and those pauses set the p99 (measured at
    c=64: 17.8 ms p99 without, 7.8 ms with; the bare handler's is 7.8 ms)."""
    gc.collect()
    gc.freeze()


class App:
    """The ASGI application; `create_app` builds it."""

    def __init__(self, fleet: Fleet, *, max_body: int = MAX_BODY, token: str | None = None,
                 require_token_for_inference: bool = False, management: bool = True,
                 poll_s: float = 2.0, drain_timeout_s: float = 30.0, drain_file: str | None = None,
                 predlog: PredictionLog | None = None, feedback_horizon_s: float = 7 * 86400,
                 metrics_enabled: bool = True, evaluator: Any = None, notify: bool = True) -> None:
        self.fleet = fleet
        self.predlog = predlog
        self.evaluator = evaluator  # a shipyard.monitor.evaluator.Evaluator: computes when it holds the lease
        self.notify = notify  # follow PostgreSQL's NOTIFY on registry changes
        if predlog is not None:
            fleet.results_hook = predlog.record_batch  # batched requests are logged a batch at a time
        self.feedback_horizon_s = feedback_horizon_s
        self.request_metrics = metrics.RequestMetrics(metrics_enabled)
        # the same counts, every few seconds into the database (alert rules, status, report, dashboard)
        self.serving_stats = ServingStats() if metrics_enabled else None
        if self.serving_stats is not None:
            self.request_metrics.sink = self.serving_stats.add
        self.management = management
        self.max_body = max_body
        self.token = token
        self.require_token_for_inference = require_token_for_inference
        self.poll_s = poll_s
        self.drain_timeout_s = drain_timeout_s
        self._draining = False
        self.drain_file = drain_file  # created by the supervisor on SIGTERM, for every worker
        self.inflight = 0
        self.shadow_stats = {"mirrored": 0, "dropped": 0, "compared": 0, "agreed": 0, "failed": 0}
        self._paths: dict[str, tuple[str, str | None, str | None]] = {}
        self._poller: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None  # set by the LISTEN thread when the registry changed
        self._listening = threading.Event()  # cleared to stop the LISTEN thread
        self._ticker: asyncio.Task[None] | None = None
        self._shadow_tasks: set[asyncio.Task[None]] = set()

    # -- ASGI --------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self._lifespan(receive, send)
            return
        self.inflight += 1
        headers: Headers = _JSON
        t0 = time.perf_counter()
        try:
            status, body, headers = await self._route(scope, receive)
        except ShipyardError as e:
            status, body = e.http_status, dumps({"error": str(e)})
            if isinstance(e, Overloaded):
                headers = [*_JSON, (b"retry-after", str(e.retry_after).encode())]
            self._count_error(scope["path"], status, t0)
        except Exception as e:  # noqa: BLE001 - a bug must not take the server down
            log.exception("unexpected error on %s %s", scope.get("method"), scope.get("path"))
            status, body = 500, dumps({"error": f"internal error: {type(e).__name__}"})
            self._count_error(scope["path"], status, t0)
        finally:
            self.inflight -= 1
        await send({"type": "http.response.start", "status": status,
                    "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    def _count_error(self, path: str, status: int, t0: float) -> None:
        kind, name, _ = self._paths.get(path) or _parse_path(path)
        if kind in ("infer", "v1"):
            served = name if name in self.fleet.served else "(unknown)"  # client-chosen names stay out of labels
            self.request_metrics.observe(served, "", "v2" if kind == "infer" else "v1", status,
                                         time.perf_counter() - t0)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                loop = asyncio.get_running_loop()
                try:
                    await loop.run_in_executor(None, self.fleet.refresh)
                    await loop.run_in_executor(None, self.fleet.check_marker)
                except Exception as e:  # noqa: BLE001 - report and refuse to start
                    log.error("start-up failed: %s", e)
                    await send({"type": "lifespan.startup.failed", "message": str(e)})
                    return
                _freeze_heap()
                self._wake = asyncio.Event()
                notify = self._start_listener(loop)
                if self.poll_s > 0 or notify:
                    self._poller = loop.create_task(self._poll())
                if self.request_metrics.enabled:
                    self._ticker = loop.create_task(self._tick())
                if self.predlog is not None:
                    self.predlog.start()
                if self.evaluator is not None:
                    self.evaluator.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self._listening.clear()
                await self.drain()
                if self.predlog is not None:
                    await self.predlog.stop()
                if self.evaluator is not None:
                    await asyncio.get_running_loop().run_in_executor(None, self.evaluator.stop)
                self._export_metrics(final=True)
                metrics.worker_exited(os.getpid())
                await send({"type": "lifespan.shutdown.complete"})
                return

    @property
    def draining(self) -> bool:
        if not self._draining and self.drain_file is not None and os.path.exists(self.drain_file):
            self._draining = True
        return self._draining

    async def drain(self) -> None:
        """Stop following the registry; wait (up to the drain timeout) for requests in flight and
        queued batches and shadows to finish."""
        self._draining = True
        for task in (self._poller, self._ticker):
            if task is not None:
                task.cancel()
        deadline = time.monotonic() + self.drain_timeout_s
        while time.monotonic() < deadline:
            busy = self.inflight or self._shadow_tasks or any(
                rt.batcher is not None and not rt.batcher.idle for rt in self._runtimes())
            if not busy:
                break
            await asyncio.sleep(0.01)
        else:
            log.warning("drain timeout (%.0f s) reached with %d request(s) in flight", self.drain_timeout_s,
                        self.inflight)
        for rt in self._runtimes():
            if rt.batcher is not None:
                rt.batcher.close()

    def _runtimes(self) -> list[ModelRuntime]:
        return [*self.fleet.loaded.values(), *self.fleet.retired]

    async def _poll(self) -> None:
        """Follow the registry: one cheap query per interval (and at once when PostgreSQL notifies
        a change); re-resolve only when it changed."""
        loop = asyncio.get_running_loop()
        assert self._wake is not None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_s if self.poll_s > 0 else None)
            self._wake.clear()
            try:
                if await loop.run_in_executor(None, self.fleet.check_marker) and \
                        await loop.run_in_executor(None, self.fleet.refresh):
                    _freeze_heap()
                self.fleet.errors.pop("registry", None)
            except Exception as e:  # noqa: BLE001 - the database may be away: keep serving what we have
                self.fleet.errors["registry"] = f"cannot read the registry: {e}"
                log.warning("cannot read the registry (still serving what is loaded): %s", e)
            self.fleet.reap()

    def _start_listener(self, loop: asyncio.AbstractEventLoop) -> bool:
        """On PostgreSQL, LISTEN for registry changes in a thread; polling stays as the fallback.
        Each (re)connection wakes the poller once, so a change made while disconnected is not lost."""
        engine = getattr(self.fleet.registry, "engine", None)
        if engine is None or engine.dialect.name != "postgresql" or not self.notify:
            return False
        url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)

        def wake(_payload: str | None = None) -> None:
            if self._wake is not None:
                loop.call_soon_threadsafe(self._wake.set)

        def listen() -> None:
            import psycopg

            from shipyard.registry.models import NOTIFY_CHANNEL

            while self._listening.is_set():
                try:
                    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
                        conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                        wake()
                        while self._listening.is_set():
                            for note in conn.notifies(timeout=1.0):
                                wake(note.payload)
                except Exception as e:  # noqa: BLE001 - the database went away: retry, poll meanwhile
                    log.warning("registry notifications: %s; reconnecting", e)
                    time.sleep(1.0)

        self._listening.set()
        threading.Thread(target=listen, name="shipyard-listen", daemon=True).start()
        log.info("following the registry through PostgreSQL notifications (and every %g s)", self.poll_s)
        return True

    async def _tick(self) -> None:
        """Once a second: the gauges that describe this worker (queue depth, in flight, aliases)."""
        while True:
            self._export_metrics()
            await asyncio.sleep(1.0)

    def _export_metrics(self, *, final: bool = False) -> None:
        if self.request_metrics.enabled:
            metrics.INFLIGHT.set(self.inflight)
            try:
                self.request_metrics.flush()
                self.fleet.export_gauges()
            except Exception as e:  # noqa: BLE001 - metrics must never take serving down
                log.warning("cannot export metrics: %s", e)
            if self.serving_stats is not None and (rows := self.serving_stats.take(force=final)):
                if final:
                    self._write_stats(rows)
                else:  # off the event loop; a lost interval costs a few seconds of statistics, nothing else
                    asyncio.get_running_loop().run_in_executor(None, self._write_stats, rows)

    def _write_stats(self, rows: list[dict[str, Any]]) -> None:
        try:
            stats_mod.write(self.fleet.registry.engine, rows)
        except Exception as e:  # noqa: BLE001 - the database may be away
            log.warning("cannot write serving statistics: %s", e)

    # -- helpers -----------------------------------------------------------------------------
    async def _body(self, scope: Scope, receive: Receive) -> bytes:
        for k, v in scope["headers"]:
            if k == b"content-length" and v.isdigit() and int(v) > self.max_body:
                raise PayloadTooLarge(f"request body of {int(v):,} bytes is over the {self.max_body:,}-byte limit")
        message = await receive()
        if not message.get("more_body"):  # the usual case: the whole body in one message
            body: bytes = message.get("body", b"")
            if len(body) > self.max_body:
                raise PayloadTooLarge(f"request body is over the {self.max_body:,}-byte limit")
            return body
        chunks: list[bytes] = [message.get("body", b"")]
        size = len(chunks[0])
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

    async def _predict(self, rt: ModelRuntime, features: Any, rid: str | None = None) -> Any:
        """The model's probabilities; `rid` (None for shadow copies) tags the request for the
        prediction log, which batched requests reach through the batcher's hook."""
        batcher = rt.batcher
        if batcher is None:
            probs = rt.predict(features)
            if rid is not None and self.predlog is not None:
                self.predlog.record(rt, rid, features, probs)
            return probs
        return await batcher.infer(features, rid)

    def _done(self, rt: ModelRuntime, route: str, t0: float) -> None:
        self.request_metrics.observe(rt.name, str(rt.version), route, 200, time.perf_counter() - t0)

    def _mirror(self, name: str, primary: ModelRuntime, features: Any, probs: Any) -> None:
        """Send a copy to the model's shadow, if it has one; never delays the primary answer (its
        own bounded queue: when full the copy is dropped and counted)."""
        table = self.fleet.served.get(name)
        if table is None or table.shadow is None:
            return
        self.shadow_stats["mirrored"] += 1
        labels = primary.labels(probs)  # only when there is a shadow to compare with
        task = asyncio.get_running_loop().create_task(self._shadow(table.shadow.runtime, features, labels))
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)

    async def _shadow(self, rt: ModelRuntime, features: Any, labels: Any) -> None:
        try:
            probs = await self._predict(rt, features, None)
        except Overloaded:
            self.shadow_stats["dropped"] += 1
            metrics.SHADOW.labels(rt.name, "dropped").inc()
            return
        except Exception as e:  # noqa: BLE001 - a failing shadow is counted, never seen by clients
            self.shadow_stats["failed"] += 1
            metrics.SHADOW.labels(rt.name, "failed").inc()
            log.warning("shadow %s version %s failed: %s", rt.name, rt.version, e)
            return
        theirs = rt.labels(probs)
        agreed = int((theirs == labels).sum())
        self.shadow_stats["compared"] += len(theirs)
        self.shadow_stats["agreed"] += agreed
        metrics.SHADOW.labels(rt.name, "compared").inc(len(theirs))
        metrics.SHADOW.labels(rt.name, "agreed").inc(agreed)

    # -- routing -----------------------------------------------------------------------------
    async def _route(self, scope: Scope, receive: Receive) -> tuple[int, bytes, Headers]:
        path = scope["path"]
        parsed = self._paths.get(path)
        if parsed is None:
            parsed = _parse_path(path)
            if len(self._paths) > 4096:  # paths come from clients: keep the cache bounded
                self._paths.clear()
            self._paths[path] = parsed
        kind, name, version = parsed
        if kind == "infer":
            return await self._infer_v2(scope, receive, name, version)  # type: ignore[arg-type]
        if kind == "v1":
            return await self._infer_v1(scope, receive, name)  # type: ignore[arg-type]
        method = scope["method"]
        if kind == "feedback":
            return await self._feedback(scope, receive, name)  # type: ignore[arg-type]
        if path == "/metrics":
            self._export_metrics()  # this worker's latest counts; the others' are at most a second old
            body, ctype = metrics.render()
            return 200, body, [(b"content-type", ctype.encode())]
        if kind == "meta":
            rt = self.fleet.get(name, version)  # type: ignore[arg-type]
            meta = rt.metadata()
            table = self.fleet.served.get(name)  # type: ignore[arg-type]
            if table is not None:
                meta["parameters"]["deployment"] = table.describe()
            if rt.batcher is not None:
                live = {"current_delay_ms": round(rt.batcher.delay_s * 1000, 3), "stats": dict(rt.batcher.stats)}
                if rt.batcher.controller is not None:
                    live["decisions"] = {**rt.batcher.controller.counts,
                                         "last": list(rt.batcher.controller.decisions)[-5:]}
                meta["parameters"]["batching"] = {**meta["parameters"]["batching"], **live}
            return 200, dumps(meta), _JSON
        if kind == "ready":
            self.fleet.get(name, version)  # type: ignore[arg-type]
            return 200, dumps({"name": name, "ready": True}), _JSON
        if kind == "v1meta":
            rt = self.fleet.get(name)  # type: ignore[arg-type]
            return 200, dumps({"name": rt.name, "ready": True, "version": str(rt.version)}), _JSON
        if path == "/v2/health/live":
            return 200, dumps({"live": True}), _JSON
        if path == "/v2/health/ready":
            ready = self.fleet.ready and not self.draining
            detail = {"ready": ready, "draining": self.draining, **self.fleet.health(),
                      "shadow": self.shadow_stats, "pid": os.getpid()}
            return (200 if ready else 503), dumps(detail), _JSON
        if path == "/dashboard" or path == "/dashboard/fragment":
            return await self._dashboard(scope, path)
        if path == "/openapi.json":
            from shipyard.serve.openapi import document

            return 200, dumps(document(sorted(self.fleet.served))), _JSON
        if path == "/v2":
            return 200, dumps({"name": "shipyard", "version": __version__,
                               "extensions": ["binary_tensor_data", "model_repository"]}), _JSON
        return await self._manage(scope, receive, method, path)

    async def _dashboard(self, scope: Scope, path: str) -> tuple[int, bytes, Headers]:
        from urllib.parse import parse_qs

        from shipyard.serve import dashboard

        if path == "/dashboard":
            return 200, dashboard.page(sorted(self.fleet.served)).encode(), _HTML
        query = parse_qs(scope.get("query_string", b"").decode(errors="replace"))
        name = query.get("model", [""])[0]
        if name not in self.fleet.served:
            raise NotFound(f"this server does not serve {name!r}")
        try:
            minutes = float(query.get("minutes", ["60"])[0])
        except ValueError:
            raise BadRequest("minutes must be a number") from None
        if not 1 <= minutes <= 30 * 1440:
            raise BadRequest("minutes must be in 1..43200")
        html = await asyncio.get_running_loop().run_in_executor(None, dashboard.fragment, self.fleet.registry, name,
                                                                minutes)
        return 200, html.encode(), _HTML

    async def _infer_v2(self, scope: Scope, receive: Receive, name: str, version: str | None
                        ) -> tuple[int, bytes, Headers]:
        if scope["method"] != "POST":
            raise MethodNotAllowed("infer takes POST")
        if self.require_token_for_inference:
            self._check_token(scope)
        header_len = key = hrid = None
        for k, v in scope["headers"]:
            if k == b"inference-header-content-length":
                if not v.isdigit():
                    raise BadRequest("Inference-Header-Content-Length must be an integer")
                header_len = int(v)
            elif k == ROUTE_KEY:
                key = v
            elif k == b"x-request-id":
                hrid = v.decode("latin-1")
        t0 = time.perf_counter()
        rt = self.fleet.get(name, version, key)
        req = decode_v2(await self._body(scope, receive), header_len)
        features, wanted = prepare_v2(rt, req)
        rid = request_id(req.id or hrid)
        probs = await self._predict(rt, features, rid)
        out, out_header = respond_v2(rt, probs, wanted, rid)
        if version is None:
            self._mirror(name, rt, features, probs)
        self._done(rt, "v2", t0)
        headers = [*_JSON, (b"x-request-id", rid.encode())]
        if out_header is not None:
            headers = [(b"content-type", b"application/octet-stream"), (b"x-request-id", rid.encode()),
                       (b"inference-header-content-length", str(out_header).encode())]
        return 200, out, headers

    async def _infer_v1(self, scope: Scope, receive: Receive, name: str) -> tuple[int, bytes, Headers]:
        if scope["method"] != "POST":
            raise MethodNotAllowed(":predict takes POST")
        if self.require_token_for_inference:
            self._check_token(scope)
        t0 = time.perf_counter()
        key = hrid = None
        for k, v in scope["headers"]:
            if k == ROUTE_KEY:
                key = v
            elif k == b"x-request-id":
                hrid = v.decode("latin-1")
        rt = self.fleet.get(name, None, key)
        features = prepare_v1(rt, decode_v1(await self._body(scope, receive)))
        rid = request_id(hrid)
        probs = await self._predict(rt, features, rid)
        self._mirror(name, rt, features, probs)
        self._done(rt, "v1", t0)
        return 200, respond_v1(rt, probs, rid), [*_JSON, (b"x-request-id", rid.encode())]

    async def _feedback(self, scope: Scope, receive: Receive, name: str) -> tuple[int, bytes, Headers]:
        """`{"feedback": [{"id": REQUEST_ID, "label": CLASS}, …]}`: true labels for earlier
        predictions, joined with the prediction log in the database (any worker may hold it)."""
        if scope["method"] != "POST":
            raise MethodNotAllowed("feedback takes POST")
        if self.require_token_for_inference:
            self._check_token(scope)
        rt = self.fleet.get(name)
        if self.predlog is None:
            raise NotFound("this server keeps no prediction log (started with --no-log), so it takes no feedback")
        doc = parse_json(await self._body(scope, receive))
        items = doc.get("feedback") if isinstance(doc, dict) else None
        if not isinstance(items, list) or not items:
            raise BadRequest('send {"feedback": [{"id": REQUEST_ID, "label": CLASS}, …]}')
        if len(items) > 10_000:
            raise BadRequest(f"at most 10,000 labels per request, got {len(items):,}")
        pairs = []
        for i, item in enumerate(items):
            if not isinstance(item, dict) or not isinstance(item.get("id"), str) or "label" not in item:
                raise BadRequest(f"feedback[{i}] needs a string 'id' and a 'label'")
            pairs.append((item["id"], item["label"]))
        loop = asyncio.get_running_loop()
        log_, engine = self.predlog, self.predlog.engine
        classes = [str(c) for c in rt.classes]

        def store(batch: list[tuple[Any, Any]]) -> Any:
            log_.flush()  # this worker's own recent predictions first
            return record_feedback(engine, name, classes, batch, horizon_s=self.feedback_horizon_s)

        result = await loop.run_in_executor(None, store, pairs)
        unknown = [(it["id"], dict(pairs)[it["id"]]) for it in result.items if it["status"] == "unknown"]
        if unknown:  # another worker may not have written its log yet: one more look after its flush
            await asyncio.sleep(log_.config.flush_s * 2 + 0.2)
            retry = {it["id"]: it for it in (await loop.run_in_executor(None, store, unknown)).items}
            result.items = [retry.get(it["id"], it) if it["status"] == "unknown" else it for it in result.items]
        counts = result.counts
        for outcome, n in counts.items():
            if n:
                metrics.FEEDBACK.labels(name, outcome).inc(n)
        status = 200
        if len(result.items) == 1 and counts["accepted"] == 0:
            status = {"unknown": 404, "late": 410, "invalid": 400}[result.items[0]["status"]]
            return status, dumps({"error": result.items[0]["error"], **counts}), _JSON
        return status, dumps({**counts, "items": [it for it in result.items if it["status"] != "accepted"]}), _JSON

    async def _manage(self, scope: Scope, receive: Receive, method: str, path: str) -> tuple[int, bytes, Headers]:
        loop = asyncio.get_running_loop()
        if path == "/v2/repository/index":
            self._check_management(scope)
            return 200, dumps([{"name": n, "version": str(t.pick().version), "state": "READY"}
                               for n, t in sorted(self.fleet.served.items())]), _JSON
        if path == "/v2/repository/refresh":
            self._check_management(scope)
            if method != "POST":
                raise MethodNotAllowed("refresh takes POST")
            changed = await loop.run_in_executor(None, self.fleet.refresh)
            return 200, dumps({"changed": changed, **self.fleet.health()}), _JSON
        if m := _REPO.match(path):
            self._check_management(scope)
            name, action = m["name"], m["action"]
            if action == "traffic":
                return await self._traffic(scope, receive, method, name)
            if method != "POST":
                raise MethodNotAllowed("repository actions take POST")
            if action == "unload":
                self.fleet.unload(name)
            else:
                try:
                    spec = Spec.parse(name)
                except UsageError as e:
                    raise BadRequest(str(e)) from None
                await loop.run_in_executor(None, self.fleet.add, spec)
            return 200, b"{}", _JSON
        raise NotFound(f"no route {method} {path}")

    async def _traffic(self, scope: Scope, receive: Receive, method: str, name: str) -> tuple[int, bytes, Headers]:
        """GET: the model's deployment config; POST `{"weights": {alias: percent}, "shadow": alias}`:
        write it to the registry (recorded in history) and apply it here at once."""
        loop = asyncio.get_running_loop()
        reg = self.fleet.registry
        if method == "POST":
            doc = parse_json(await self._body(scope, receive))
            if not isinstance(doc, dict) or not isinstance(doc.get("weights"), dict):
                raise BadRequest('send {"weights": {"ALIAS": PERCENT, …}, "shadow": ALIAS or null}')
            weights, shadow, reason = doc["weights"], doc.get("shadow"), doc.get("reason")
            if not all(isinstance(w, int) and not isinstance(w, bool) for w in weights.values()) or \
                    not (shadow is None or isinstance(shadow, str)) or not (reason is None or isinstance(reason, str)):
                raise BadRequest("weights must be whole percentages, shadow an alias name or null, reason a string")
            try:
                await loop.run_in_executor(None, lambda: reg.set_traffic(name, weights, shadow=shadow,
                                                                         reason=reason))
            except UsageError as e:
                raise BadRequest(str(e)) from None
            await loop.run_in_executor(None, self.fleet.refresh)
        elif method != "GET":
            raise MethodNotAllowed("traffic takes GET or POST")
        dep = await loop.run_in_executor(None, reg.traffic, name)
        return 200, dumps(dep.to_dict()), _JSON


def create_app(registry: Any = None, models: list[str] | None = None, settings: Any = None, *,
               threads: int = 1, token: str | None = None, max_body: int = MAX_BODY,
               require_token_for_inference: bool = False, management: bool = True,
               batching: BatchConfig | None = None, poll_s: float = 2.0, drain_timeout_s: float = 30.0,
               drain_file: str | None = None, log_config: LogConfig | None = None,
               feedback_horizon_s: float = 7 * 86400, metrics_enabled: bool = True,
               monitor: MonitorConfig | None = None, evaluate: bool = True,
               alerts: AlertConfig | None = DEFAULT_RULES, notify: bool = True) -> App:
    """The server application over `registry`, serving `models` (`NAME` follows its deployment
    config, `NAME@ALIAS` one alias, `NAME@VERSION` one version; None: every model with a
    `production` alias); embed it in any ASGI server or run it with `shipyard serve`. With the
    prediction log on and `evaluate`, the server also runs the drift evaluator (`monitor`), which
    computes in the one worker that holds each deployment's lease."""
    from shipyard.registry import Registry

    reg = registry or Registry(settings=settings)
    specs = [Spec.parse(r) for r in models] if models else None
    fleet = Fleet(reg, specs, threads=threads, batching=batching, metrics_enabled=metrics_enabled)
    log_config = log_config or LogConfig()
    predlog = PredictionLog(reg.engine, log_config) if log_config.enabled else None
    evaluator = (Evaluator(reg, lambda: list(fleet.served), monitor, alerts=alerts)
                 if predlog is not None and evaluate else None)
    return App(fleet, max_body=max_body, token=token, require_token_for_inference=require_token_for_inference,
               management=management, poll_s=poll_s, drain_timeout_s=drain_timeout_s, drain_file=drain_file,
               predlog=predlog, feedback_horizon_s=feedback_horizon_s, metrics_enabled=metrics_enabled,
               evaluator=evaluator, notify=notify)


def app_from_env() -> App:
    """Factory for server worker processes: configuration arrives in SHIPYARD_SERVE_* variables."""
    from shipyard.settings import Settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    env = os.environ
    refs = [r for r in env.get("SHIPYARD_SERVE_MODELS", "").split(",") if r]
    batching = BatchConfig(
        max_batch_size=int(env.get("SHIPYARD_SERVE_MAX_BATCH_SIZE", BatchConfig.max_batch_size)),
        max_delay_ms=float(env.get("SHIPYARD_SERVE_MAX_DELAY_MS", BatchConfig.max_delay_ms)),
        max_queue=int(env.get("SHIPYARD_SERVE_MAX_QUEUE", BatchConfig.max_queue)),
        timeout_ms=float(env.get("SHIPYARD_SERVE_TIMEOUT_MS", BatchConfig.timeout_ms)),
        concurrency=int(env.get("SHIPYARD_SERVE_CONCURRENCY", BatchConfig.concurrency)),
        latency_target_ms=float(env["SHIPYARD_SERVE_LATENCY_TARGET_MS"]) if env.get("SHIPYARD_SERVE_LATENCY_TARGET_MS")
        else None)
    return create_app(None, refs or None, Settings.from_env(),
                      threads=int(env.get("SHIPYARD_SERVE_THREADS", "1")),
                      token=env.get("SHIPYARD_TOKEN") or None,
                      max_body=int(env.get("SHIPYARD_SERVE_MAX_BODY", str(MAX_BODY))),
                      require_token_for_inference=env.get("SHIPYARD_SERVE_AUTH_INFERENCE") == "1",
                      management=env.get("SHIPYARD_SERVE_MANAGEMENT", "1") == "1",
                      batching=batching, poll_s=float(env.get("SHIPYARD_SERVE_POLL_S", "2")),
                      drain_timeout_s=float(env.get("SHIPYARD_SERVE_DRAIN_TIMEOUT_S", "30")),
                      drain_file=env.get("SHIPYARD_SERVE_DRAIN_FILE") or None,
                      log_config=LogConfig(enabled=env.get("SHIPYARD_SERVE_LOG", "1") == "1",
                                           sample=float(env.get("SHIPYARD_SERVE_LOG_SAMPLE", "0.1")),
                                           ring=int(env.get("SHIPYARD_SERVE_LOG_RING", "50000")),
                                           retention_days=float(env.get("SHIPYARD_SERVE_LOG_RETENTION_DAYS", "30"))),
                      feedback_horizon_s=float(env.get("SHIPYARD_SERVE_FEEDBACK_HORIZON_H", "168")) * 3600,
                      metrics_enabled=env.get("SHIPYARD_SERVE_METRICS", "1") == "1",
                      evaluate=env.get("SHIPYARD_SERVE_EVALUATE", "1") == "1",
                      notify=env.get("SHIPYARD_SERVE_NOTIFY", "1") == "1",
                      monitor=MonitorConfig(window=int(env.get("SHIPYARD_SERVE_WINDOW", MonitorConfig.window)),
                                            max_age_s=float(env.get("SHIPYARD_SERVE_WINDOW_MAX_AGE_S",
                                                                    MonitorConfig.max_age_s))),
                      # only read when this process evaluates (`shipyard serve` does that in its supervisor)
                      alerts=load_alerts(env["SHIPYARD_SERVE_ALERTS"]) if env.get("SHIPYARD_SERVE_ALERTS")
                      and env.get("SHIPYARD_SERVE_EVALUATE", "1") == "1" else DEFAULT_RULES)
