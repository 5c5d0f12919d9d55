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

import math
import time
from html import escape
from typing import TYPE_CHECKING, Any

from shipyard.monitor import charts, feedback, stats
from shipyard.monitor import windows as windows_mod
from shipyard.monitor.drift import TESTS

if TYPE_CHECKING:  # api imports this module to write the report
    from shipyard.monitor.api import Monitor


def collect(monitor: Monitor, name: str, *, since: float, step_s: float | None = None) -> dict[str, Any]:
    """Everything the report and dashboard show for `name` since `since` (unix seconds)."""
    now = time.time()
    step = step_s or max(5.0, round((now - since) / 120 / 5) * 5)  # about 120 points across the range
    engine = monitor.engine
    status = monitor.status(name)
    events = []
    for ev in monitor.registry.history(name):
        at = ev.at.timestamp()
        if at >= since and ev.alias:
            events.append({"t": at, "kind": ev.kind, "alias": ev.alias, "from": ev.from_version,
                           "to": ev.to_version, "reason": ev.reason})
    with engine.connect() as conn:
        import sqlalchemy as sa

        from shipyard.store.schema import alerts

        alert_rows = [dict(r) for r in conn.execute(
            sa.select(alerts).where(alerts.c.model == name, sa.or_(alerts.c.resolved_at.is_(None),
                                                                   alerts.c.resolved_at >= since))
            .order_by(alerts.c.opened_at)).mappings()]
    wins = windows_mod.windows(engine, name, since=since)
    regression = _regression(status)
    realised = feedback.window_mae(engine, name, wins) if regression else feedback.window_accuracy(engine, name, wins)
    for w, (score, n) in zip(wins, realised, strict=True):
        # the labels known now, late ones included (the stored figure is what was known at evaluation)
        w["results"] = {**w["results"], "realised_mae" if regression else "realised_accuracy": score, "n_labels": n}
    return {"model": name, "since": since, "until": now, "step_s": step, "status": status,
            "serving": stats.series(engine, name, since=since, step_s=step),
            "totals": stats.summary(engine, name, since=since).to_dict(),
            "windows": wins, "events": events, "alerts": alert_rows, "maps": class_maps(monitor, name, status)}


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


def _markers(data: dict[str, Any]) -> list[tuple[float, str]]:
    return [(e["t"], f"{e['alias']}→v{e['to']}" if e["to"] is not None else f"{e['alias']} removed")
            for e in data["events"]]


def charts_html(data: dict[str, Any]) -> str:
    """The charts, as inline SVG in a flex grid."""
    serving, wins, marks = data["serving"], data["windows"], _markers(data)
    out = [charts.line_chart("Requests/s", {"requests/s": [(p["t"], p["rps"]) for p in serving]},
                             markers=marks, chart_id="chart-rps", y_min=0),
           charts.line_chart("Latency (server side)", {"p50": [(p["t"], p["p50_ms"]) for p in serving],
                                                       "p99": [(p["t"], p["p99_ms"]) for p in serving]},
                             unit=" ms", markers=marks, chart_id="chart-latency", y_min=0),
           charts.line_chart("Error rate", {"5xx share": [(p["t"], p["error_rate"]) for p in serving]},
                             chart_id="chart-errors", y_min=0)]
    versions = sorted({v for p in serving for v in p["versions"]}, key=int)
    split = {f"v{v}": [(p["t"], 100.0 * p["versions"].get(v, 0) / max(sum(p["versions"].values()), 1))
                       for p in serving] for v in versions}
    out.append(charts.line_chart("Traffic split by version", split, unit="%", y_min=0, y_max=100,
                                 markers=marks, chart_id="chart-split"))
    drift: dict[str, list[tuple[float, float | None]]] = {}
    thresholds: list[tuple[float, str]] = []
    for w in wins:
        for test in TESTS:
            r = w["results"].get("drift", {}).get(test)
            if r is None:
                continue
            drift.setdefault(f"v{w['version']} {test}", []).append(
                (w["ts_last"], -math.log10(max(r["p_value"], 1e-300))))
    if wins and wins[-1]["results"].get("drift"):
        newest = wins[-1]["results"]["drift"]
        strictest = min(r["threshold"] for r in newest.values())
        thresholds.append((-math.log10(strictest), "strictest alarm threshold"))
    top = max([3 * t for t, _ in thresholds] + [10.0])  # off-scale alarms sit on the top edge (hover shows the value)
    # four tests per version: the legend (one line, ~7 px a character) would run off a 560 px chart
    legend = 54 + sum(20 + 7 * len(k) for k in drift) + 12
    out.append(charts.line_chart("Drift: −log10 p per window (higher = further from the reference)", drift,
                                 hlines=thresholds, markers=marks, chart_id="chart-drift", y_min=0, y_max=top,
                                 width=min(max(560, legend), 1140)))
    if _regression(data["status"]):
        out.append(_mae_chart(data, marks))
        return '<div class="grid2">' + "".join(f'<div class="card">{c}</div>' for c in out) + "</div>"
    acc: dict[str, list[tuple[float, float | None]]] = {}
    hidden: list[dict[str, Any]] = []  # windows whose estimate cannot be believed: a gap in the line
    for w in wins:
        res = w["results"]
        est = res.get("estimated_accuracy")
        if est is not None and not _believed(res):
            hidden.append(w)
            est = None
        acc.setdefault(f"v{w['version']} estimated", []).append((w["ts_last"], est))
        if res.get("realised_accuracy") is not None:
            acc.setdefault(f"v{w['version']} realised", []).append((w["ts_last"], res["realised_accuracy"]))
    val = [(float(s["accuracy"]["validation"]), f"v{v} validation") for v, s in data["status"]["versions"].items()
           if s["accuracy"].get("validation") is not None]
    chart = charts.line_chart("Accuracy: estimated (where it can be believed), realised from labels", acc, y_min=0,
                              y_max=1, hlines=val[:2], markers=marks, chart_id="chart-accuracy")
    if hidden:
        newest = hidden[-1]
        chart += (f'<p class="sub unreliable-note">{len(hidden)} of {len(wins)} window(s) not drawn on the estimate '
                  f"line: their estimate cannot be believed (newest, v{newest['version']} at "
                  f"{escape(_ts(newest['ts_last']))}: {escape(_reason(newest['results']))})</p>")
    out.append(chart)
    timeline: dict[str, list[tuple[float, float | None]]] = {}
    for e in data["events"]:
        timeline.setdefault(e["alias"], []).append((e["t"], float(e["to"]) if e["to"] is not None else None))
    for pts in timeline.values():
        if pts and pts[-1][1] is not None:
            pts.append((data["until"], pts[-1][1]))
    out.append(charts.line_chart("Version behind each alias", timeline, chart_id="chart-versions", step=True))
    return '<div class="grid2">' + "".join(f'<div class="card">{c}</div>' for c in out) + "</div>"


