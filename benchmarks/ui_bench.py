"""How fast `shipyard ui` answers on a project of realistic size: every page against the 300 ms
limit, and what the day's charts cost from the per-minute rollup against the raw rows.

    python benchmarks/ui_bench.py [--requests 20] [--runs 10000] [--versions 100] [--limit-ms 300]
                                  [--home DIR] [--db URL] [--json]

Builds a fresh project home in a temporary folder (`--home DIR`: there, and kept; a home seeded
by an earlier run is reused as it is) and seeds it with bulk SQL inserts, in one transaction per
table, through SQLAlchemy Core:

- `--runs` training runs (finished, failed, interrupted, a few running on another host) over the
  last 60 days, mlp and cnn recipes with their hyperparameters, a name on ~30% and tags on ~40%,
  10 epochs of train/val loss and accuracy each (400,000 `run_metrics` rows at 10,000 runs), a
  checkpoint artifact on every fifth finished run;
- model `digits` with `--versions` versions: one real bundle (harness.bundles.make_bundle)
  registered through `Registry.register`, its `model_versions` row copied for the others (each
  with its own run and accuracy); aliases production (v N-1) and candidate (v N); ~300 alias and
  traffic moves over the last day with who and why; a running rollout (50%) with a step's
  verdicts;
- a day of serving traffic through `monitor.stats.write` (which also fills the per-minute rollup
  `serving_minutes`): a row every 5 s per worker for 2 workers (and one more per worker for the
  candidate in the last 6 hours), diurnal load, three bursts (600 req/s), a spell of server
  errors, and an hour with no rows (server down);
- a day of the prediction log built by the real writer (`PredictionLog._rows`: one chunk of 10
  predictions per 10 s, 86,400 predictions less the hour down) and labels for 20% of them
  through `feedback.record_feedback`;
- the evaluated windows those predictions make (250 per window for production, 50 for the
  candidate), with drift per test, estimates (a few unreliable), an hour of drift alarms; the
  evaluator's `monitor_state` per version and its lease; 50 alerts (some open, two
  acknowledged).

Then it starts `shipyard ui` on a free port and requests each page with httpx: first the
deployment page once, cold (the first request joins the labels to the log; later ones reuse
what it found), then for every page 2 warm-up requests and `--requests` timed ones. The table
shows per page the status, median, p95 and max in ms, the size, and the median against the limit
with PASS/FAIL. Any answer other than 200 stops the run with the body's start. Last, in process:
`stats.series` over the day at the step the 24 h page uses (720 s) from the rollup against the
same over the raw `serving_stats` rows ("pre-aggregated vs raw").

Exit status 0 when every page's median (the cold request included) is under the limit, else 1.
About a minute on 2 cores, seeding included (10 s of it). `--db postgresql+psycopg://…`: seed and serve an
EMPTY PostgreSQL database instead of SQLite (the home still holds the artifact store).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))  # harness/
sys.path.insert(0, str(HERE))  # _setup

import sqlalchemy as sa  # noqa: E402
from _setup import free_port, stop, wait_ready  # noqa: E402

DAY = 86400.0
MODEL = "digits"
CLASSES = [str(i) for i in range(10)]
EPOCHS = 10
DOWN = (10 * 3600.0, 9 * 3600.0)  # the hour with no server: from 10 h ago to 9 h ago
CANARY_S = 6 * 3600.0  # the candidate serves in the last 6 hours
RANGES = ("15m", "1h", "6h", "24h", "7d")
LATENCY_P = np.array([0.02, 0.10, 0.35, 0.33, 0.12, 0.05, 0.02, 0.007, 0.002, 0.001, 0, 0, 0, 0, 0])
BURST_P = np.array([0, 0.01, 0.06, 0.25, 0.30, 0.20, 0.10, 0.05, 0.02, 0.008, 0.002, 0, 0, 0, 0])


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@contextlib.contextmanager
def step(what: str, timings: dict[str, float]) -> Iterator[None]:
    t0 = time.perf_counter()
    yield
    timings[what] = time.perf_counter() - t0
    log(f"  {what}: {timings[what]:.1f} s")


def rid(r: random.Random) -> str:
    return f"{r.getrandbits(128):032x}"


# -- seeding -------------------------------------------------------------------------------------------
def seed_runs(engine: sa.Engine, n: int, now: datetime, r: random.Random, home: Path) -> list[dict[str, Any]]:
    """`n` runs with per-epoch metrics and some artifacts; returns the run rows."""
    from shipyard.store.schema import run_artifacts, run_metrics, runs

    sources = ["mnist", "fashion-mnist", "mnist-sample", "csv:/data/digits-2024-11.csv", "sklearn:digits"]
    runs_rows, metric_rows, artifact_rows = [], [], []
    for i in range(n):
        run_id = rid(r)
        u = r.random()
        status = "finished" if u < 0.80 else "failed" if u < 0.90 else "interrupted" if u < 0.97 else "running"
        model = "mlp" if r.random() < 0.6 else "cnn"
        lr = r.choice([1e-4, 3e-4, 1e-3, 3e-3])
        bs = r.choice([32, 64, 128, 256])
        data = r.choice(sources)
        if status == "running":  # recent, on another host, heartbeat fresh: nobody reaps it
            created = now - timedelta(seconds=r.uniform(60, 3 * 3600))
        else:
            created = now - timedelta(seconds=r.uniform(3 * 3600, 60 * 86400))
        started = created + timedelta(seconds=r.uniform(1, 20))
        epochs = EPOCHS if status == "finished" else r.randint(1, EPOCHS - 1)
        per_epoch = r.uniform(5, 300)
        ended = None if status == "running" else started + timedelta(seconds=per_epoch * epochs)
        final = r.uniform(0.85, 0.99) if model == "cnn" else r.uniform(0.80, 0.975)
        val_acc = [final - (final - 0.4) * math.exp(-e / 2.2) + r.gauss(0, 0.004) for e in range(1, epochs + 1)]
        best_epoch = max(range(epochs), key=lambda e: val_acc[e]) + 1
        recipe = {"data": data, "label_column": "label", "standardize": None, "task": None, "impute": "none",
                  "impute_value": 0.0, "image": None, "loss": None, "val_fraction": None, "split_seed": 0,
                  "model": model,
                  "model_args": {"hidden": [r.choice([128, 256, 512]), 128]} if model == "mlp"
                  else {"channels": [r.choice([16, 32]), 64], "dropout": r.choice([0.0, 0.25])},
                  "label_smoothing": r.choice([0.0, 0.1]), "optimizer": r.choice(["adam", "adamw", "sgd"]), "lr": lr,
                  "weight_decay": r.choice([0.0, 1e-4]), "momentum": 0.9, "batch_size": bs, "epochs": EPOCHS,
                  "patience": None, "schedule": r.choice(["none", "cosine"]), "schedule_step": 5,
                  "schedule_gamma": 0.1, "seed": r.randint(0, 99), "threads": None, "device": "auto", "nproc": 1,
                  "nnodes": 1}
        row = {"id": run_id, "status": status, "created_at": created, "started_at": started, "ended_at": ended,
               "heartbeat_at": now - timedelta(seconds=20) if status == "running" else ended,
               "host": "gpu-node-7" if status == "running" else "trainer-1", "pid": 4242,
               "recipe": recipe, "data_source": data, "data_fingerprint": f"{r.getrandbits(256):064x}",
               "library_versions": {"torch": "2.5.1", "numpy": "2.1.3", "shipyard": "0.9.0"},
               "threads": 2, "device": "cpu", "run_dir": str(home / "runs" / run_id), "epochs_run": epochs,
               "best_epoch": best_epoch, "best_val_accuracy": val_acc[best_epoch - 1] if status != "running" else None,
               "test_accuracy": val_acc[best_epoch - 1] - r.uniform(0, 0.01) if status == "finished" else None,
               "error": {"failed": "RuntimeError: CUDA out of memory", "interrupted": "KeyboardInterrupt"}.get(status),
               "parent_run_id": None,
               "name": f"{model}-lr{lr:g}-bs{bs}-{i}" if r.random() < 0.3 else None,
               "tags": {"team": r.choice(["vision", "platform", "research"]),
                        "stage": r.choice(["try", "candidate", "prod"])} if r.random() < 0.4 else None}
        runs_rows.append(row)
        for e in range(epochs):
            at = started + timedelta(seconds=per_epoch * (e + 1))
            va = val_acc[e]
            ta = min(0.999, va + r.uniform(0, 0.02))
            for key, value in (("train_loss", -math.log(ta) + 0.02), ("val_loss", -math.log(va) + 0.03),
                               ("train_accuracy", ta), ("val_accuracy", va)):
                metric_rows.append({"run_id": run_id, "key": key, "step": e + 1, "value": value, "at": at})
        if status == "finished" and i % 5 == 0:
            artifact_rows.append({"run_id": run_id, "name": "checkpoint", "sha256": f"{r.getrandbits(256):064x}",
                                  "size_bytes": r.randint(400_000, 9_000_000), "created_at": ended})
    with engine.begin() as conn:
        conn.execute(runs.insert(), runs_rows)
    with engine.begin() as conn:
        for k in range(0, len(metric_rows), 100_000):
            conn.execute(run_metrics.insert(), metric_rows[k:k + 100_000])
        conn.execute(run_artifacts.insert(), artifact_rows)
    return runs_rows


def seed_model(engine: sa.Engine, home: Path, versions: int, run_rows: list[dict[str, Any]], now: datetime,
               r: random.Random) -> None:
    """One real bundle registered as v1, its row copied for v2..vN; aliases, ~300 moves, a rollout."""
    from harness.bundles import make_bundle
    from shipyard.registry import Registry
    from shipyard.settings import Settings
    from shipyard.store.schema import aliases, deployments, model_events, model_versions, models, rollouts

    finished = sorted((x for x in run_rows if x["status"] == "finished"), key=lambda x: x["created_at"])
    chosen = [finished[int(k * (len(finished) - 1) / max(versions - 1, 1))] for k in range(versions)]
    reg = Registry(settings=Settings(home=home, database_url=None if engine.url.get_backend_name() == "sqlite"
                                     else engine.url.render_as_string(hide_password=False)), actor="bench")
    with tempfile.TemporaryDirectory() as tmp:
        b = make_bundle(Path(tmp) / "bundle", name=MODEL, lineage={
            "run_id": chosen[0]["id"], "parent_version": None, "data_fingerprint": chosen[0]["data_fingerprint"],
            "library_versions": {"onnx": "1.17.0"}})
        reg.register(b, MODEL, alias="production", reason="first version")
    t0 = now - timedelta(days=60)
    with engine.begin() as conn:
        v1 = dict(conn.execute(sa.select(model_versions).where(model_versions.c.name == MODEL)).mappings().one())
        conn.execute(models.update().values(created_at=t0, last_version=versions))
        conn.execute(model_versions.update().values(created_at=t0))
        conn.execute(model_events.update().values(at=t0))
        rows, events = [], []
        for v in range(2, versions + 1):
            run = chosen[v - 1]
            meta = json.loads(json.dumps(v1["meta"]))
            meta["lineage"].update(run_id=run["id"], parent_version=v - 1, data_fingerprint=run["data_fingerprint"])
            meta["variants"][0]["accuracy"] = round(run["test_accuracy"] or 0.9, 4)
            at = t0 + timedelta(seconds=(v - 1) * (59 * 86400) / versions)
            rows.append({**v1, "version": v, "run_id": run["id"], "created_at": at, "meta": meta,
                         "tags": {"stage": r.choice(["try", "candidate"])}, "description": f"retrain #{v}"
                         if v % 3 == 0 else None})
            events.append({"name": MODEL, "version": v, "kind": "register", "to_version": v, "reason": None,
                           "actor": "autopilot", "at": at, "details": {"bundle_sha256": v1["bundle_sha256"],
                                                                       "run_id": run["id"], "variant": "fp32"}})
        conn.execute(model_versions.insert(), rows)
        # a day of moves: candidate onto a new version, 10% then 50%, then promote or roll back
        prod = max(1, versions - 6)
        start = now.timestamp() - DAY
        moves: list[tuple[str, Any]] = []
        while len(moves) < 290:
            nxt = min(versions, prod + 1 + r.randint(0, 1))
            moves += [("alias", ("candidate", nxt, "retrained on last week's labels")),
                      ("traffic", ({"production": 90, "candidate": 10}, "rollout step 1 of 3")),
                      ("traffic", ({"production": 50, "candidate": 50}, "rollout step 2 of 3: gates passed"))]
            if r.random() < 0.5:
                moves += [("alias", ("production", nxt, "promoted: every gate passed")),
                          ("traffic", ({"production": 100}, "rollout done"))]
            else:
                moves += [("traffic", ({"production": 100}, "rolled back: accuracy gate failed (p=0.01)"))]
        moves += [("alias", ("production", versions - 1, "promoted after the canary")),
                  ("alias", ("candidate", versions, "retrained on the newest labels")),
                  ("traffic", ({"production": 90, "candidate": 10}, "rollout step 1 of 3")),
                  ("traffic", ({"production": 50, "candidate": 50}, "rollout step 2 of 3: gates passed"))]
        held: dict[str, int] = {"production": 1}
        weights: dict[str, int] = {"production": 100}
        revision = 0
        for k, (kind, what) in enumerate(moves):
            at = datetime.fromtimestamp(start + (k + 0.5) * DAY / len(moves), UTC)
            actor = r.choice(["alice@laptop", "bob@ci", "autopilot", "rollout:ui-host:812"])
            if kind == "alias":
                alias, v, reason = what
                events.append({"name": MODEL, "version": v, "kind": "alias", "alias": alias,
                               "from_version": held.get(alias), "to_version": v, "reason": reason, "actor": actor,
                               "at": at, "details": None})
                held[alias] = v
            else:
                new, reason = what
                revision += 1
                events.append({"name": MODEL, "version": None, "kind": "traffic", "reason": reason, "actor": actor,
                               "at": at, "details": {"weights": new, "shadow": None, "revision": revision,
                                                     "versions": {a: held[a] for a in new},
                                                     "previous": {"weights": weights, "shadow": None,
                                                                  "revision": revision - 1}}})
                weights = new
        for e in events:
            for key in ("alias", "from_version", "to_version"):
                e.setdefault(key, None)
        conn.execute(model_events.insert(), events)
        conn.execute(aliases.delete().where(aliases.c.name == MODEL))
        conn.execute(aliases.insert(), [{"name": MODEL, "alias": a, "version": v, "updated_at": now}
                                        for a, v in held.items()])
        conn.execute(deployments.insert().values(name=MODEL, weights=weights, shadow=None, revision=revision,
                                                 updated_at=now))
        t = now.timestamp()
        gates = [{"gate": "error_rate", "passed": True, "value": 0.0012, "limit": 0.01,
                  "detail": "3 of 2,480 answers failed"},
                 {"gate": "p99", "passed": True, "value": 8.1, "limit": 12.0, "detail": "candidate p99 (server side)"},
                 {"gate": "accuracy", "passed": True, "value": 0.941, "limit": None, "p_value": 0.41,
                  "detail": "candidate 94.1% on 312 labels vs champion 93.5% on 2,870"},
                 {"gate": "agreement", "passed": True, "value": 0.97, "limit": 0.9,
                  "detail": "97.0% of 500 replayed inputs agree"}]
        conn.execute(rollouts.insert().values(
            name=MODEL, candidate=versions, champion=versions - 1, steps=[10, 50, 100], step=1, status="running",
            config={"steps": [10, 50, 100], "min_requests": 200, "min_labels": 100, "step_timeout_s": 600.0},
            started_at=t - 1800, step_started_at=t - 600, updated_at=t - 5, holder="rollout:ui-host:812",
            reason=None, verdicts=[{"step": 0, "weight": 10, "at": t - 600, "gates": gates,
                                    "evidence": {"requests": 2480, "errors": 3, "labels": 312}}]))
    reg.engine.dispose()


def seed_serving(engine: sa.Engine, now: float, versions: int, rng: np.random.Generator) -> int:
    """A day of `serving_stats` (and its minutes) through `stats.write`; returns the rows."""
    from shipyard.monitor import stats

    prod, cand = versions - 1, versions
    rows: list[dict[str, Any]] = []
    for worker, offset in (("web-1:4101", 0.0), ("web-2:4102", 2.3)):
        ends = now - DAY + offset + 5 * np.arange(1, int(DAY / 5) + 1)
        ends = ends[ends <= now]
        ends = ends[~((ends > now - DOWN[0]) & (ends <= now - DOWN[1]))]
        hour = ((ends - (now - DAY)) / 3600) % 24
        rps = 30 + 25 * np.sin((hour - 8) / 24 * 2 * np.pi) + rng.normal(0, 2, len(ends))
        burst = np.zeros(len(ends), bool)
        for b in (3.2, 13.5, 20.1):  # three 5-minute bursts of 600 req/s
            burst |= (ends >= now - DAY + b * 3600) & (ends < now - DAY + b * 3600 + 300)
        rps = np.where(burst, 300.0, np.maximum(rps, 1.0))  # per worker: 600 together
        req = rng.poisson(rps * 5)
        err_rate = np.where((ends > now - 4 * 3600) & (ends < now - 4 * 3600 + 600), 0.06, 0.0008)
        canary = ends > now - CANARY_S
        share = np.where(ends > now - 600, 0.5, 0.1)
        cand_req = np.where(canary, rng.binomial(req, share), 0)
        for version, n in ((prod, req - cand_req), (cand, cand_req)):
            lat = np.where(burst[:, None], rng.multinomial(n, BURST_P / BURST_P.sum()),
                           rng.multinomial(n, LATENCY_P / LATENCY_P.sum()))
            errors = rng.binomial(n, err_rate)
            rejected = rng.binomial(n, 0.002)
            for i in np.flatnonzero(n > 0).tolist():
                rows.append({"model": MODEL, "version": version, "worker": worker, "ts_start": float(ends[i] - 5),
                             "ts_end": float(ends[i]), "requests": int(n[i]), "errors": int(errors[i]),
                             "rejected": int(rejected[i]), "latency": lat[i].tolist()})
    rows.sort(key=lambda x: x["ts_end"])
    stats.write(engine, rows)
    return len(rows)


class _Runtime:
    """What the log's writer reads of a served model: name and version (no projection)."""

    def __init__(self, version: int) -> None:
        self.name, self.version = MODEL, version


