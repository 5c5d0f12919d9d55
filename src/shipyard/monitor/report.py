"""What happened to a model in production over a time range, from the database every worker and
replica writes to: traffic and latency (serving statistics), drift and accuracy (evaluated
windows), versions (registry history), alerts. `collect` gathers it; `charts_html` draws it
(the dashboard refreshes that fragment); `render` makes a self-contained HTML report of it.

A window's realised accuracy is read when the report is made (`feedback.window_accuracy`): the
labels of that version's predictions in the window's time span, including those that arrived
after the window was evaluated. An accuracy estimate the evaluator says cannot be believed is
shown greyed, marked "(unreliable)" with its reason, and left out of the accuracy chart's
estimate line (a note under the chart counts what was left out): a number drawn like the others
would be read like the others. Alert rules are shown in their three states, `unknown` included
(an open alert whose rule cannot decide is not a firing one)."""

from __future__ import annotations

import time
from html import escape
from typing import TYPE_CHECKING, Any

from shipyard.monitor import feedback, stats
from shipyard.monitor import windows as windows_mod
from shipyard.monitor.drift import TESTS
from shipyard.monitor.report_charts import charts_html, events_rows

if TYPE_CHECKING:  # api imports this module to write the report
    from shipyard.monitor.api import Monitor


def collect(monitor: Monitor, name: str, *, since: float, step_s: float | None = None,
            maps: bool = True) -> dict[str, Any]:
    """Everything the report and dashboard show for `name` since `since` (unix seconds); `maps`:
    with the class maps (they read bundles: the UI loads them after its page)."""
    import sqlalchemy as sa

    from shipyard.store.schema import alerts, serving_stats

    now = time.time()
    engine = monitor.engine
    status = monitor.status(name)
    events: list[dict[str, Any]] = []
    aliases_at_start: dict[str, int] = {}
    weights_at_start: dict[str, int] = {}
    for ev in monitor.registry.history(name):
        at = ev.at.timestamp()
        if ev.kind not in ("alias", "traffic"):
            continue
        weights = (ev.details or {}).get("weights") if ev.kind == "traffic" else None
        if at < since:  # the state the range starts from
            if ev.kind == "traffic":
                weights_at_start = dict(weights or {})
            elif ev.alias:
                if ev.to_version is None:
                    aliases_at_start.pop(ev.alias, None)
                else:
                    aliases_at_start[ev.alias] = ev.to_version
            continue
        events.append({"t": at, "kind": ev.kind, "alias": ev.alias, "from": ev.from_version, "to": ev.to_version,
                       "reason": ev.reason, "actor": ev.actor, "weights": weights})
    with engine.connect() as conn:
        alert_rows = [dict(r) for r in conn.execute(
            sa.select(alerts).where(alerts.c.model == name, sa.or_(alerts.c.resolved_at.is_(None),
                                                                   alerts.c.resolved_at >= since))
            .order_by(alerts.c.opened_at)).mappings()]
        first = conn.execute(sa.select(sa.func.min(serving_stats.c.ts_start)).where(
            serving_stats.c.model == name, serving_stats.c.ts_end >= since)).scalar()
    wins = windows_mod.windows(engine, name, since=since)
    starts = [t for t in (first, wins[0]["ts_first"] if wins else None) if t is not None]
    begin = max(since, min(starts)) if starts else since
    # about 120 points across what was measured (a day's range with ten minutes of traffic still gets detail)
    step = step_s or max(5.0, round((now - begin) / 120 / 5) * 5)
    regression = _regression(status)
    realised = feedback.window_mae(engine, name, wins) if regression else feedback.window_accuracy(engine, name, wins)
    for w, (score, n) in zip(wins, realised, strict=True):
        # the labels known now, late ones included (the stored figure is what was known at evaluation)
        w["results"] = {**w["results"], "realised_mae" if regression else "realised_accuracy": score, "n_labels": n}
    return {"model": name, "since": since, "until": now, "step_s": step, "status": status,
            "serving": stats.series(engine, name, since=since, step_s=step),
            "totals": stats.summary(engine, name, since=since).to_dict(),
            "windows": wins, "events": events, "alerts": alert_rows,
            "maps": class_maps(monitor, name, status) if maps else [],
            "aliases_at_start": aliases_at_start, "weights_at_start": weights_at_start}


def _maps_html(docs: list[dict[str, Any]]) -> str:
    from shipyard.attribution.html import maps_html

    return maps_html(docs)


def class_maps(monitor: Monitor, name: str, status: dict[str, Any]) -> list[dict[str, Any]]:
    """Each evaluated version's class maps (bundle time and recent traffic; cached a minute): a
    version whose maps cannot be made says why instead."""
    from shipyard.attribution import maps

    out = []
    for v in sorted(status.get("versions", {}), key=int):
        try:
            out.append(maps.for_version(monitor.registry, name, int(v)))
        except Exception as e:  # noqa: BLE001 - a report shows what it can: the reason, not a traceback
            out.append({"version": int(v), "error": f"no class maps: {type(e).__name__}: {e}"})
    return out


