"""/deployments/NAME: a model in production — its traffic split, the servers answering, drift per
test over time, estimated and realised accuracy, alerts (open and resolved, acknowledge), the
rollouts with every gate's numbers — drawn by the same charts as the dashboard and the report."""

from __future__ import annotations

import time

import sqlalchemy as sa
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from shipyard.monitor import report, stats
from shipyard.monitor.api import Monitor
from shipyard.store.schema import alerts
from shipyard.ui.web import SECURITY_HEADERS, Ctx, query_int

RANGES = {"15m": 900, "1h": 3600, "6h": 6 * 3600, "24h": 86400, "7d": 7 * 86400}


def deployment_page(request: Request) -> Response:
    ctx = Ctx(request)
    reg = ctx.registry
    name = request.path_params["name"]
    model = reg.model(name)  # 404 for an unknown model, before any work
    rng = request.query_params.get("range", "1h")
    if rng not in RANGES:
        from shipyard.ui.auth import Refused

        raise Refused(400, f"range must be one of {', '.join(RANGES)}, got {rng!r}")
    since = time.time() - RANGES[rng]
    data = report.collect(Monitor(reg), name, since=since, maps=False)
    eng = reg.engine
    with eng.connect() as conn:
        all_alerts = [dict(r) for r in conn.execute(
            sa.select(alerts).where(alerts.c.model == name).order_by(alerts.c.id.desc()).limit(
                query_int(request, "alerts", 50, 1, 1000))).mappings()]
    from shipyard.update import rollout as ro

    ro_state = ro.status(eng, name)
    return ctx.page("deployment.html", title=f"Deployment {name}", name=name, data=data, rng=rng, ranges=RANGES,
                    charts_html=report.charts_html(data), state_html=report.state_html(data, with_alerts=False),
                    deployment=reg.traffic(name), aliases=model.aliases,
                    workers=stats.by_worker(eng, name, since=time.time() - 300),
                    alerts=all_alerts, rollout=ro_state, evaluator=data["status"].get("evaluator"))


def maps_fragment(request: Request) -> Response:
    """The class maps (bundle time against recent traffic): loaded after the page, they read bundles."""
    ctx = Ctx(request)
    name = request.path_params["name"]
    mon = Monitor(ctx.registry)
    from shipyard.attribution.html import maps_html

    html = maps_html(report.class_maps(mon, name, mon.status(name)))
    return HTMLResponse(html, headers=SECURITY_HEADERS)