def seed_log(engine: sa.Engine, now: float, versions: int, rng: np.random.Generator, r: random.Random
             ) -> dict[str, Any]:
    """A day of prediction chunks (one per 10 s, 10 predictions) through the writer's own row
    builder; labels for 20% through `record_feedback`. Returns the predictions per version."""
    from shipyard.monitor.config import LogConfig
    from shipyard.monitor.feedback import record_feedback
    from shipyard.monitor.predlog import PredictionLog

    plog = PredictionLog(engine, LogConfig(sample=0.0, ring=0, max_bytes=1 << 40))
    rts = {v: _Runtime(v) for v in (versions - 1, versions)}
    feats = np.zeros((1, 784), np.float32)
    starts = now - DAY + 10 * np.arange(int(DAY / 10))
    starts = starts[~((starts > now - DOWN[0]) & (starts <= now - DOWN[1]))]
    n = len(starts) * 10
    logits = rng.normal(0, 1, (n, 10))
    logits[np.arange(n), rng.integers(0, 10, n)] += rng.uniform(1, 7, n)
    probs = np.exp(logits)
    probs = (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)
    chunks: list[dict[str, Any]] = []
    per_version: dict[int, list[tuple[float, str, int]]] = {v: [] for v in rts}
    k = 0
    for c, t0 in enumerate(starts.tolist()):
        version = versions if t0 > now - CANARY_S and c % 3 == 0 else versions - 1
        batch = []
        for j in range(10):
            ts = t0 + j + float(rng.uniform(0, 1))
            request_id = rid(r)
            batch.append((rts[version], [request_id], [1], feats, probs[k:k + 1], ts))
            per_version[version].append((ts, request_id, int(probs[k].argmax())))
            k += 1
        rows, _ = plog._rows(batch)
        chunks += rows
    for i in range(0, len(chunks), 2000):
        plog._insert(chunks[i:i + 2000], [])
    plog._pool.shutdown(wait=False)
    preds = [p for ps in per_version.values() for p in ps]
    labelled = [p for p in preds if r.random() < 0.2]
    items = [(rq, CLASSES[pred if r.random() < 0.92 else r.randrange(10)]) for _, rq, pred in labelled]
    res = record_feedback(engine, MODEL, CLASSES, items, horizon_s=7 * DAY, now=now)
    if res.counts["accepted"] != len(items):
        raise SystemExit(f"feedback: {res.counts}")
    return {"chunks": len(chunks), "predictions": n, "labels": len(items), "per_version": per_version}