def _regression(status: dict[str, Any]) -> bool:
    """A regression's report shows MAE (lower is better) where a classifier's shows accuracy."""
    return any(s.get("task") == "regression" for s in status.get("versions", {}).values())


def _num(x: float | None) -> str:
    return "–" if x is None else f"{x:.4g}"


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.1%}"


def _ts(t: float | None) -> str:
    return "–" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


#: the report's own marks, beside the charts' style (the dashboard's fragment carries them too)
STYLE = """
.unreliable{color:#767676} .unreliable .why{display:block;font-size:11px;max-width:460px;white-space:normal}
.unknown{color:#7a5c00;font-weight:600} .why-blank{color:#595959;font-size:11px}
.unreliable-note{max-width:540px;margin:4px} table.rules{margin-top:8px}
table.maps td{padding:1px} table.maps img{display:block;image-rendering:pixelated}
"""

#: an alert's or rule's state → its class: firing is red, unknown amber (no decision), ok/resolved green
STATE_CLASS = {"firing": "alarm", "unknown": "unknown", "ok": "ok", "resolved": "ok"}


def _believed(res: dict[str, Any]) -> bool:
    """Whether an estimate's verdict lets it be read as a number (windows evaluated before the
    verdict existed carry none: nothing is claimed for them either way)."""
    return res.get("estimated_reliable") is not False


def _reason(res: dict[str, Any]) -> str:
    return str(res.get("estimated_reason") or "the evaluator says it cannot be believed")


def _estimate_cell(value: float | None, res: dict[str, Any]) -> str:
    """An estimated accuracy as a table cell: greyed, marked and explained when not believed."""
    if value is None or _believed(res):
        return f'<td class="estimate">{_pct(value)}</td>'
    why = escape(_reason(res))
    return (f'<td class="estimate unreliable" title="{why}">{_pct(value)} (unreliable)'
            f'<span class="why">{why}</span></td>')


def _state(state: str) -> str:
    return f'<td class="{STATE_CLASS.get(state, "")}">{escape(state)}</td>'


def _sequential(seq: dict[str, Any] | None) -> str:
    if not seq or seq.get("allowance") is None:
        return "<td>–</td>"
    cls, op = ("alarm", ">") if seq.get("alerting") else ("ok", "≤")
    return f'<td class="{cls}">{seq["level"]:.1f} {op} {seq["allowance"]:.1f}</td>'


def state_html(data: dict[str, Any], *, with_alerts: bool = True) -> str:
    """The current state (status), each version's rules and (unless the page lists its own) the
    alerts, as tables."""
    rows, rules = [], []
    regression = _regression(data["status"])
    for ver, s in data["status"]["versions"].items():
        d = s["drift"]
        # a blank cell says why: no window evaluated yet, or this test does not apply to the model
        missing = ("no window evaluated yet" if not s["windows"] else "not run for this model")
        cells = "".join(
            f'<td class="{"alarm" if d[t]["alarm"] else "ok"}">{"ALARM " if d[t]["alarm"] else ""}'
            f'p={d[t]["p_value"]:.1e}</td>' if t in d else f'<td class="why-blank">– {missing}</td>' for t in TESTS)
        a = s["accuracy"]
        rows.append(f'<tr data-version="{escape(ver)}"><td>v{escape(ver)}</td>'
                    f"<td>{escape(', '.join(s['aliases']) or '–')}</td><td>{s['windows']}</td>{cells}"
                    f"{_sequential(s.get('sequential'))}"
                    + (f"<td>–</td><td>{_num(a.get('realised_mae'))} ({a['n_labels']})</td>"
                       f"<td>{_num(a.get('validation_mae'))}</td></tr>" if regression else
                       f"{_estimate_cell(a['estimated'], a)}<td>{_pct(a['realised'])} ({a['n_labels']})</td>"
                       f"<td>{_pct(a.get('validation'))}</td></tr>"))
        rules += [f'<tr data-version="{escape(ver)}" data-rule="{escape(rule)}"><td>v{escape(ver)}</td>'
                  f"<td>{escape(rule)}</td>{_state(r.get('state', ''))}<td>{escape(r.get('message', ''))}</td></tr>"
                  for rule, r in sorted((s.get("rules") or {}).items())]
    table = ("<table><tr><th>version</th><th>aliases</th><th>windows</th>"
             + "".join(f"<th>{escape(t)}</th>" for t in TESTS)
             + "<th>drift level (CUSUM)</th><th>estimated acc</th>"
             + ("<th>realised MAE (labels)</th><th>validation MAE</th>" if regression else
                "<th>realised acc (labels)</th><th>validation acc</th>")
             + "</tr>" + "".join(rows) + "</table>") if rows \
        else "<p class=sub>no evaluated windows yet</p>"
    if rules:
        table += ("<table class=rules><tr><th>version</th><th>rule</th><th>state</th><th>why</th></tr>"
                  + "".join(rules) + "</table>")
    alerts = "".join(
        f'<tr data-alert="{a["id"]}">{_state(a["status"])}<td>{escape(a["rule"])}</td>'
        f"<td>{'–' if a['version'] is None else 'v' + str(a['version'])}</td>"
        f"<td>{escape(a['severity'])}</td><td>{_ts(a['opened_at'])}</td>"
        f"<td>{_ts(a['resolved_at'])}</td><td>{escape(a['message'])}</td></tr>" for a in data["alerts"])
    alerts_table = ("<table><tr><th>status</th><th>rule</th><th>version</th><th>severity</th><th>opened</th>"
                    "<th>resolved</th><th>message</th></tr>" + alerts + "</table>") if alerts \
        else "<p class=sub>no alerts</p>"
    if any(a["status"] == "unknown" for a in data["alerts"]):
        alerts_table += ("<p class=sub>unknown: the rule cannot decide now (its accuracy estimate cannot be "
                         "believed); the alert stays open, and autopilot does not act on it</p>")
    t = data["totals"]
    totals = (f"<p class=sub>{t['requests']:,} requests, {t['errors']:,} server errors, {t['rejected']:,} "
              f"rejected inputs; p50 {t['p50_ms'] or 0:.2f} ms, p99 {t['p99_ms'] or 0:.2f} ms (server side)</p>")
    workers = data["status"].get("serving", {}).get("workers", {})
    ev = data["status"].get("evaluator")
    totals += (f"<p class=sub>the whole deployment: {len(workers)} worker(s) answered in the last 5 minutes"
               f"{' (' + escape(', '.join(f'{w}: {n:,}' for w, n in workers.items())) + ')' if workers else ''}; "
               f"drift evaluated by {escape(ev['holder']) if ev else 'nobody (no server or `monitor run`)'}</p>")
    return f"<h2>Now</h2>{table}{totals}" + (f"<h2>Alerts</h2>{alerts_table}" if with_alerts else "")


