"""The data plane: what the server does, whatever the transport. Inference (V2 and v1), feedback,
traffic, shadow copies, model metadata and the repository, over decoded requests; callable
in-process (`await plane.infer_v2("digits", None, decode_v2(body))`), and by `serve/http.py`,
which only turns bytes into these calls and their answers back into bytes and status codes.

Batching and the prediction log are wired in one place, `_on_load`, when a model version is
loaded: every runtime gets its batcher and its log hook there, and nowhere else."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import secrets
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from shipyard.errors import BadRequest, NotFound, Overloaded, UsageError
from shipyard.monitor import metrics
from shipyard.monitor import stats as stats_mod
from shipyard.monitor.feedback import record_feedback, shadow_id
from shipyard.monitor.predlog import PredictionLog
from shipyard.monitor.stats import ServingStats
from shipyard.serve.batching import INLINE_LIMIT_S, BatchConfig, Batcher, admit
from shipyard.serve.codec import InferRequest, check_values, encode_v2
from shipyard.serve.codec_v1 import V1Request, encode_v1, encode_v1_values
from shipyard.serve.fleet import Fleet, Spec
from shipyard.serve.runtime import LABEL, ModelRuntime
from shipyard.store.engine import file_problem

if TYPE_CHECKING:
    from shipyard.monitor.evaluator import Evaluator

log = logging.getLogger("shipyard.serve")
OUTPUTS = ("probabilities", LABEL)
MAX_FEEDBACK = 10_000


def request_id(rid: str | None) -> str:
    """The client's id (the V2 body's `id`, else an `X-Request-ID` header: a load balancer sets
    one per client request and keeps it when it retries, so the prediction log can tell a retry
    from a new request), or a new one of 128 random bits: nobody can guess another client's id
    to label its prediction (a prefix and a counter were guessable)."""
    if not rid:
        return _new_id()
    if len(rid) > 256 or not (rid.isascii() and rid.isprintable()):
        raise BadRequest("a request id must be at most 256 printable ASCII characters")
    return rid


_ids: list[str] = []


def _new_id() -> str:
    """128 random bits as hex, drawn 256 at a time (one `os.urandom` call, not one per request)."""
    if not _ids:
        raw = secrets.token_hex(16 * 256)
        _ids.extend(raw[i:i + 32] for i in range(0, len(raw), 32))
    return _ids.pop()


os.register_at_fork(after_in_child=_ids.clear)  # a forked worker never answers with its parent's ids


@dataclass(slots=True)
class Answer:
    """An inference answer: the encoded body, which version answered, and the request id."""

    body: bytes
    model: str
    version: str
    rid: str
    binary_header: int | None = None  # the JSON header's length when outputs travel as binary
    proof: str | None = None  # the feedback token for this answer (when the server requires one)


class DataPlane:
    """Every model this process serves, and what can be asked of them."""

    def __init__(self, fleet: Fleet, *, batching: BatchConfig | None = None, predlog: PredictionLog | None = None,
                 evaluator: Evaluator | None = None, feedback_horizon_s: float = 7 * 86400,
                 metrics_enabled: bool = True, feedback_secret: str | None = None) -> None:
        self.fleet = fleet
        self.batching = (batching or BatchConfig()).checked()
        self.predlog = predlog
        self.evaluator = evaluator  # computes when it holds the lease
        self.feedback_horizon_s = feedback_horizon_s
        # set: every answer carries a proof (HMAC of model and request id) that its label must present
        self._feedback_key = feedback_secret.encode() if feedback_secret else None
        self.request_metrics = metrics.RequestMetrics(metrics_enabled)
        # the same counts, every few seconds into the database (alert rules, status, report, dashboard)
        self.serving_stats = ServingStats() if metrics_enabled else None
        self._stats_failing = False
        if self.serving_stats is not None:
            self.request_metrics.sink = self.serving_stats.add
        self.shadow_stats = {"mirrored": 0, "dropped": 0, "compared": 0, "agreed": 0, "failed": 0}
        self._shadow_tasks: set[asyncio.Task[None]] = set()
        fleet.on_load = self._on_load

    # -- model loading ------------------------------------------------------------------------
    def _on_load(self, rt: ModelRuntime) -> None:
        """Wire a freshly loaded version: its batcher (or none) and its prediction-log hook. A
        version whose answers depend on their batch-mates is refused (`BatchVariance`: the fleet
        keeps what it served and reports why) or, if the operator said so, served unbatched."""
        cfg = self.batching
        rt.serving["batching"] = cfg.to_dict()
        if not cfg.enabled or not admit(rt, cfg):
            return
        # a model whose full batch costs more than a couple of ms runs off the event loop
        t0 = time.perf_counter()
        rt.warm_batch(cfg.max_batch_size)
        inline = time.perf_counter() - t0 < INLINE_LIMIT_S
        on_batch = rt.serving_metrics = metrics.BatchMetrics(rt.name, str(rt.version))
        plog = self.predlog
        rt.batcher = Batcher(rt.predict, cfg, inline=inline,
                             on_batch=on_batch if self.request_metrics.enabled else None,
                             on_results=(lambda tags, counts, f, p: plog.record_batch(rt, tags, counts, f, p))
                             if plog is not None else None)
        rt.serving["batching"]["runs"] = "inline" if inline else "thread"

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        if self.predlog is not None:
            self.predlog.start()
        if self.evaluator is not None:
            self.evaluator.start()

    @property
    def busy(self) -> bool:
        """Queued batches or shadow copies still running (drain waits for them)."""
        return bool(self._shadow_tasks) or any(
            rt.batcher is not None and not rt.batcher.idle for rt in self.runtimes())

    def runtimes(self) -> list[ModelRuntime]:
        return [*self.fleet.loaded.values(), *self.fleet.retired]

    async def stop(self) -> None:
        """After the drain: close the batchers, write what the log holds, stop evaluating."""
        for rt in self.runtimes():
            if rt.batcher is not None:
                rt.batcher.close()
        if self.predlog is not None:
            await self.predlog.stop()
        if self.evaluator is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.evaluator.stop)
        self.export_metrics(final=True)
        metrics.worker_exited(os.getpid())

    # -- inference ----------------------------------------------------------------------------
    def _predict(self, rt: ModelRuntime, features: np.ndarray, rid: str | None = None) -> Awaitable[np.ndarray]:
        """The model's probabilities, to await; `rid` tags the request for the prediction log (a
        shadow's copy: `shadow_id`; None: not logged), which batched requests reach through the
        batcher's hook. A batched request gets the batcher's own coroutine (no wrapper coroutine
        per request)."""
        batcher = rt.batcher
        if batcher is not None:
            return batcher.infer(features, rid)
        return self._unbatched(rt, features, rid)

    async def _unbatched(self, rt: ModelRuntime, features: np.ndarray, rid: str | None) -> np.ndarray:
        probs = rt.predict(features)
        if rid is not None and self.predlog is not None:
            self.predlog.record(rt, rid, features, probs)
        return probs

    async def infer_v2(self, name: str, version: str | None, request: InferRequest, *, key: bytes | None = None,
                       request_id_header: str | None = None, runtime: ModelRuntime | None = None) -> Answer:
        """A V2 inference request; `key` pins a traffic split's choice (sticky routing); `runtime`:
        the version already chosen for it (`pick`), so a transport can refuse an unknown model
        before it reads the body."""
        rt = runtime or self.fleet.get(name, version, key)
        if len(request.inputs) == 1:
            tensor = request.inputs[0]
            features = rt.features(tensor.name, tensor.array, checked=tensor.checked)
        else:  # a table's columns, one input each
            features = rt.table_features([(t.name, t.array) for t in request.inputs])
        names = rt.output_names
        wanted = request.binary_outputs or dict.fromkeys(names, request.binary_default)
        if request.binary_outputs and (unknown := [n for n in wanted if n not in names]):
            raise BadRequest(f"model {rt.name!r} has no output {unknown[0]!r}; outputs: {', '.join(names)}")
        rid = request_id(request.id or request_id_header)
        probs = await self._predict(rt, features, rid)
        outputs = [(out, rt.output_value(out, probs), binary) for out, binary in wanted.items()]
        v = str(rt.version)
        body, header = encode_v2(rt.name, v if rt.version is not None else None, rid, outputs)
        if version is None:
            self._mirror(name, rt, features, probs, rid)
        return Answer(body, rt.name, v, rid, header, self.proof(name, rid) if self._feedback_key else None)

    async def predict_v1(self, name: str, request: V1Request | np.ndarray, *, key: bytes | None = None,
                         request_id_header: str | None = None, runtime: ModelRuntime | None = None) -> Answer:
        """`{"instances": …}` → `{"predictions": [{"label", "probabilities"}, …]}`, `{"inputs": …}`
        → `{"outputs": {"label", "probabilities"}}` (`codec_v1`; an array is the row form). The
        input named, else the instance shape, says which input it is: ready features, or the raw
        form (e.g. 28×28 pixels)."""
        if isinstance(request, np.ndarray):
            request = V1Request(request)
        rt = runtime or self.fleet.get(name, None, key)
        if request.columns is not None:  # a table's named columns
            features = rt.table_features(list(request.columns.items()))
        else:
            features = _v1_features(rt, request.array, request.input)
        rid = request_id(request_id_header)
        probs = await self._predict(rt, features, rid)
        self._mirror(name, rt, features, probs, rid)
        version = str(rt.version) if rt.version is not None else None
        if rt.regression:
            body = encode_v1_values(request.form, probs, model=rt.name, version=version, rid=rid)
        else:
            body = encode_v1(request.form, rt.labels(probs), probs, model=rt.name, version=version, rid=rid)
        return Answer(body, rt.name, str(rt.version), rid, None,
                      self.proof(name, rid) if self._feedback_key else None)

    def _proves(self, name: str, item_id: str, token: str) -> bool:
        """Whether `token` is the answer's proof for a label's id: the request's own, or (an
        instance `ID/j` of a request of several) its request's, which the answer carried."""
        if hmac.compare_digest(token, self.proof(name, item_id)):
            return True
        rid, sep, j = item_id.rpartition("/")
        return bool(sep and rid and j.isdigit()) and hmac.compare_digest(token, self.proof(name, rid))

    def proof(self, name: str, rid: str) -> str:
        """The feedback token of one answer: only who saw the answer can label it."""
        assert self._feedback_key is not None
        return hmac.new(self._feedback_key, f"{name}\0{rid}".encode(), hashlib.sha256).hexdigest()[:32]

    # -- shadow -------------------------------------------------------------------------------
    def _mirror(self, name: str, primary: ModelRuntime, features: np.ndarray, probs: np.ndarray, rid: str) -> None:
        """Send a copy to the model's shadow, if it has one; never delays the primary answer (its
        own bounded queue: when full the copy is dropped and counted). The shadow's answers are
        logged under its own version as `shadow_id(rid)`, so it gets drift windows, estimated and
        (through the request's label) realised accuracy; not when it is the version that answered
        (the same answers twice would count twice)."""
        table = self.fleet.served.get(name)
        if table is None or table.shadow is None or primary.regression:  # a regression's shadow: not yet
            return
        self.shadow_stats["mirrored"] += 1
        labels = primary.labels(probs)  # only when there is a shadow to compare with
        shadow = table.shadow.runtime
        tag = shadow_id(rid) if shadow.version != primary.version else None
        task = asyncio.get_running_loop().create_task(self._shadow(shadow, features, labels, tag))
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)

    async def _shadow(self, rt: ModelRuntime, features: np.ndarray, labels: np.ndarray, tag: str | None) -> None:
        try:
            probs = await self._predict(rt, features, tag)
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

    # -- feedback -----------------------------------------------------------------------------
    async def feedback(self, name: str, doc: Any, *, client: str | None = None,
                       identity: str | None = None) -> tuple[int, dict[str, Any]]:
        """`{"feedback": [{"id": REQUEST_ID, "label": CLASS}, …]}`: true labels for earlier
        predictions, joined with the prediction log in the database (any worker may hold it).
        With a feedback secret, each item also carries `"token"`: the answer's proof. `client`
        and `identity` are recorded when a label changes an earlier one. Returns (status,
        document): 200 with counts, or the one item's error status."""
        rt = self.fleet.get(name)
        plog = self.predlog
        if plog is None:
            raise NotFound("this server keeps no prediction log (started with --no-log), so it takes no feedback")
        items = doc.get("feedback") if isinstance(doc, dict) else None
        if not isinstance(items, list) or not items:
            raise BadRequest('send {"feedback": [{"id": REQUEST_ID, "label": CLASS}, …]}')
        if len(items) > MAX_FEEDBACK:
            raise BadRequest(f"at most {MAX_FEEDBACK:,} labels per request, got {len(items):,}")
        pairs = []
        refused: dict[int, dict[str, Any]] = {}  # position → the item's refusal (no valid proof)
        for i, item in enumerate(items):
            if not isinstance(item, dict) or not isinstance(item.get("id"), str) or "label" not in item:
                raise BadRequest(f"feedback[{i}] needs a string 'id' and a 'label'")
            if self._feedback_key is not None:
                token = item.get("token")
                if not isinstance(token, str) or not self._proves(name, item["id"], token):
                    refused[i] = {"id": item["id"], "status": "forbidden",
                                  "error": "this server takes a label only with the feedback token of its "
                                           "answer (the X-Feedback-Token header), as 'token'"}
                    continue
            pairs.append((item["id"], item["label"]))
        loop = asyncio.get_running_loop()
        classes = [str(c) for c in rt.classes]
        who = identity or ("feedback-token" if self._feedback_key else "anonymous")

        def store(batch: list[tuple[Any, Any]]) -> Any:
            plog.flush()  # this worker's own recent predictions first
            return record_feedback(plog.engine, name, classes, batch, horizon_s=self.feedback_horizon_s,
                                   client=client, identity=who, regression=rt.regression)

        result = await loop.run_in_executor(None, store, pairs)
        # another worker may not have written its log yet: look again until its flush is surely done
        deadline = loop.time() + plog.config.flush_s * 2 + 0.2
        labels = dict(pairs)
        while (unknown := [(it["id"], labels[it["id"]]) for it in result.items if it["status"] == "unknown"]) \
                and loop.time() < deadline:
            await asyncio.sleep(min(0.1, max(0.0, deadline - loop.time())))
            retry = {it["id"]: it for it in (await loop.run_in_executor(None, store, unknown)).items}
            result.items = [retry.get(it["id"], it) if it["status"] == "unknown" else it for it in result.items]
        if refused:  # back in the order they were sent
            accepted = iter(result.items)
            result.items = [refused[i] if i in refused else next(accepted) for i in range(len(items))]
        counts = result.counts
        for outcome, n in counts.items():
            if n:
                metrics.FEEDBACK.labels(name, outcome).inc(n)
        if len(result.items) == 1 and counts["accepted"] == 0:
            status = {"unknown": 404, "late": 410, "invalid": 400, "forbidden": 403}[result.items[0]["status"]]
            return status, {"error": result.items[0]["error"], **counts}
        return 200, {**counts, "items": [it for it in result.items if it["status"] != "accepted"]}

    # -- models and the repository -----------------------------------------------------------
    def metadata(self, name: str, version: str | None) -> dict[str, Any]:
        rt = self.fleet.get(name, version)
        meta = rt.metadata()
        table = self.fleet.served.get(name)
        if table is not None:
            meta["parameters"]["deployment"] = table.describe()
        if rt.batcher is not None:
            live: dict[str, Any] = {"current_delay_ms": round(rt.batcher.delay_s * 1000, 3),
                                    "stats": dict(rt.batcher.stats)}
            if rt.batcher.controller is not None:
                live["decisions"] = {**rt.batcher.controller.counts,
                                     "last": list(rt.batcher.controller.decisions)[-5:]}
            meta["parameters"]["batching"] = {**meta["parameters"]["batching"], **live}
        return meta

    def pick(self, name: str, version: str | None = None, key: bytes | None = None) -> ModelRuntime:
        """The version that would answer (NotFound when none would)."""
        return self.fleet.get(name, version, key)

    def health(self) -> dict[str, Any]:
        return {**self.fleet.health(), "shadow": self.shadow_stats}

    def database_health(self) -> dict[str, Any]:
        """Whether what this server writes reaches its database (the prediction log's writer
        state; without a log, whether the SQLite file is still the one opened): readiness shows
        it, so a deleted or unreachable database is seen, not silently written past."""
        if self.predlog is not None:
            return self.predlog.health()
        problem = file_problem(self.fleet.registry.engine)
        return {"ok": problem is None, "state": problem.state if problem else "ok",
                "error": problem.message if problem else None}

    def index(self) -> list[dict[str, Any]]:
        return [{"name": n, "version": str(t.pick().version), "state": "READY"}
                for n, t in sorted(self.fleet.served.items())]

    async def refresh(self) -> dict[str, Any]:
        changed = await asyncio.get_running_loop().run_in_executor(None, self.fleet.refresh)
        return {"changed": changed, **self.fleet.health()}

    async def load(self, ref: str) -> None:
        try:
            spec = Spec.parse(ref)
        except UsageError as e:
            raise BadRequest(str(e)) from None
        await asyncio.get_running_loop().run_in_executor(None, self.fleet.add, spec)

    def unload(self, name: str) -> None:
        self.fleet.unload(name)

    # -- traffic ------------------------------------------------------------------------------
    async def traffic(self, name: str) -> dict[str, Any]:
        """The model's deployment config."""
        dep = await asyncio.get_running_loop().run_in_executor(None, self.fleet.registry.traffic, name)
        return dep.to_dict()

    async def set_traffic(self, name: str, doc: Any) -> dict[str, Any]:
        """`{"weights": {alias: percent}, "shadow": alias, "reason": text}`: written to the
        registry (recorded in its history, so every replica follows) and applied here at once."""
        if not isinstance(doc, dict) or not isinstance(doc.get("weights"), dict):
            raise BadRequest('send {"weights": {"ALIAS": PERCENT, …}, "shadow": ALIAS or null}')
        weights, shadow, reason = doc["weights"], doc.get("shadow"), doc.get("reason")
        if not all(isinstance(w, int) and not isinstance(w, bool) for w in weights.values()) or \
                not (shadow is None or isinstance(shadow, str)) or not (reason is None or isinstance(reason, str)):
            raise BadRequest("weights must be whole percentages, shadow an alias name or null, reason a string")
        loop = asyncio.get_running_loop()
        reg = self.fleet.registry
        try:
            await loop.run_in_executor(None, lambda: reg.set_traffic(name, weights, shadow=shadow, reason=reason))
        except UsageError as e:
            raise BadRequest(str(e)) from None
        await loop.run_in_executor(None, self.fleet.refresh)
        return await self.traffic(name)

    # -- metrics ------------------------------------------------------------------------------
    def observe(self, model: str, version: str, route: str, status: int, seconds: float) -> None:
        self.request_metrics.observe(model, version, route, status, seconds)

    def observe_error(self, name: str | None, route: str, status: int, seconds: float) -> None:
        served = name if name in self.fleet.served else "(unknown)"  # client-chosen names stay out of labels
        self.request_metrics.observe(served, "", route, status, seconds)

    def export_metrics(self, *, final: bool = False, inflight: int = 0) -> None:
        """This worker's gauges and counts to Prometheus, and its serving statistics to the
        database (off the event loop; a lost interval costs a few seconds of statistics)."""
        if not self.request_metrics.enabled:
            return
        metrics.INFLIGHT.set(inflight)
        try:
            self.request_metrics.flush()
            self.fleet.export_gauges()
        except Exception as e:  # noqa: BLE001 - metrics must never take serving down
            log.warning("cannot export metrics: %s", e)
        if self.serving_stats is not None and (rows := self.serving_stats.take(force=final)):
            if final:
                self._write_stats(rows)
            else:
                asyncio.get_running_loop().run_in_executor(None, self._write_stats, rows)

    def _write_stats(self, rows: list[dict[str, Any]]) -> None:
        try:
            stats_mod.write(self.fleet.registry.engine, rows)
        except Exception as e:  # noqa: BLE001 - the database may be away
            if not self._stats_failing:  # one line per outage, not one per interval
                log.warning("cannot write serving statistics: %s", e)
            self._stats_failing = True
        else:
            if self._stats_failing:
                log.warning("writing serving statistics again")
            self._stats_failing = False


