"""The server's Prometheus metrics (prometheus-client).

With several worker processes each one writes its own files under PROMETHEUS_MULTIPROC_DIR
(`shipyard serve` makes a fresh folder and passes it down) and `GET /metrics` on any worker
merges them all, so a scrape sees the whole server whichever worker answers. Gauges that
describe a worker's state (queue depth, requests in flight) sum over live workers; the
registry's view (the version behind an alias, traffic weights) takes the most recent value.

The hot path only counts in plain Python (a dict increment and a list append per request, a
list append per batch); a background tick hands the counts to prometheus-client once a second,
and sets the gauges then too, never per request."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess as _mp

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

REQUESTS = Counter("shipyard_requests", "Inference requests answered, by model, version, route and HTTP status",
                   ["model", "version", "route", "status"])
REQUEST_SECONDS = Histogram("shipyard_request_seconds",
                            "Inference request latency inside the server (decode to encode)",
                            ["model", "route"], buckets=LATENCY_BUCKETS)
INFERENCE_SECONDS = Histogram("shipyard_inference_seconds", "Time in ONNX Runtime per batch",
                              ["model", "version"], buckets=LATENCY_BUCKETS)
BATCH_SIZE = Histogram("shipyard_batch_size", "Instances per ONNX Runtime call", ["model", "version"],
                       buckets=BATCH_BUCKETS)
QUEUE_DEPTH = Gauge("shipyard_queue_depth", "Instances waiting for a batch", ["model", "version"],
                    multiprocess_mode="livesum")
INFLIGHT = Gauge("shipyard_inflight_requests", "Requests being handled", multiprocess_mode="livesum")
REFUSED = Counter("shipyard_refused_requests", "Requests refused to keep the server answering, by reason: "
                  "client_limit (429: the client's share of a worker in flight), worker_limit (503: the worker's "
                  "--concurrency in flight), body_timeout (408: the body did not arrive in time)", ["reason"])
MODEL_LOADS = Counter("shipyard_model_loads", "Model version loads, by outcome (ok or failed)",
                      ["model", "version", "outcome"])
MODEL_LOAD_SECONDS = Histogram("shipyard_model_load_seconds", "Time to load, verify and warm a model version",
                               ["model"], buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
ALIAS_VERSION = Gauge("shipyard_alias_version", "The version each served alias points at", ["model", "alias"],
                      multiprocess_mode="mostrecent")
TRAFFIC_WEIGHT = Gauge("shipyard_traffic_weight", "Share of a model's traffic routed to each alias, 0-1 (shadow: 0)",
                       ["model", "alias"], multiprocess_mode="mostrecent")  # a ratio, as Prometheus advises
SHADOW = Counter("shipyard_shadow_requests", "Copies sent to a shadow version, by outcome "
                 "(compared, agreed, dropped, failed)", ["model", "outcome"])
BATCH_DELAY = Gauge("shipyard_batch_delay_seconds", "The batch delay in force (adapted in latency-target mode)",
                    ["model", "version"], multiprocess_mode="livemax")
DELAY_DECISIONS = Counter("shipyard_latency_target_decisions", "Latency-target mode decisions (raise, cut, hold)",
                          ["model", "version", "action"])
LOGGED = Counter("shipyard_predictions_logged", "Predictions written to the prediction log", ["model"])
LOG_DROPPED = Counter("shipyard_predictions_dropped", "Predictions not logged because the writer fell behind",
                      ["model"])
LOG_LOST = Counter("shipyard_prediction_log_dropped", "Prediction-log rows not written, by reason: backlog (the "
                   "writer fell behind), deleted, replaced or unwritable (the SQLite file), write_error (the "
                   "database refused or could not be reached)", ["reason"])
LOG_OK = Gauge("shipyard_prediction_log_ok", "1 while the prediction log can write to its database, 0 while it "
               "cannot (the lowest over the server's workers)", multiprocess_mode="livemin")
# the log's size budget (monitor/logbudget.py): every worker measures the same database, so the latest wins
LOG_BYTES = Gauge("shipyard_prediction_log_bytes", "Bytes the prediction log's rows hold in the database, by table "
                  "(prediction_chunks: ids and outputs; prediction_inputs: full inputs), what its budget counts",
                  ["table"], multiprocess_mode="mostrecent")
LOG_DISK_BYTES = Gauge("shipyard_prediction_log_disk_bytes", "Bytes on disk: the SQLite file, or on PostgreSQL the "
                       "two tables with their indexes and TOAST (freed space is reused, not given back)",
                       multiprocess_mode="mostrecent")
LOG_BUDGET = Gauge("shipyard_prediction_log_budget_bytes", "The prediction log's size budget (--log-max-bytes)",
                   multiprocess_mode="mostrecent")
LOG_SAMPLE_SHARE = Gauge("shipyard_prediction_log_sample_share", "Share of predictions whose full input is kept "
                         "as a sample now (lowered from --log-sample while the budget is tight)",
                         multiprocess_mode="livemin")
LOG_REMOVED = Counter("shipyard_prediction_log_removed", "Prediction-log rows removed after they were written, by "
                      "table and reason: age, rows (the per-model cap), ring (the input ring's size), and under the "
                      "size budget unlabelled (sampled inputs past the feedback horizon without a label), inputs "
                      "(the oldest sampled or ring inputs), past_horizon (the oldest predictions, past the feedback "
                      "horizon), in_horizon (predictions labels could still reach: the budget cannot hold the "
                      "horizon), with_predictions (inputs of removed predictions)", ["table", "reason"])
FEEDBACK = Counter("shipyard_feedback", "Labels received, by outcome (accepted, unknown, late, invalid)",
                   ["model", "outcome"])
# set from the evaluator's persisted state (monitoring windows), once it exists for a model
DRIFT_SCORE = Gauge("shipyard_drift_score", "Drift score of the latest window, by test",
                    ["model", "version", "test"], multiprocess_mode="mostrecent")
DRIFT_ALARM = Gauge("shipyard_drift_alarm", "1 when the latest window alarms, by test",
                    ["model", "version", "test"], multiprocess_mode="mostrecent")
ACCURACY = Gauge("shipyard_accuracy", "Accuracy over the latest window (realised from labels, estimated from "
                 "calibrated confidence)", ["model", "version", "kind"], multiprocess_mode="mostrecent")
MAE = Gauge("shipyard_mae", "A regression's mean absolute error in its target's units (realised from the newest "
            "labels; validation from the bundle)", ["model", "version", "kind"], multiprocess_mode="mostrecent")
ESTIMATE_RELIABLE = Gauge("shipyard_accuracy_estimate_reliable", "1 while the estimated accuracy can be believed (the "
                          "inputs moved only in ways it follows), 0 while it cannot", ["model", "version"],
                          multiprocess_mode="mostrecent")


def multiprocess() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def render() -> tuple[bytes, str]:
    """The exposition of every process of this server (or of this process, when run alone)."""
    if multiprocess():
        registry = CollectorRegistry()
        _mp.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY), CONTENT_TYPE


def worker_exited(pid: int) -> None:
    """Drop a finished worker's live gauges (its counters stay in the totals)."""
    if multiprocess():
        _mp.mark_process_dead(pid)