#: the report's table lists this many of the newest windows (the charts show them all)
WINDOW_ROWS = 50


def windows_html(data: dict[str, Any], limit: int = WINDOW_ROWS) -> str:
    """The newest evaluated windows, one row each: span, size, drift alarm (and which tests),
    estimated accuracy (with its verdict) and the realised accuracy of the labels known now."""
    wins = data["windows"][-limit:][::-1]
    if not wins:
        return "<p class=sub>no evaluated windows in this range</p>"

    def alarmed(w: dict[str, Any]) -> str:
        tests = [t for t in TESTS if (w["results"].get("drift", {}).get(t) or {}).get("alarm")]
        return f"ALARM ({escape(', '.join(tests))})" if tests else "ALARM" if w["alarm"] else "ok"

    regression = _regression(data["status"])

    def realised(r: dict[str, Any]) -> str:
        return (f"<td>–</td><td>{_num(r.get('realised_mae'))} ({r.get('n_labels', 0)})</td>" if regression else
                f"{_estimate_cell(r.get('estimated_accuracy'), r)}"
                f"<td>{_pct(r.get('realised_accuracy'))} ({r.get('n_labels', 0)})</td>")

    rows = "".join(
        f'<tr data-window="{w.get("id", "")}"><td>v{w["version"]}</td><td>{_ts(w["ts_first"])}</td>'
        f"<td>{_ts(w['ts_last'])}</td><td>{w['n']}</td>"
        f"<td class={'alarm' if w['alarm'] else 'ok'}>{alarmed(w)}</td>{realised(w['results'])}</tr>"
        for w in wins)
    more = (f"<p class=sub>the newest {limit} of {len(data['windows'])} windows</p>"
            if len(data["windows"]) > limit else "")
    return ("<table><tr><th>version</th><th>from</th><th>to</th><th>predictions</th><th>drift</th>"
            "<th>estimated acc</th><th>" + ("realised MAE" if regression else "realised acc")
            + " (labels)</th></tr>" + rows + "</table>" + more)


def render(data: dict[str, Any]) -> str:
    """A self-contained HTML report: the charts' library, style and data inline, nothing fetched
    (it opens from a file, offline)."""
    from shipyard import charts

    events = events_rows(data)
    events_table = ("<table><tr><th>when</th><th>what</th><th>alias</th><th>from</th><th>to</th><th>who</th>"
                    "<th>reason</th></tr>" + events + "</table>") if events \
        else "<p class=sub>no alias or traffic moves in this range</p>"
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>shipyard: {escape(data['model'])}"
            f"</title><style>{charts.PAGE_STYLE}{STYLE}</style>{charts.inline_assets()}</head><body>"
            f"<h1>{escape(data['model'])}: production report</h1>"
            f"<p class=sub>{_ts(data['since'])} – {_ts(data['until'])}; generated by shipyard monitor report</p>"
            f"{state_html(data)}<h2>Over time</h2>{charts_html(data)}<h2>Windows</h2>{windows_html(data)}"
            f"<h2>What each class looks at</h2>{_maps_html(data.get('maps', []))}"
            f"<h2>Versions and traffic</h2>{events_table}"
            "</body></html>\n")