def seed_monitor(engine: sa.Engine, now: float, versions: int, per_version: dict[int, list[tuple[float, str, int]]],
                 r: random.Random) -> int:
    """The windows the evaluator would have written for these predictions, its state and lease,
    and 50 alerts. Returns the number of windows."""
    from shipyard.monitor.drift import TESTS
    from shipyard.store.schema import alerts, leases, monitor_state, monitor_windows, prediction_chunks

    rows = []
    states = {}
    for version, preds in per_version.items():
        size = 250 if version == versions - 1 else 50
        ts = sorted(p[0] for p in preds)
        level, last = 0.0, None
        for k in range(0, len(ts) - size + 1, size):
            first, end = ts[k], ts[k + size - 1]
            drifting = now - 5 * 3600 < end < now - 4 * 3600
            th = {"window": size, "alpha": 0.002, "draws": 2000, "input": 8e-5, "prediction": 1e-4,
                  "confidence": 1e-4, "mean": 1e-4, "cusum": 6.0, "softmax": 1e-4, "seconds": 0.0, "source": "bundle"}
            drift = {}
            for test in TESTS:
                p = 10 ** -r.uniform(5, 9) if drifting and test in ("input", "mean") else 10 ** -r.uniform(0, 3)
                drift[test] = {"test": test, "score": -math.log10(p) / 20, "p_value": p, "threshold": th[test],
                               "alarm": p <= th[test], "n": size}
            level = max(0.0, level + (3.0 if drifting else -1.0))
            reliable = not drifting and r.random() > 0.05
            est = r.gauss(0.93 if not drifting else 0.84, 0.01)
            results = {"drift": drift, "estimated_accuracy": est, "estimated": est,
                       "estimated_method": "label-shift adjusted" if drifting else "calibrated confidence",
                       "estimated_reliable": reliable,
                       "estimated_reason": None if reliable else "the inputs drifted beyond what the held-out "
                                                                 "rows calibrate",
                       "estimated_priors": None,
                       "sequential": {"level": level, "allowance": 6.0, "alerting": level > 6.0},
                       "realised_accuracy": r.gauss(0.93, 0.02), "n_labels": r.randint(20, 60)}
            alarm = any(d["alarm"] for d in drift.values())
            rows.append({"model": MODEL, "version": version, "ts_first": first, "ts_last": end, "n": size,
                         "evaluated_at": end + 1.0, "alarm": alarm, "results": results})
            last = (rows[-1], th, results)
        assert last is not None
        w, th, res = last
        states[version] = {
            "model": MODEL, "version": version, "updated_at": now, "evaluator": "web-1:4101",
            "window": {"size": size, "configured": 250, "max_age_s": 300.0, "note": None, "n": size,
                       "ts_first": w["ts_first"], "ts_last": w["ts_last"], "evaluated_at": w["evaluated_at"]},
            "pending": 17, "predictions_seen": len(ts), "windows": len(ts) // size, "skipped": 0,
            "drift": res["drift"], "alarm": w["alarm"], "sequential": res["sequential"],
            "rules": {"drift": {"state": "ok", "message": "no drift alarm in the last windows"},
                      "accuracy-drop": {"state": "ok", "message": "estimated 93.1% ≥ validation 97.0% − 10 points"}},
            "thresholds": th, "note": None, "task": "classification",
            "accuracy": {"realised": 0.93, "estimated": res["estimated_accuracy"],
                         "estimated_reliable": res["estimated_reliable"], "estimated_reason": res["estimated_reason"],
                         "estimated_method": res["estimated_method"], "n_labels": 500,
                         "per_class": {c: {"accuracy": 0.93, "n": 50} for c in CLASSES}, "validation": 0.97,
                         "holdout_accuracy": 0.965, "validation_mae": None}}
    with engine.begin() as conn:
        conn.execute(monitor_windows.insert(), rows)
        cursor = conn.execute(sa.select(sa.func.max(prediction_chunks.c.id))).scalar() or 0
        conn.execute(monitor_state.insert(), [{"model": MODEL, "version": v, "state": s, "cursor": cursor,
                                               "updated_at": now} for v, s in states.items()])
        conn.execute(leases.insert(), [{"name": f"monitor:{MODEL}", "holder": "monitor:web-1:4101",
                                        "acquired_at": now - 3600, "expires_at": now + 3600},
                                       {"name": f"update:{MODEL}", "holder": "rollout:ui-host:812",
                                        "acquired_at": now - 1800, "expires_at": now + 3600}])
        rules = [("drift", "drift", "warning"), ("accuracy-drop", "accuracy", "warning"),
                 ("labels-needed", "labels", "info"), ("server-errors", "error_rate", "critical")]
        alert_rows = []
        for i in range(50):
            rule, kind, severity = rules[i % len(rules)]
            opened = now - DAY + (i + 0.5) * DAY / 50
            status = "firing" if i >= 46 else "unknown" if i == 45 else "resolved"
            alert_rows.append({
                "model": MODEL, "version": versions - 1 if kind != "error_rate" else None, "rule": rule, "kind": kind,
                "severity": severity, "status": status, "opened_at": opened, "last_seen_at": min(now, opened + 900),
                "resolved_at": None if status != "resolved" else opened + r.uniform(300, 3600),
                "message": {"drift": "input drift: p=3.1e-07 ≤ 8.0e-05 in 3 of the last 4 windows",
                            "accuracy": "estimated accuracy 84.2% is 12.8 points below validation 97.0%",
                            "labels": "no labels in the last hour: realised accuracy cannot be measured",
                            "error_rate": "server errors 6.1% > 5%"}[kind],
                "details": {"windows": [1, 2, 3]} if kind == "drift" else {}, "notified": "none",
                "acknowledged_at": opened + 120 if i in (46, 47) else None,
                "acknowledged_by": "alice@laptop" if i in (46, 47) else None,
                "ack_reason": "known: the upstream camera firmware changed" if i in (46, 47) else None})
        conn.execute(alerts.insert(), alert_rows)
    return len(rows)


