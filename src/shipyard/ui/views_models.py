"""/models, /models/NAME, /models/NAME/compare, and the overview at /: every model, its versions
(metrics, size, variant, the run each came from), its aliases, the history of every alias and
traffic move with who and why, and two versions side by side."""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa
from starlette.requests import Request
from starlette.responses import Response

from shipyard.store.schema import alerts, model_versions, rollouts, serving_stats
from shipyard.ui import queries
from shipyard.ui.auth import Refused
from shipyard.ui.web import Ctx, query_int


def _summary(ctx: Ctx) -> list[dict[str, Any]]:
    """One row per model: versions, aliases, traffic, open alerts, requests in the last hour."""
    reg, eng = ctx.registry, ctx.registry.engine
    since = time.time() - 3600
    with eng.connect() as conn:
        counts: dict[str, int] = dict(conn.execute(sa.select(model_versions.c.name, sa.func.count())
                                   .group_by(model_versions.c.name)).all())
        open_alerts: dict[str, int] = dict(conn.execute(sa.select(alerts.c.model, sa.func.count()).where(
            alerts.c.status.in_(("firing", "unknown"))).group_by(alerts.c.model)).all())
        traffic = dict(conn.execute(sa.select(serving_stats.c.model, sa.func.sum(serving_stats.c.requests)).where(
            serving_stats.c.ts_end >= since).group_by(serving_stats.c.model)).all())
        running = dict(conn.execute(sa.select(rollouts.c.name, rollouts.c.candidate)
                                    .where(rollouts.c.status == "running")).all())
    out = []
    for m in reg.list():
        out.append({"name": m.name, "versions": counts.get(m.name, 0), "aliases": m.aliases,
                    "weights": reg.traffic(m.name).weights, "open_alerts": open_alerts.get(m.name, 0),
                    "requests_1h": int(traffic.get(m.name) or 0), "rollout": running.get(m.name),
                    "created_at": m.created_at})
    return out


def overview(request: Request) -> Response:
    ctx = Ctx(request)
    eng = ctx.registry.engine
    recent, total = queries.runs_page(eng, queries.RunFilter(sort="created", desc=True))
    with eng.connect() as conn:
        workers = conn.execute(sa.select(serving_stats.c.worker, serving_stats.c.model,
                                         sa.func.sum(serving_stats.c.requests), sa.func.max(serving_stats.c.ts_end))
                               .where(serving_stats.c.ts_end >= time.time() - 300)
                               .group_by(serving_stats.c.worker, serving_stats.c.model)).all()
    return ctx.page("overview.html", title="Overview", models=_summary(ctx), runs=recent[:10], total_runs=total,
                    run_counts=queries.count_runs(eng),
                    workers=[{"worker": w, "model": m, "requests": int(n), "last": t} for w, m, n, t in workers])


def models_list(request: Request) -> Response:
    ctx = Ctx(request)
    return ctx.page("models.html", title="Models", models=_summary(ctx))


def model_page(request: Request) -> Response:
    ctx = Ctx(request)
    reg = ctx.registry
    name = request.path_params["name"]
    model = reg.model(name)
    history = reg.history(name)
    names = queries.run_names(reg.engine, [v.run_id for v in model.versions if v.run_id])
    versions = [{"v": v, "metrics": v.metrics, "run_name": names.get(v.run_id or "")}
                for v in reversed(model.versions)]
    from shipyard.update import rollout as ro

    return ctx.page("model.html", title=f"Model {name}", model=model, versions=versions,
                    history=list(reversed(history)), deployment=reg.traffic(name),
                    rollout=ro.status(reg.engine, name), version_numbers=[v.version for v in reversed(model.versions)])


def compare_versions(request: Request) -> Response:
    ctx = Ctx(request)
    name = request.path_params["name"]
    a = query_int(request, "a", 0, 1, 10**9)
    b = query_int(request, "b", 0, 1, 10**9)
    if a == b:
        raise Refused(400, "pick two different versions to compare")
    cmp = ctx.registry.compare(f"{name}@{a}", f"{name}@{b}").to_dict()
    return ctx.page("compare_versions.html", title=f"{name}: v{a} against v{b}", name=name, cmp=cmp, a=a, b=b)
