"""/runs, /runs/ID, /runs/compare: training runs as a sortable, filterable table, one run with its
recipe, curves, artifacts and the versions made from it, and 2–5 runs side by side."""

from __future__ import annotations

import json
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from shipyard import charts as ch
from shipyard.errors import NotFound, UsageError
from shipyard.training.tracking import RunStore, parse_tags
from shipyard.ui import queries
from shipyard.ui.auth import Refused
from shipyard.ui.web import Ctx, done, query_int

#: curves drawn together: (chart title, keys)
CURVES = (("Loss", ("train_loss", "val_loss")), ("Accuracy", ("train_accuracy", "val_accuracy")),
          ("MAE", ("train_mae", "val_mae")), ("Samples/s", ("samples_per_s",)), ("Learning rate", ("lr",)))


def runs_list(request: Request) -> Response:
    ctx = Ctx(request)
    q = request.query_params
    sort = q.get("sort", "created")
    if sort not in queries.SORTS:
        raise Refused(400, f"sort must be one of {', '.join(queries.SORTS)}, got {sort!r}")
    status = q.get("status", "")
    if status and status not in queries.STATUSES:
        raise Refused(400, f"status must be one of {', '.join(queries.STATUSES)}, got {status!r}")
    default_dir = "desc" if sort in ("created", "val", "test", "epochs") else "asc"
    f = queries.RunFilter(q=q.get("q", "").strip()[:200], status=status, model=q.get("model", "")[:200], sort=sort,
                          desc=q.get("dir", default_dir) == "desc",
                          page=query_int(request, "page", 1, 1, 1_000_000))
    rows, total = queries.runs_page(ctx.registry.engine, f)
    pages = max(1, -(-total // queries.PER_PAGE))

    def link(**over: Any) -> str:
        from urllib.parse import urlencode

        params = {"q": f.q, "status": f.status, "model": f.model, "sort": f.sort, "dir": "desc" if f.desc else "asc",
                  "page": f.page, **over}
        return "/runs?" + urlencode({k: v for k, v in params.items() if v not in ("", None)})

    columns = [(key, label, link(sort=key, dir="asc" if f.sort == key and f.desc else "desc", page=1))
               for key, (label, _) in queries.SORTS.items()]
    return ctx.page("runs.html", title="Runs", rows=rows, total=total, f=f, pages=pages, columns=columns,
                    statuses=queries.STATUSES, models=queries.model_names_of_runs(ctx.registry.engine),
                    prev=link(page=f.page - 1) if f.page > 1 else None,
                    next=link(page=f.page + 1) if f.page < pages else None)


def _store(ctx: Ctx) -> RunStore:
    return RunStore(settings=ctx.registry.settings)


def _curve_charts(data: dict[str, dict[str, list[tuple[float, float]]]], labels: dict[str, str]) -> list[str]:
    out = []
    for title, keys in CURVES:
        lines = [ch.series(f"{labels[rid]} {k}" if len(data) > 1 else k, pts, dash=k.startswith("train"))
                 for rid, metrics in data.items() for k in keys if (pts := metrics.get(k))]
        if not lines:
            continue
        unit, scale = "", "linear"
        if title == "Accuracy":
            lines = [{**s, "points": [[x, None if y is None else 100 * y] for x, y in s["points"]]} for s in lines]
            unit = "%"
        if title == "Loss":
            scale = ch.scale_for([y for s in lines for _, y in s["points"]], decades=1.5)
        out.append(ch.chart(f"curve-{title.lower().replace(' ', '-').replace('/', '')}", title, lines, x="number",
                            x_label="epoch", unit=unit, scale=scale, y_max=100 if unit == "%" else None,
                            min_span=10 if unit == "%" else None, width=520))
    return out


def run_page(request: Request) -> Response:
    ctx = Ctx(request)
    store = _store(ctx)
    run = store.get(request.path_params["run_id"])
    eng = ctx.registry.engine
    versions = queries.versions_of_run(eng, run.id)
    plots = _curve_charts(queries.curves(eng, [run.id]), {run.id: run.id[:12]})
    children = queries.children(eng, run.id)
    return ctx.page("run.html", title=f"Run {run.name or run.id[:12]}", run=run, plots=plots, versions=versions,
                    artifacts=queries.artifacts(eng, run.id), children=children,
                    recipe=json.dumps(run.recipe, indent=2, sort_keys=True),
                    tags_text="\n".join(f"{k}={v}" for k, v in sorted(run.tags.items())))


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v, sort_keys=True) if not isinstance(v, str) else v
    return out


def compare_runs(request: Request) -> Response:
    ctx = Ctx(request)
    ids = [i for i in request.query_params.getlist("ids") if i.strip()]
    if not 2 <= len(ids) <= 5:
        raise Refused(400, f"compare 2 to 5 runs (tick them in the runs table), got {len(ids)}")
    store = _store(ctx)
    found = [store.get(i) for i in ids]
    if len({r.id for r in found}) != len(found):
        raise Refused(400, "the same run is named twice")
    labels = {r.id: (r.name or r.id[:12]) for r in found}
    flat = [_flatten({"data": r.data_source, **r.recipe}) for r in found]
    keys = sorted(set().union(*flat))
    params = [{"key": k, "values": [f.get(k, "–") for f in flat], "differs": len({f.get(k) for f in flat}) > 1}
              for k in keys]
    summary: list[dict[str, Any]] = [{"key": "status", "values": [r.status for r in found]},
               {"key": "epochs", "values": [str(r.epochs_run) for r in found]},
               {"key": "best val accuracy", "values": [_p(r.best_val_accuracy) for r in found]},
               {"key": "test accuracy", "values": [_p(r.test_accuracy) for r in found]},
               {"key": "best val MAE", "values": [_n(r.best_val_mae) for r in found]}]
    for s in summary:
        s["differs"] = len(set(s["values"])) > 1
    plots = _curve_charts(queries.curves(ctx.registry.engine, [r.id for r in found]), labels)
    return ctx.page("compare_runs.html", title="Compare runs", runs=found, params=params, summary=summary,
                    plots=plots, labels=labels)


def _p(x: float | None) -> str:
    return "–" if x is None else f"{x:.2%}"


def _n(x: float | None) -> str:
    return "–" if x is None else f"{x:.4g}"


async def edit_run(request: Request) -> Response:
    """Rename a run or replace its tags (the form's textarea: one KEY=VALUE a line)."""
    ctx = Ctx(request)
    form = await ctx.form()
    name = form.get("name", "").strip()  # empty: no name
    lines = [ln.strip() for ln in form.get("tags", "").splitlines() if ln.strip()]

    def save() -> tuple[str, int]:
        store = _store(ctx)
        try:
            run_id = store.resolve(request.path_params["run_id"])
        except NotFound as e:
            raise Refused(404, str(e)) from None
        try:
            tags = parse_tags(lines, option="tags")
            store.set_name_tags(run_id, name=name, tags=tags, replace=True)
        except UsageError as e:
            raise Refused(400, str(e)) from None
        return run_id, len(tags)

    run_id, n = await run_in_threadpool(save)
    return done(f"/runs/{run_id}", f"saved: name {name or '(none)'}, {n} tag(s)")