def seed(home: Path, url: str | None, args: argparse.Namespace, timings: dict[str, float]) -> dict[str, Any]:
    from shipyard.registry import Registry
    from shipyard.settings import Settings

    r = random.Random(7)
    rng = np.random.default_rng(7)
    now_dt = datetime.now(UTC)
    now = now_dt.timestamp()
    with step("migrate", timings):
        engine = Registry(settings=Settings(home=home, database_url=url)).engine
    with step(f"runs ({args.runs:,}, {args.runs * EPOCHS * 4:,} metric rows)", timings):
        run_rows = seed_runs(engine, args.runs, now_dt, r, home)
    with step(f"model ({args.versions} versions, events, rollout)", timings):
        seed_model(engine, home, args.versions, run_rows, now_dt, r)
    with step("serving stats (a day, 2 workers)", timings):
        n_stats = seed_serving(engine, now, args.versions, rng)
    with step("prediction log and labels", timings):
        logged = seed_log(engine, now, args.versions, rng, r)
    with step("windows, state, alerts", timings):
        n_windows = seed_monitor(engine, now, args.versions, logged.pop("per_version"), r)
    finished = [x for x in run_rows if x["status"] == "finished"]
    named = next(x["name"] for x in run_rows if x["name"])
    info = {"seeded_at": now, "run": finished[-1]["id"], "compare": [finished[-1]["id"], finished[-2]["id"]],
            "query": named.split("-")[1], "serving_rows": n_stats, "windows": n_windows, **logged}
    (home / "ui_bench.json").write_text(json.dumps(info))
    return info


