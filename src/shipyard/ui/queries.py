"""What the UI's pages read, as a few SQL statements each: a page of 10,000 runs is one sorted,
filtered, limited query plus a count, never a scan through Python objects."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from shipyard.store.schema import model_versions, run_artifacts, run_metrics, runs
from shipyard.training import tracking

PER_PAGE = 50

#: sortable columns of /runs: key → (label, SQL expression)
SORTS: dict[str, tuple[str, Any]] = {
    "created": ("started", runs.c.created_at),
    "name": ("name", runs.c.name),
    "status": ("status", runs.c.status),
    "data": ("data", runs.c.data_source),
    "model": ("model", runs.c.recipe["model"].as_string()),
    "val": ("best val acc", runs.c.best_val_accuracy),
    "test": ("test acc", runs.c.test_accuracy),
    "epochs": ("epochs", runs.c.epochs_run),
}
STATUSES = tracking.STATUSES


@dataclass
class RunFilter:
    q: str = ""  # id prefix, name, data source or tag text; KEY=VALUE: that tag
    status: str = ""
    model: str = ""
    sort: str = "created"
    desc: bool = True
    page: int = 1

    def where(self) -> list[Any]:
        out: list[Any] = []
        key, eq, value = self.q.partition("=")
        if eq and key.strip() and " " not in key.strip():
            out.append(runs.c.tags[key.strip()].as_string() == value.strip())
        elif self.q:
            like = f"%{_escape_like(self.q)}%"
            out.append(sa.or_(runs.c.id.like(f"{_escape_like(self.q)}%", escape="\\"),
                              runs.c.name.like(like, escape="\\"), runs.c.data_source.like(like, escape="\\"),
                              sa.cast(runs.c.tags, sa.Text).like(like, escape="\\")))
        if self.status:
            out.append(runs.c.status == self.status)
        if self.model:
            out.append(runs.c.recipe["model"].as_string() == self.model)
        return out


def _escape_like(s: str) -> str:
    return s.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def runs_page(engine: sa.Engine, f: RunFilter) -> tuple[list[dict[str, Any]], int]:
    """One page of runs (newest first unless sorted otherwise) and how many match."""
    col = SORTS.get(f.sort, SORTS["created"])[1]
    order = [col.desc().nulls_last() if f.desc else col.asc().nulls_last(), runs.c.id]
    cols = [runs.c.id, runs.c.name, runs.c.tags, runs.c.status, runs.c.data_source, runs.c.created_at,
            runs.c.started_at, runs.c.ended_at, runs.c.epochs_run, runs.c.best_val_accuracy, runs.c.test_accuracy,
            runs.c.recipe["model"].as_string().label("model")]
    with engine.connect() as conn:
        total = conn.execute(sa.select(sa.func.count()).select_from(runs).where(*f.where())).scalar() or 0
        rows = [dict(r) for r in conn.execute(sa.select(*cols).where(*f.where()).order_by(*order)
                                              .limit(PER_PAGE).offset((max(f.page, 1) - 1) * PER_PAGE)).mappings()]
    for r in rows:
        r["duration_s"] = _duration(r["started_at"], r["ended_at"])
    return rows, int(total)


def _duration(start: datetime | None, end: datetime | None) -> float | None:
    return (end - start).total_seconds() if start and end else None


def model_names_of_runs(engine: sa.Engine) -> list[str]:
    """The models runs were trained with (the filter's choices)."""
    expr = runs.c.recipe["model"].as_string()
    with engine.connect() as conn:
        return [m for m in conn.execute(sa.select(expr).distinct().order_by(expr)).scalars() if m]


def curves(engine: sa.Engine, run_ids: list[str]) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """Per run, each metric's (epoch, value) points."""
    out: dict[str, dict[str, list[tuple[float, float]]]] = {r: {} for r in run_ids}
    with engine.connect() as conn:
        for r in conn.execute(sa.select(run_metrics.c.run_id, run_metrics.c.key, run_metrics.c.step,
                                        run_metrics.c.value).where(run_metrics.c.run_id.in_(run_ids))
                              .order_by(run_metrics.c.step)):
            out[r.run_id].setdefault(r.key, []).append((float(r.step), float(r.value)))
    return out


def artifacts(engine: sa.Engine, run_id: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(run_artifacts).where(run_artifacts.c.run_id == run_id)
                                              .order_by(run_artifacts.c.name)).mappings()]


def versions_of_run(engine: sa.Engine, run_id: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(
            sa.select(model_versions.c.name, model_versions.c.version, model_versions.c.created_at)
            .where(model_versions.c.run_id == run_id).order_by(model_versions.c.name, model_versions.c.version))
            .mappings()]


def children(engine: sa.Engine, run_id: str) -> list[dict[str, Any]]:
    """The runs retrained from `run_id` (its first 50)."""
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(runs.c.id, runs.c.name, runs.c.status)
                                              .where(runs.c.parent_run_id == run_id).limit(50)).mappings()]


def run_names(engine: sa.Engine, ids: list[str]) -> dict[str, str | None]:
    """Run id → name, for showing a run's name beside its id wherever it is linked."""
    ids = [i for i in ids if i]
    if not ids:
        return {}
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(runs.c.id, runs.c.name).where(runs.c.id.in_(ids))).all())


def count_runs(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {s: int(n) for s, n in conn.execute(sa.select(runs.c.status, sa.func.count()).group_by(runs.c.status))}