def _mae_chart(data: dict[str, Any], marks: list[tuple[float, str]]) -> str:
    """A regression's realised MAE per window from the labels known now, with each version's
    validation MAE as a line: no estimate (nothing to estimate it from)."""
    mae: dict[str, list[tuple[float, float | None]]] = {}
    for w in data["windows"]:
        if w["results"].get("realised_mae") is not None:
            mae.setdefault(f"v{w['version']} realised", []).append((w["ts_last"], w["results"]["realised_mae"]))
    val = [(float(s["accuracy"]["validation_mae"]), f"v{v} validation") for v, s in data["status"]["versions"].items()
           if s["accuracy"].get("validation_mae") is not None]
    return charts.line_chart("MAE: realised from labels (lower is better)", mae, y_min=0, hlines=val[:2],
                             markers=marks, chart_id="chart-mae")


def _num(x: float | None) -> str:
    return "–" if x is None else f"{x:.4g}"


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.1%}"


def _ts(t: float | None) -> str:
    return "–" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


#: the report's own marks, beside the charts' style (the dashboard's fragment carries them too)
STYLE = """
.unreliable{color:#999} .unreliable .why{display:block;font-size:11px;max-width:460px;white-space:normal}
.unknown{color:#8a6d00;font-weight:600} .unreliable-note{max-width:540px;margin:4px} table.rules{margin-top:8px}
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


def state_html(data: dict[str, Any]) -> str:
    """The current state (status), each version's rules and the alerts, as tables."""
    rows, rules = [], []
    regression = _regression(data["status"])
    for ver, s in data["status"]["versions"].items():
        d = s["drift"]
        cells = "".join(
            f'<td class="{"alarm" if d[t]["alarm"] else "ok"}">{"ALARM " if d[t]["alarm"] else ""}'
            f'p={d[t]["p_value"]:.1e}</td>' if t in d else "<td>–</td>" for t in TESTS)
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
    return f"<h2>Now</h2>{table}{totals}<h2>Alerts</h2>{alerts_table}"


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
    """A self-contained HTML report (inline CSS and SVG, no script, nothing fetched)."""
    events = "".join(f"<tr><td>{_ts(e['t'])}</td><td>{escape(e['alias'])}</td><td>{e['from'] or '–'}</td>"
                     f"<td>{e['to'] if e['to'] is not None else '–'}</td><td>{escape(e['reason'] or '')}</td></tr>"
                     for e in data["events"])
    events_table = ("<table><tr><th>when</th><th>alias</th><th>from</th><th>to</th><th>reason</th></tr>"
                    + events + "</table>") if events else "<p class=sub>no alias moves in this range</p>"
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>shipyard: {escape(data['model'])}</title>"
            f"<style>{charts.STYLE}{STYLE}</style></head><body><h1>{escape(data['model'])}: production report</h1>"
            f"<p class=sub>{_ts(data['since'])} – {_ts(data['until'])}; generated by shipyard monitor report</p>"
            f"{state_html(data)}<h2>Over time</h2>{charts_html(data)}<h2>Windows</h2>{windows_html(data)}"
            f"<h2>What each class looks at</h2>{_maps_html(data.get('maps', []))}"
            f"<h2>Versions</h2>{events_table}"
            "</body></html>\n")