# -- measuring ---------------------------------------------------------------------------------------
def pages(info: dict[str, Any], versions: int) -> list[tuple[str, str]]:
    a, b = info["compare"]
    out = [("overview", "/"), ("runs", "/runs"), ("runs sorted by val acc", "/runs?sort=val"),
           (f"runs q={info['query']}", f"/runs?q={info['query']}"), ("runs failed", "/runs?status=failed"),
           ("runs page 100", "/runs?page=100"), ("run", f"/runs/{info['run']}"),
           ("compare 2 runs", f"/runs/compare?ids={a}&ids={b}"), ("models", "/models"),
           (f"model ({versions} versions)", f"/models/{MODEL}"),
           ("compare versions 1, 2", f"/models/{MODEL}/compare?a=1&b=2")]
    out += [(f"deployment {rng}", f"/deployments/{MODEL}?range={rng}") for rng in RANGES]
    return out


def get(client: Any, path: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    resp = client.get(path)
    ms = (time.perf_counter() - t0) * 1000
    if resp.status_code != 200:
        raise SystemExit(f"GET {path} answered {resp.status_code}:\n{resp.text[:500]}")
    return ms, len(resp.content)


def measure(port: int, info: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    import httpx

    results = []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        ms, size = get(client, f"/deployments/{MODEL}?range=24h")  # before anything else: labels not joined yet
        results.append({"page": "deployment 24h, cold (1st request)", "path": f"/deployments/{MODEL}?range=24h",
                        "status": 200, "n": 1, "median_ms": ms, "p95_ms": ms, "max_ms": ms, "bytes": size})
        for name, path in pages(info, args.versions):
            for _ in range(2):
                get(client, path)
            times = []
            for _ in range(args.requests):
                ms, size = get(client, path)
                times.append(ms)
            times.sort()
            results.append({"page": name, "path": path, "status": 200, "n": len(times),
                            "median_ms": statistics.median(times),
                            "p95_ms": times[min(len(times) - 1, math.ceil(0.95 * len(times)) - 1)],
                            "max_ms": times[-1], "bytes": size})
            log(f"  {name:<36} {results[-1]['median_ms']:7.1f} ms")
    for x in results:
        x["ratio"] = x["median_ms"] / args.limit_ms
        x["verdict"] = "PASS" if x["median_ms"] < args.limit_ms else "FAIL"
    return results


def series_costs(home: Path, url: str | None, since: float, repeat: int = 5) -> dict[str, Any]:
    """`stats.series` over the day at 720 s steps: from the minutes, and forced onto the raw rows."""
    from shipyard.monitor import stats
    from shipyard.settings import Settings
    from shipyard.store.engine import engine_for

    engine = engine_for(Settings(home=home, database_url=url).db_url)

    def best(fn: Any) -> tuple[float, Any]:
        times, out = [], None
        for _ in range(repeat):
            t0 = time.perf_counter()
            out = fn()
            times.append((time.perf_counter() - t0) * 1000)
        return statistics.median(times), out

    if not stats._rolled_up(engine, MODEL, since):
        raise SystemExit("serving_minutes does not cover the day: series() would read the raw rows")
    rolled_ms, rolled = best(lambda: stats.series(engine, MODEL, since=since, step_s=720))
    real = stats._rolled_up
    stats._rolled_up = lambda *a, **k: False  # type: ignore[assignment]
    try:
        raw_ms, raw = best(lambda: stats.series(engine, MODEL, since=since, step_s=720))
    finally:
        stats._rolled_up = real  # type: ignore[assignment]
    with engine.connect() as conn:
        n_min = conn.execute(sa.text("SELECT count(*) FROM serving_minutes WHERE minute >= :m"),
                             {"m": int(since // 60)}).scalar_one()
        n_raw = conn.execute(sa.text("SELECT count(*) FROM serving_stats WHERE ts_end >= :t"),
                             {"t": since}).scalar_one()
    same = sum(p["rps"] for p in rolled) * 720, sum(p["rps"] for p in raw) * 720
    return {"rollup_ms": rolled_ms, "raw_ms": raw_ms, "ratio": rolled_ms / raw_ms, "rollup_rows": n_min,
            "raw_rows": n_raw, "points": [len(rolled), len(raw)], "requests": [round(same[0]), round(same[1])]}


def table(results: list[dict[str, Any]], series: dict[str, Any], args: argparse.Namespace, info: dict[str, Any],
          timings: dict[str, float], out: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(file=out, width=140)
    t = Table(title=f"shipyard ui, {args.runs:,} runs, {args.versions} versions, a day of traffic "
                    f"({info['serving_rows']:,} serving rows, {info['predictions']:,} predictions, "
                    f"{info['labels']:,} labels, {info['windows']} windows); {args.requests} timed requests "
                    f"per page after 2 warm-ups; limit {args.limit_ms:g} ms")
    for col in ("page", "status", "median ms", "p95 ms", "max ms", "bytes", f"median / {args.limit_ms:g}", ""):
        t.add_column(col, justify="left" if col == "page" else "right")
    for x in results:
        t.add_row(x["page"], str(x["status"]), f"{x['median_ms']:.1f}", f"{x['p95_ms']:.1f}", f"{x['max_ms']:.1f}",
                  f"{x['bytes']:,}", f"{x['ratio']:.2f}", "[green]PASS" if x["verdict"] == "PASS" else "[red]FAIL")
    console.print(t)
    worst = max(results, key=lambda x: x["ratio"])
    console.print(f"worst: {worst['page']} at {worst['median_ms']:.1f} ms median = {worst['ratio']:.2f}× the "
                  f"{args.limit_ms:g} ms limit ({'PASS' if worst['verdict'] == 'PASS' else 'FAIL'})")
    console.print(f"day chart series (stats.series, 24 h at 720 s steps, in process, median of 5): pre-aggregated "
                  f"{series['rollup_ms']:.1f} ms ({series['rollup_rows']:,} minute rows) vs raw "
                  f"{series['raw_ms']:.1f} ms ({series['raw_rows']:,} rows): {series['ratio']:.3f}× "
                  f"({1 / series['ratio']:.0f}× faster); requests counted: {series['requests'][0]:,} / "
                  f"{series['requests'][1]:,} (the rollup's first minute starts before the range)")
    if timings:
        console.print("seeding: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[1:]))
    ap.add_argument("--requests", type=int, default=20, help="timed requests per page, after 2 warm-ups")
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--versions", type=int, default=100)
    ap.add_argument("--limit-ms", type=float, default=300.0, help="the goal for every page's median")
    ap.add_argument("--home", type=Path, help="seed here and keep it (reused as it is when already seeded)")
    ap.add_argument("--db", help="an EMPTY PostgreSQL database (postgresql+psycopg://…) instead of SQLite")
    ap.add_argument("--json", action="store_true", help="results as one JSON object on stdout; tables on stderr")
    args = ap.parse_args()
    if args.requests < 1 or args.runs < 10 or args.versions < 3:
        ap.error("--requests ≥ 1, --runs ≥ 10, --versions ≥ 3")
    t_start = time.perf_counter()
    tmp = None
    if args.home is None:
        tmp = tempfile.TemporaryDirectory(prefix="shipyard-ui-bench-")
        home = Path(tmp.name)
    else:
        home = args.home.resolve()
        home.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    try:
        marker = home / "ui_bench.json"
        if marker.exists():
            info = json.loads(marker.read_text())
            log(f"reusing the home seeded {(time.time() - info['seeded_at']) / 60:.0f} min ago: {home}")
        else:
            log(f"seeding {home}:")
            info = seed(home, args.db, args, timings)
        env = {**os.environ, "SHIPYARD_HOME": str(home), "SHIPYARD_TOKEN": "ui-bench-token",
               **({"SHIPYARD_DATABASE_URL": args.db} if args.db else {})}
        port = free_port()
        server_log = home / "ui-server.log"
        with server_log.open("wb") as err:
            proc = subprocess.Popen([sys.executable, "-m", "shipyard", "ui", "--host", "127.0.0.1", "--port",
                                     str(port)], env=env, stdout=subprocess.DEVNULL, stderr=err)
        try:
            ready = wait_ready(f"http://127.0.0.1:{port}/healthz", proc, timeout=60)  # type: ignore[arg-type]
            log(f"shipyard ui ready in {ready:.1f} s; measuring:")
            results = measure(port, info, args)
        except SystemExit:
            log("the server's log ends:\n" + server_log.read_text(errors="replace")[-3000:])
            raise
        finally:
            stop(proc)  # type: ignore[arg-type]
        log("stats.series in process:")
        series = series_costs(home, args.db, time.time() - DAY)
        total = time.perf_counter() - t_start
        out = sys.stderr if args.json else sys.stdout
        table(results, series, args, info, timings, out)
        print(f"total {total:.0f} s", file=out)
        ok = all(x["verdict"] == "PASS" for x in results)
        if args.json:
            print(json.dumps({"limit_ms": args.limit_ms, "pages": results, "series": series, "seeding_s": timings,
                              "total_s": total, "pass": ok, "worst_ratio": max(x["ratio"] for x in results)}))
    finally:
        if tmp is not None:
            tmp.cleanup()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