def _v1_features(rt: ModelRuntime, instances: np.ndarray, name: str | None = None) -> np.ndarray:
    spec = rt.inputs.get(rt.onnx_input)
    if name in (None, rt.onnx_input) and spec is not None and instances.shape[1:] == spec.shape \
            and instances.shape[0] and spec.dtype.kind == "f" and (name is not None or not rt.raw_like_features):
        # the usual request: ready float features (unnamed rows go to a raw form of the same shape)
        return rt.features(spec.name, check_values(f"input {spec.name!r}", spec.v2_datatype, instances), checked=True)
    if name is not None and name not in rt.inputs:
        takes = " or ".join(f"{s.name!r}" for s in rt.inputs.values())
        raise BadRequest(f"model {rt.name!r} has no input {name!r}; it takes {takes}")
    specs = sorted((s for s in rt.inputs.values() if name in (None, s.name) and s.kind != "column"),
                   key=lambda s: s.kind == "features")  # the raw form first: rows as the client has them
    match = next((s for s in specs if tuple(instances.shape[1:]) == s.shape), None)
    if match is None:
        shapes = " or ".join(str(list(s.shape)) for s in specs)
        raise BadRequest(f"each instance must have shape {shapes}, got {list(instances.shape[1:])}")
    if instances.shape[0] == 0:
        raise BadRequest(f"input {match.name!r} holds no instances")
    # the V2 rule and messages: whole numbers in range for integer inputs, finite in the type for floats
    return rt.features(match.name, check_values(f"input {match.name!r}", match.v2_datatype, instances),
                       checked=True)