def observe_many(child: Any, values: list[float]) -> None:
    """Add many observations to one histogram child at once: counts per bucket with numpy, one
    increment per touched bucket (prometheus-client has no bulk observe; this uses its value
    slots, and falls back to observing one by one if they ever change)."""
    if not values:
        return
    buckets, total, bounds = (getattr(child, a, None) for a in ("_buckets", "_sum", "_upper_bounds"))
    if buckets is None or total is None or bounds is None:
        for v in values:
            child.observe(v)
        return
    arr = np.asarray(values, dtype=np.float64)
    counts = np.bincount(np.searchsorted(np.asarray(bounds), arr, side="left"), minlength=len(bounds))
    for i in np.flatnonzero(counts[:len(bounds)]):
        buckets[i].inc(float(counts[i]))
    total.inc(float(arr.sum()))


class RequestMetrics:
    """Per-request series, counted in plain Python on the hot path (a dict increment and a list
    append) and handed to prometheus-client once a second by `flush` (measured: observing each
    request directly cost 3 µs of the ~80 µs a request takes at c=64)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._counts: dict[tuple[str, str, str, int], int] = {}
        self._latency: dict[tuple[str, str, str], list[float]] = {}
        self._children: dict[Any, Any] = {}
        # also handed the flushed counts and latencies (the serving statistics kept in the database)
        self.sink: Any = None

    def observe(self, model: str, version: str, route: str, status: int, seconds: float) -> None:
        if not self.enabled:
            return
        key = (model, version, route, status)
        self._counts[key] = self._counts.get(key, 0) + 1
        if status == 200:
            lat = self._latency.get((model, version, route))
            if lat is None:
                lat = self._latency[(model, version, route)] = []
            lat.append(seconds)

    def flush(self) -> None:
        counts, self._counts = self._counts, {}
        latency, self._latency = self._latency, {}
        for (model, version, route, status), n in counts.items():
            REQUESTS.labels(model, version, route, str(status)).inc(n)
        by_route: dict[tuple[str, str], list[float]] = {}
        for (model, _version, route), values in latency.items():
            by_route.setdefault((model, route), []).extend(values)
        for (model, route), values in by_route.items():
            observe_many(REQUEST_SECONDS.labels(model, route), values)
        if self.sink is not None:
            self.sink(counts, latency)


class BatchMetrics:
    """Batch size and model time per version, kept like `RequestMetrics` and flushed with it."""

    def __init__(self, model: str, version: str) -> None:
        self.sizes: list[float] = []
        self.seconds: list[float] = []
        self._size = BATCH_SIZE.labels(model, version)
        self._time = INFERENCE_SECONDS.labels(model, version)

    def __call__(self, n: int, elapsed: float) -> None:
        self.sizes.append(n)
        self.seconds.append(elapsed)

    def flush(self) -> None:
        sizes, self.sizes = self.sizes, []
        seconds, self.seconds = self.seconds, []
        observe_many(self._size, sizes)
        observe_many(self._time, seconds)
