"""`Monitor(registry)`: the Python face of `shipyard monitor`. Everything here reads the state the
evaluator persisted in the registry's database, so it sees every worker and replica."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from shipyard.errors import NotFound
from shipyard.monitor import alerts as alerts_mod
from shipyard.monitor import stats
from shipyard.monitor import windows as windows_mod
from shipyard.store import leases

if TYPE_CHECKING:
    from shipyard.registry import Model, Registry
    from shipyard.settings import Settings

#: `status` sums serving over this many seconds (every worker of every replica)
SERVING_SPAN_S = 300


class Monitor:
    """`status(name)` → the dict `shipyard monitor status NAME --json` prints."""

    def __init__(self, registry: Registry | None = None, *, settings: Settings | None = None) -> None:
        if registry is None:
            from shipyard.registry import Registry

            registry = Registry(settings=settings)
        self.registry = registry
        self.engine: sa.Engine = registry.engine

    def _model(self, name: str) -> Model:
        return self.registry.model(name)  # NotFound names the model

    def status(self, name: str) -> dict[str, Any]:
        """Per evaluated version: drift (input / prediction / confidence → score, p_value,
        threshold, alarm), accuracy (realised, estimated, n_labels, per class), the window;
        plus the open alerts and who evaluates. `stale` marks a state no evaluator has renewed
        for a while (no server or `monitor run` is evaluating this model)."""
        model = self._model(name)
        by_version: dict[int, list[str]] = {}
        for alias, v in model.aliases.items():
            by_version.setdefault(v, []).append(alias)
        now = time.time()
        lease = leases.current(self.engine, f"monitor:{name}", now=now)
        versions = {}
        for version, state in windows_mod.status(self.engine, name).items():
            versions[str(version)] = {**state, "aliases": sorted(by_version.get(version, [])),
                                      "stale": now - float(state.get("updated_at", 0)) > 30}
        since = now - SERVING_SPAN_S
        serving = {**stats.summary(self.engine, name, since=since).to_dict(), "span_s": SERVING_SPAN_S,
                   "workers": stats.by_worker(self.engine, name, since=since)}
        return {"model": name, "evaluator": None if lease is None else
                {"holder": lease.holder, "since": lease.acquired_at, "expires_at": lease.expires_at},
                "versions": versions, "alerts": self.alerts(name), "serving": serving, "log": self.log_usage()}

    def log_usage(self) -> dict[str, Any]:
        """The prediction log against its size budget (the log is shared by every model): bytes
        and rows per table, how far back predictions reach, rows removed by the running servers."""
        from shipyard.monitor import logbudget

        run = Path(self.registry.settings.home) / "run"
        return logbudget.usage(self.engine, horizon_s=168 * 3600.0,
                               metrics_dirs=sorted(run.glob("metrics-*")) if run.is_dir() else ())

    def alerts(self, name: str, *, include_resolved: bool = False, limit: int = 100) -> list[dict[str, Any]]:
        """Open alerts of `name` (newest first), or all of them."""
        return alerts_mod.recent(self.engine, name, include_resolved=include_resolved, limit=limit)

    def acknowledge(self, alert_id: int, *, reason: str | None = None) -> dict[str, Any]:
        """Acknowledge open alert `alert_id` as the registry's actor (`alerts.acknowledge`: its
        webhook is silenced until it resolves; the resolution is still sent) and record an `ack`
        event in the model's history, with the reason. Returns the alert."""
        alert = alerts_mod.acknowledge(self.engine, alert_id, actor=self.registry.actor, reason=reason)
        with contextlib.suppress(NotFound):  # a model deleted since the alert opened has no history
            self.registry.record(alert["model"], "ack", version=alert["version"], reason=reason,
                                 details={"alert_id": alert_id, "rule": alert["rule"]})
        return alert

    def windows(self, name: str, *, since: float | None = None, version: int | None = None,
                late_labels: bool = True) -> list[dict[str, Any]]:
        """Evaluated windows, oldest first (the report's and dashboard's drift history). Each
        window's realised accuracy counts the labels known now, late ones included (the stored
        figure was what was known when it was evaluated); `late_labels=False` skips that pass
        over the log (a poll that only looks at the alarms)."""
        from shipyard.monitor import feedback

        self._model(name)
        wins = windows_mod.windows(self.engine, name, since=since, version=version)
        if not late_labels:
            return wins
        for w, (acc, n) in zip(wins, feedback.window_accuracy(self.engine, name, wins), strict=True):
            w["results"] = {**w["results"], "realised_accuracy": acc, "n_labels": n}
        return wins

    def report(self, name: str, path: str | Path, *, since: float | None = None) -> Path:
        """Write a self-contained HTML report of `name` (latency, traffic, drift, accuracy,
        versions and alerts over time; default: the last 24 hours)."""
        from shipyard.monitor import report as report_mod

        self._model(name)
        data = report_mod.collect(self, name, since=time.time() - 86400 if since is None else since)
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(report_mod.render(data))
        tmp.replace(out)
        return out

    def trace(self, request_id: str, *, model: str | None = None) -> dict[str, Any]:
        """Where one logged prediction came from and what it fell in: the version that answered,
        its bundle and variant, the training run and its data fingerprint, the label if one came,
        the evaluated window that holds it and the alerts open at the time."""
        from shipyard.attribution import record
        from shipyard.monitor import feedback, predlog
        from shipyard.training.tracking import run_lineage

        names = [model] if model else self.registry.model_names()
        if model:
            self._model(model)
        explained = [{k: v for k, v in e.items() if k != "id"}
                     for e in record.find(self.engine, request_id, model=model)]
        hit = None
        for name in names:
            found = predlog.find(self.engine, name, [request_id])
            if request_id in found:
                hit = (name, *found[request_id])
                break
        if hit is None and explained:  # an explain request: not a prediction (never logged, never in a window)
            e = explained[-1]
            return {"request_id": request_id, "model": e["model"], "version": e["version"], "time": e["ts"],
                    "predicted": None, "label": None, "bundle": None, "run": None, "data_fingerprint": None,
                    "lineage": {}, "window": None, "alerts": [], "explanations": explained}
        if hit is None:
            where = f"model {model!r}" if model else "any model"
            raise NotFound(f"no logged prediction of {where} has request id {request_id!r} (the log keeps "
                           "what retention allows; ids of multi-instance requests are ID/0, ID/1, …)")
        name, ts, predicted, version = hit
        try:
            mv = self.registry.get(f"{name}@{version}")
        except NotFound:
            mv = None  # the version was deleted since
        classes = list(mv.meta.classes) if mv is not None else []
        label = feedback.label_of(self.engine, name, request_id)
        window = windows_mod.window_at(self.engine, name, version, ts)
        # alerts open when it was answered, and the drift alerts its own window took part in
        open_alerts = alerts_mod.open_at(self.engine, name, version, ts,
                                         window_id=window["id"] if window is not None else None)
        run_id = mv.run_id if mv is not None else None
        run = run_lineage(self.engine, run_id) if run_id else None

        def cls(i: int | None) -> str | None:
            return None if i is None else classes[i] if i < len(classes) else str(i)

        lineage = mv.meta.lineage.to_dict() if mv is not None else {}
        return {
            "request_id": request_id, "model": name, "version": version, "time": ts, "predicted": cls(predicted),
            "label": None if label is None else {"label": cls(label[0]), "received_at": label[1],
                                                 "correct": label[0] == predicted},
            "bundle": None if mv is None else {"sha256": mv.bundle_sha256, "variant": mv.variant,
                                               "size_bytes": mv.size_bytes, "aliases": mv.aliases,
                                               "registered_at": mv.created_at.isoformat()},
            "run": dict(run) if run is not None else
            ({"id": run_id, "note": "not in this registry"} if run_id else None),
            "data_fingerprint": (run or {}).get("data_fingerprint") or lineage.get("data_fingerprint"),
            "lineage": lineage,
            "window": None if window is None else {
                "id": window["id"], "ts_first": window["ts_first"], "ts_last": window["ts_last"], "n": window["n"],
                "alarm": window["alarm"], "drift": window["results"].get("drift", {}),
                "estimated_accuracy": window["results"].get("estimated_accuracy")},
            "alerts": open_alerts,
            "explanations": explained,
        }
