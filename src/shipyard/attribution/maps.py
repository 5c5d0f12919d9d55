"""Global explanations: the mean absolute attribution per class — which pixels (or columns) a
version looks at for each class it predicts. Computed at bundle time from the validation split
(kept in `reference.npz` as `attribution_maps`) and again from recent traffic (the inputs the
prediction log keeps), so an operator sees when the model starts looking elsewhere after a shift.

Integrated Gradients (32 steps, black / zero baseline) for bundles with a gradient graph, else
occlusion; grouped by the class each input was predicted as."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from shipyard.attribution import methods

if TYPE_CHECKING:
    import sqlalchemy as sa

from shipyard.attribution.explainer import Explainer

STEPS = 32
#: inputs a map is computed from at most (validation rows at bundle time; recent logged inputs)
ROWS = 500


def class_maps(attributions: np.ndarray, predicted: np.ndarray, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean |attribution| per predicted class [C, F], inputs per class [C])."""
    a = np.abs(attributions.reshape(len(attributions), -1)).astype(np.float64)
    counts = np.bincount(predicted, minlength=classes)
    sums = np.zeros((classes, a.shape[1]))
    np.add.at(sums, predicted, a)
    return (sums / np.maximum(counts, 1)[:, None]).astype(np.float32), counts


def at_build(ig: methods.IG, outputs: np.ndarray, x: np.ndarray, baseline: np.ndarray, classes: int, *,
             regression: bool = False) -> dict[str, np.ndarray]:
    """The bundle's maps from validation features `x` and the model's `outputs` on them (what
    `reference.npz` keeps); a regression's one map is its first target's."""
    x = np.ascontiguousarray(x[:ROWS], np.float32)
    predicted = np.zeros(len(x), np.intp) if regression else outputs[:ROWS].argmax(1)
    onehot = np.eye(classes, dtype=np.float32)[predicted]
    base = np.broadcast_to(baseline, x.shape).astype(np.float32)
    attr, _, _ = ig(x, base, onehot, STEPS, "riemann_trapezoid")
    maps, counts = class_maps(attr, predicted, classes)
    return {"attribution_maps": maps, "attribution_counts": counts.astype(np.int64)}


def recent(engine: sa.Engine, name: str, version: int, explainer: Explainer, *, rows: int = ROWS,
           since: float | None = None) -> dict[str, Any] | None:
    """Maps from the newest logged inputs of `name@version` (None when the log keeps none)."""
    from shipyard.attribution.explainer import Params
    from shipyard.monitor import predlog

    logged = predlog.read(engine, name, version=version, since=since)
    if not len(logged):
        return None
    ids = [int(i) for i in logged.ids[-4 * rows:]]
    inputs = predlog.inputs_for(engine, name, ids)
    keep = [i for i in ids if i in inputs][-rows:]
    if not keep:
        return None
    x = np.stack([inputs[i].reshape(-1) for i in keep]).astype(np.float32)
    regression = explainer.regression
    params = Params(steps=STEPS, method=None if explainer.gradient is not None else "occlusion")
    spec = explainer.spec
    image = spec is not None and not spec.is_table and len(spec.raw_shape) >= 2
    ex = explainer.explain(x, params, kind="raw" if image else "features",  # per feature, as at build
                           shape=tuple(spec.raw_shape) if image and spec is not None else None)
    attr = ex.attributions["attributions"]
    predicted = np.zeros(len(x), np.intp) if regression else np.asarray(ex.target, np.intp)
    maps, counts = class_maps(attr, predicted, len(explainer.classes))
    return {"maps": maps, "counts": counts, "rows": len(x), "method": ex.method, "at": time.time()}


def shift(before: np.ndarray, after: np.ndarray, counts: np.ndarray) -> list[float | None]:
    """Per class, 1 − the cosine similarity of two maps (0: the same pixels matter; None: no
    recent input of that class)."""
    out: list[float | None] = []
    for c in range(len(before)):
        a, b = before[c].astype(np.float64), after[c].astype(np.float64)
        na, nb = np.linalg.norm(a), np.linalg.norm(b)
        out.append(None if counts[c] == 0 or na == 0 or nb == 0 else float(1 - a @ b / (na * nb)))
    return out


_CACHE: dict[tuple[str, str, int], tuple[float, dict[str, Any]]] = {}
_EXPLAINERS: dict[str, Explainer] = {}
#: how long a version's maps are reused (a dashboard refreshes every few seconds)
TTL_S = 60.0
#: versions whose maps and explainer a long-lived process keeps (the oldest go first)
KEPT = 16


def _keep(cache: dict[Any, Any], key: Any, value: Any) -> None:
    cache[key] = value
    while len(cache) > KEPT:
        cache.pop(next(iter(cache)))


def for_version(registry: Any, name: str, version: int, *, rows: int = ROWS) -> dict[str, Any]:
    """A version's maps at bundle time and from recent traffic, with the shift per class: what the
    report, the dashboard and `shipyard explain NAME --maps` show. Cached for `TTL_S`."""
    key = (str(registry.engine.url), name, version)
    hit = _CACHE.get(key)
    if hit is not None and time.time() - hit[0] < TTL_S:
        return hit[1]
    mv = registry.get(f"{name}@{version}")
    bundle = registry.load(mv)
    ref = bundle.reference or {}
    spec = bundle.preprocess
    ex = _EXPLAINERS.get(str(bundle.path))
    if ex is None:
        ex = Explainer(bundle)
        _keep(_EXPLAINERS, str(bundle.path), ex)
    before = ref.get("attribution_maps")
    now = recent(registry.engine, name, version, ex, rows=rows)
    columns = [(c.name, c.width) for c in spec.columns] if spec is not None and spec.columns is not None else None
    out: dict[str, Any] = {
        "model": name, "version": version, "classes": list(bundle.classes),
        "shape": list(spec.raw_shape) if spec is not None and not spec.is_table and len(spec.raw_shape) >= 2 else None,
        "columns": columns,
        "bundle": None if before is None else np.asarray(before, np.float32),
        "bundle_counts": None if before is None else np.asarray(ref["attribution_counts"]),
        "recent": None if now is None else now["maps"], "recent_counts": None if now is None else now["counts"],
        "recent_rows": 0 if now is None else now["rows"], "method": None if now is None else now["method"],
        "note": None if before is not None else "the bundle records no maps (made before explanations, or without "
                                                "a gradient graph)"}
    out["shift"] = maps_shift(out)
    _keep(_CACHE, key, (time.time(), out))
    return out


def maps_shift(doc: dict[str, Any]) -> list[float | None] | None:
    if doc["bundle"] is None or doc["recent"] is None:
        return None
    return shift(doc["bundle"], doc["recent"], doc["recent_counts"])


def to_json(doc: dict[str, Any]) -> dict[str, Any]:
    """The maps as plain lists (`--json`)."""
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in doc.items()}
