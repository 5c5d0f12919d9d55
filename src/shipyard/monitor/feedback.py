"""The labels that come back for logged predictions (the `feedback` table): `record_feedback`
joins them with the prediction log as they arrive; the read side serves realised accuracy (per
version, and per evaluated window however late its labels came), exports and traces.

A shadow's answers are logged under the shadow's version with the request id `shadow_id(rid)`:
the primary's id behind a prefix no client id can carry (client ids are printable ASCII). A
label is sent for the primary's id and stored once; it scores the answer the client got (the
primary's version), and, for the shadow's version only, the shadow's answer to the same input.
Model-wide figures count it once; ids of shadow answers take no label of their own."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import sqlalchemy as sa

from shipyard.monitor.predlog import find
from shipyard.store.schema import feedback, feedback_changes

__all__ = ["SHADOW_PREFIX", "FeedbackResult", "accuracy", "changes", "label_of", "labels", "mae", "primary_id",
           "record_feedback", "shadow_id", "window_accuracy"]
log = logging.getLogger("shipyard.monitor")

#: the log's request id of a shadow's answer is this + the primary's id ("·" is U+00B7: never in a
#: client's id, which `serve.dataplane.request_id` keeps to printable ASCII)
SHADOW_PREFIX = "shadow\u00b7"


def shadow_id(request_id: str) -> str:
    """The id a shadow's answer to `request_id` is logged under: distinct from the primary's, so
    a label for the request joins the answer the client got, and request-id lookups, retry
    de-duplication and retraining data never mistake the copy for the request."""
    return SHADOW_PREFIX + request_id


def primary_id(request_id: str) -> str:
    """The request a logged id answered: the primary's id for a shadow's answer, else itself."""
    return request_id[len(SHADOW_PREFIX):] if request_id.startswith(SHADOW_PREFIX) else request_id


def labels(engine: sa.Engine, model: str, *, since: float | None = None) -> dict[str, int]:
    """request id → class index of every label received for `model` (since `since`, unix seconds)."""
    q = sa.select(feedback.c.request_id, feedback.c.label).where(feedback.c.model == model)
    if since is not None:
        q = q.where(feedback.c.ts >= since)
    with engine.connect() as conn:
        return {str(rid): int(label) for rid, label in conn.execute(q)}


def values(engine: sa.Engine, model: str, *, since: float | None = None) -> dict[str, float]:
    """request id → true value of every regression label received for `model` (since `since`)."""
    q = sa.select(feedback.c.request_id, feedback.c.value).where(feedback.c.model == model,
                                                                 feedback.c.value.is_not(None))
    if since is not None:
        q = q.where(feedback.c.ts >= since)
    with engine.connect() as conn:
        return {str(rid): float(v) for rid, v in conn.execute(q)}


def label_of(engine: sa.Engine, model: str, request_id: str) -> tuple[int, float] | None:
    """(class index, when it was received) of the label for one request id, or None."""
    with engine.connect() as conn:
        row = conn.execute(sa.select(feedback.c.label, feedback.c.ts).where(
            feedback.c.model == model, feedback.c.request_id == request_id)).first()
    return None if row is None else (int(row.label), float(row.ts))


@dataclass
class FeedbackResult:
    items: list[dict[str, Any]]

    @property
    def counts(self) -> dict[str, int]:
        out = {"accepted": 0, "unknown": 0, "late": 0, "invalid": 0, "forbidden": 0}
        for item in self.items:
            out[item["status"]] += 1
        return out


def record_feedback(engine: sa.Engine, model: str, classes: list[str], items: list[tuple[Any, Any]],
                    *, horizon_s: float, now: float | None = None, client: str | None = None,
                    identity: str | None = None, regression: bool = False) -> FeedbackResult:
    """Store true labels for earlier request ids of `model`. Each item is reported: accepted,
    unknown (no logged prediction with that id), late (the prediction is older than the
    horizon), or invalid (not one of the model's classes). Two labels for one id in one call:
    the last wins. A label that replaces a different earlier one is recorded in
    `feedback_changes` with `client` (the address it came from) and `identity` (how it was
    authenticated), never silently. The join with the predictions happens here, in the
    database, so a label may reach any worker. A `regression`'s label is its true value: a
    finite number (stored as `value`, its class index 0)."""
    now = time.time() if now is None else now
    index = {c: i for i, c in enumerate(classes)}
    results: list[dict[str, Any]] = []
    labels: dict[str, int] = {}
    values: dict[str, float] = {}
    for rid, label in items:
        key = str(label) if isinstance(label, (str, int)) and not isinstance(label, bool) else None
        number = isinstance(label, int | float) and not isinstance(label, bool) and math.isfinite(label)
        if isinstance(rid, str) and rid.startswith(SHADOW_PREFIX):  # labelled through the primary's id
            results.append({"id": rid, "status": "unknown", "error": f"{rid!r} is a shadow's copy of a request: "
                            f"label the request itself ({primary_id(rid)!r})"})
        elif regression:
            if number:
                labels[rid], values[rid] = 0, float(label)
                results.append({"id": rid, "status": "accepted"})
            else:
                results.append({"id": rid, "status": "invalid",
                                "error": f"label {label!r}: a regression's label is its true value, a finite number"})
        elif key is None or key not in index:
            results.append({"id": rid, "status": "invalid",
                            "error": f"label {label!r} is not one of the model's classes {classes}"})
        else:
            labels[rid] = index[key]
            results.append({"id": rid, "status": "accepted"})
    if labels:
        seen = find(engine, model, list(labels), since=now - horizon_s - 86400)
        rows: dict[str, dict[str, Any]] = {}  # by id: the last label for an id wins
        for item in results:
            rid = item["id"]
            if item["status"] != "accepted":
                continue
            if rid not in seen:
                item["status"] = "unknown"
                item["error"] = f"no logged prediction of {model!r} has id {rid!r}"
            elif now - seen[rid][0] > horizon_s:
                item["status"] = "late"
                item["error"] = f"the prediction is older than the feedback horizon ({horizon_s / 3600:g} h)"
            else:
                rows[rid] = {"model": model, "request_id": rid, "label": labels[rid], "ts": now,
                             "value": values.get(rid)}
        if rows:
            ids = list(rows)
            with engine.begin() as conn:
                before = {r.request_id: (int(r.label), r.value) for r in conn.execute(
                    sa.select(feedback.c.request_id, feedback.c.label, feedback.c.value).where(
                        feedback.c.model == model, feedback.c.request_id.in_(ids)))}
                changes = [{"model": model, "request_id": rid, "old_label": before[rid][0],
                            "new_label": row["label"], "old_value": before[rid][1], "new_value": row["value"],
                            "ts": now, "client": client, "identity": identity}
                           for rid, row in rows.items()
                           if rid in before and before[rid] != (row["label"], row["value"])]
                conn.execute(feedback.delete().where(feedback.c.model == model, feedback.c.request_id.in_(ids)))
                conn.execute(feedback.insert(), list(rows.values()))
                if changes:
                    conn.execute(feedback_changes.insert(), changes)
                    log.info("%d label(s) of %s changed by %s (%s)", len(changes), model, client or "?",
                             identity or "anonymous")
    return FeedbackResult(results)


def changes(engine: sa.Engine, model: str, request_id: str | None = None) -> list[dict[str, Any]]:
    """Every recorded relabelling of `model` (of one request id), oldest first."""
    q = sa.select(feedback_changes).where(feedback_changes.c.model == model).order_by(feedback_changes.c.id)
    if request_id is not None:
        q = q.where(feedback_changes.c.request_id == request_id)
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(q)]


def _labelled_answers(engine: sa.Engine, model: str, *, shadows: bool, since: float | None = None
                      ) -> list[tuple[float, int, int, int]]:
    """(time, label, predicted, version) of every logged answer a label joins: the primary's
    (newest logged prediction of the id), and with `shadows` the shadow's answer to it too."""
    # a label arrives after its prediction: only labels received since the range began can join it
    labelled = labels(engine, model, since=since)
    if not labelled:
        return []
    wanted = list(labelled) + ([shadow_id(r) for r in labelled] if shadows and _ever_shadowed(engine, model) else [])
    return [(ts, labelled[primary_id(rid)], pred, v)
            for rid, (ts, pred, v) in _found(engine, model, wanted, since).items()]


def _ever_shadowed(engine: sa.Engine, model: str) -> bool:
    """Whether a traffic config of `model` ever named a shadow (without one, no shadow answer to
    look for: the scan of the log could never stop early)."""
    from shipyard.store.schema import model_events

    with engine.connect() as conn:
        return conn.execute(sa.select(model_events.c.id).where(
            model_events.c.name == model, model_events.c.kind == "traffic",
            sa.cast(model_events.c.details, sa.Text).like('%"shadow": "%')).limit(1)).first() is not None


class _Answers:
    """The logged answers already joined to a label, per database and model: a logged answer never
    changes, so a page that redraws a day of windows looks up only the labels that are new since
    it last did (`find` scans the log's chunks). An id not found is looked for again only in the
    chunks written since (or in all of them, for an older range)."""

    # every model together (the serving supervisor's evaluator keeps it too): about 200 bytes an
    # id, so at most ~60 MB; past it the cache starts over (slower, never wrong)
    MAX_IDS = 300_000

    def __init__(self) -> None:
        # one join at a time: the evaluator's thread and a page's share it in a serving process
        self.lock = threading.Lock()
        self.found: dict[tuple[str, str], dict[str, tuple[float, int, int]]] = {}
        # rid → (the newest chunk id when it was looked for, the range's start then)
        self.missing: dict[tuple[str, str], dict[str, tuple[int, float]]] = {}


_ANSWERS = _Answers()


def _found(engine: sa.Engine, model: str, wanted: list[str], since: float | None) -> dict[str, tuple[float, int, int]]:
    with _ANSWERS.lock:
        return _found_locked(engine, model, wanted, since)


def _found_locked(engine: sa.Engine, model: str, wanted: list[str], since: float | None
                  ) -> dict[str, tuple[float, int, int]]:
    from shipyard.store.schema import prediction_chunks as pc

    key = (str(engine.url), model)
    if sum(map(len, _ANSWERS.found.values())) + sum(map(len, _ANSWERS.missing.values())) > _Answers.MAX_IDS:
        _ANSWERS.found.clear()
        _ANSWERS.missing.clear()
    found = _ANSWERS.found.setdefault(key, {})
    missing = _ANSWERS.missing.setdefault(key, {})
    lo = since if since is not None else -math.inf
    with engine.connect() as conn:
        newest = conn.execute(sa.select(sa.func.max(pc.c.id)).where(pc.c.model == model)).scalar() or 0
    fresh, again = [], []
    for r in wanted:
        if r in found:
            continue
        m = missing.get(r)
        if m is None or lo < m[1]:
            fresh.append(r)
        elif m[0] < newest:
            again.append(r)
    new = find(engine, model, fresh, since=since) if fresh else {}
    if again:
        new.update(find(engine, model, again, since=since, after_chunk=min(missing[r][0] for r in again)))
    found.update(new)
    for r in fresh + again:
        if r in new:
            missing.pop(r, None)
        else:
            missing[r] = (newest, lo)
    return {r: found[r] for r in wanted if r in found and found[r][0] >= lo}


def accuracy(engine: sa.Engine, model: str, *, version: int | None = None, last: int | None = None,
             classes: list[str] | None = None) -> dict[str, Any]:
    """Realised accuracy from labels joined with the log: overall and per true class, over the
    `last` labelled predictions (all when None). A label counts even when the prediction's
    input is no longer kept: the predicted class is in the log. Per version, a shadow version's
    answers to labelled requests count too; overall, each label once (the answer the client got)."""
    hits = _labelled_answers(engine, model, shadows=version is not None)
    rows = sorted(((ts, y, pred) for ts, y, pred, v in hits if version is None or v == version), reverse=True)
    if last is not None:
        rows = rows[:last]
    if not rows:
        return {"n_labels": 0, "realised": None, "per_class": {}}
    y = np.array([r[1] for r in rows])
    pred = np.array([r[2] for r in rows])
    per_class = {}
    for c in np.unique(y):
        name = classes[c] if classes and c < len(classes) else str(c)
        per_class[name] = {"accuracy": float((pred[y == c] == c).mean()), "n": int((y == c).sum())}
    return {"n_labels": len(rows), "realised": float((y == pred).mean()), "per_class": per_class}


def mae(engine: sa.Engine, model: str, *, version: int | None = None, last: int | None = None) -> dict[str, Any]:
    """A regression's realised MAE and RMSE from its labels (true values) joined with the logged
    values, over the `last` labelled predictions; per version as `accuracy` counts them."""
    truth = values(engine, model)
    wanted = list(truth) + ([shadow_id(r) for r in truth] if version is not None else [])
    found = find(engine, model, wanted, values=True) if truth else {}
    rows = sorted(((ts, truth[primary_id(rid)], float(value)) for rid, (ts, value, v) in found.items()
                   if version is None or v == version), reverse=True)[:last]
    if not rows:
        return {"n_labels": 0, "realised_mae": None, "realised_rmse": None}
    err = np.array([r[1] - r[2] for r in rows])
    return {"n_labels": len(rows), "realised_mae": float(np.abs(err).mean()),
            "realised_rmse": float(np.sqrt((err ** 2).mean()))}


def window_accuracy(engine: sa.Engine, model: str, windows: Sequence[Mapping[str, Any]]
                    ) -> list[tuple[float | None, int]]:
    """(realised accuracy, labels) of each evaluated window (`version`, `ts_first`, `ts_last`),
    from the labels in the database now: a label that arrives after its window was evaluated
    counts (the window's stored results keep what was known then). One pass over the log since
    the oldest window, however many windows."""
    if not windows:
        return []
    since = min(float(w["ts_first"]) for w in windows)
    rows = [(ts, float(y == pred), v) for ts, y, pred, v in _labelled_answers(engine, model, shadows=True,
                                                                                since=since)]
    return _per_window(rows, windows)


def window_mae(engine: sa.Engine, model: str, windows: Sequence[Mapping[str, Any]]
               ) -> list[tuple[float | None, int]]:
    """(realised MAE, labels) of each evaluated window of a regression, as `window_accuracy`."""
    if not windows:
        return []
    since = min(float(w["ts_first"]) for w in windows)
    truth = values(engine, model)
    wanted = list(truth) + [shadow_id(r) for r in truth]
    found = find(engine, model, wanted, since=since, values=True) if truth else {}
    return _per_window([(ts, abs(truth[primary_id(rid)] - float(value)), v)
                        for rid, (ts, value, v) in found.items()], windows)


def _per_window(rows: list[tuple[float, float, int]], windows: Sequence[Mapping[str, Any]]
                ) -> list[tuple[float | None, int]]:
    """The mean score (a hit, an absolute error) of the labelled answers (time, score, version)
    inside each window, and how many there were: cumulative sums per version, two bisections
    per window."""
    out: list[tuple[float | None, int]] = [(None, 0)] * len(windows)
    by_version: dict[int, list[tuple[float, float]]] = {}
    for ts, score, v in rows:
        by_version.setdefault(v, []).append((ts, score))
    cums: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # version → label times, score sums before each
    for v, pts in by_version.items():
        pts.sort()
        cums[v] = (np.array([r[0] for r in pts], np.float64),
                   np.concatenate([[0.0], np.cumsum([r[1] for r in pts])]))
    for i, w in enumerate(windows):
        if (c := cums.get(int(w["version"]))) is None:
            continue
        times, sums = c
        lo = int(np.searchsorted(times, float(w["ts_first"]), "left"))
        hi = int(np.searchsorted(times, float(w["ts_last"]), "right"))
        out[i] = (float((sums[hi] - sums[lo]) / (hi - lo)) if hi > lo else None, hi - lo)
    return out
