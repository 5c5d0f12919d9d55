"""The server's Prometheus metrics (prometheus-client).

With several worker processes each one writes its own files under PROMETHEUS_MULTIPROC_DIR
(`shipyard serve` makes a fresh folder and passes it down) and `GET /metrics` on any worker
merges them all, so a scrape sees the whole server whichever worker answers. Gauges that
describe a worker's state (queue depth, requests in flight) sum over live workers; the
registry's view (the version behind an alias, traffic weights) takes the most recent value.

The hot path pays one counter increment and one histogram observation per request (about
2 µs together, measured); batch-level series are observed per batch; gauges are set once a
second by a background tick, never per request."""

from __future__ import annotations

import os
from typing import Any

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
MODEL_LOADS = Counter("shipyard_model_loads", "Model version loads, by outcome (ok or failed)",
                      ["model", "version", "outcome"])
MODEL_LOAD_SECONDS = Histogram("shipyard_model_load_seconds", "Time to load, verify and warm a model version",
                               ["model"], buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
ALIAS_VERSION = Gauge("shipyard_alias_version", "The version each served alias points at", ["model", "alias"],
                      multiprocess_mode="mostrecent")
TRAFFIC_WEIGHT = Gauge("shipyard_traffic_weight", "Percent of a model's traffic routed to each alias (shadow: 0)",
                       ["model", "alias"], multiprocess_mode="mostrecent")
SHADOW = Counter("shipyard_shadow_requests", "Copies sent to a shadow version, by outcome "
                 "(compared, agreed, dropped, failed)", ["model", "outcome"])
BATCH_DELAY = Gauge("shipyard_batch_delay_seconds", "The batch delay in force (adapted in latency-target mode)",
                    ["model", "version"], multiprocess_mode="livemax")
DELAY_DECISIONS = Counter("shipyard_latency_target_decisions", "Latency-target mode decisions (raise, cut, hold)",
                          ["model", "version", "action"])
LOGGED = Counter("shipyard_predictions_logged", "Predictions written to the prediction log", ["model"])
LOG_DROPPED = Counter("shipyard_predictions_dropped", "Predictions not logged because the writer fell behind",
                      ["model"])
FEEDBACK = Counter("shipyard_feedback", "Labels received, by outcome (accepted, unknown, late, invalid)",
                   ["model", "outcome"])
# set from the evaluator's persisted state (monitoring windows), once it exists for a model
DRIFT_SCORE = Gauge("shipyard_drift_score", "Drift score of the latest window, by test",
                    ["model", "version", "test"], multiprocess_mode="mostrecent")
DRIFT_ALARM = Gauge("shipyard_drift_alarm", "1 when the latest window alarms, by test",
                    ["model", "version", "test"], multiprocess_mode="mostrecent")
ACCURACY = Gauge("shipyard_accuracy", "Accuracy over the latest window (realised from labels, estimated from "
                 "calibrated confidence)", ["model", "version", "kind"], multiprocess_mode="mostrecent")


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


class RequestMetrics:
    """Cached label children for the per-request series (a `labels()` lookup costs as much as
    the increment)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._requests: dict[tuple[str, str, str, int], Any] = {}
        self._latency: dict[tuple[str, str], Any] = {}

    def observe(self, model: str, version: str, route: str, status: int, seconds: float) -> None:
        if not self.enabled:
            return
        key = (model, version, route, status)
        child = self._requests.get(key)
        if child is None:
            if len(self._requests) > 10_000:  # names come from clients (404s): stay bounded
                self._requests.clear()
            child = self._requests[key] = REQUESTS.labels(model, version, route, str(status))
        child.inc()
        if status == 200:
            lkey = (model, route)
            hist = self._latency.get(lkey)
            if hist is None:
                hist = self._latency[lkey] = REQUEST_SECONDS.labels(model, route)
            hist.observe(seconds)
