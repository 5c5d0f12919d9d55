"""The charts of a model in production — what the report, the serving dashboard and the UI's
deployment page draw, from `report.collect`'s data. One x range for the page (from the first
thing measured in the range to now), gaps where nothing was recorded, the traffic split over
served versions only (refused requests are their own series in the error chart), requests/s as
the mean and the busiest 5 s of each step, drift as −log10 p on a log-like axis (nothing clipped),
versions and weights as step lines on an integer axis, alias and traffic moves as markers with a
tooltip."""

from __future__ import annotations

import math
from html import escape
from typing import Any

from shipyard import charts as ch
from shipyard.monitor.drift import TESTS


def _believed(res: dict[str, Any]) -> bool:
    return res.get("estimated_reliable") is not False


def markers(data: dict[str, Any]) -> list[tuple[float, str]]:
    """Alias and traffic moves, with who and why (a tooltip each: they may sit close together)."""
    out = []
    for e in data["events"]:
        if e["kind"] == "traffic":
            w = ", ".join(f"{a} {p}%" for a, p in (e.get("weights") or {}).items())
            what = f"traffic: {w}"
        elif e["to"] is not None:
            what = f"{e['alias']}: v{e['from']}→v{e['to']}" if e["from"] is not None else f"{e['alias']} → v{e['to']}"
        else:
            what = f"{e['alias']} removed"
        why = f" ({e['reason']})" if e.get("reason") else ""
        who = f" by {e['actor']}" if e.get("actor") else ""
        out.append((e["t"], what + who + why))
    return out


def _serving(data: dict[str, Any], xr: tuple[float, float], marks: Any) -> list[str]:
    serving, step = data["serving"], data["step_s"]
    gap = max(3 * step, 30.0)

    def line(key: str, scale: float = 1.0) -> list[ch.Point]:
        return ch.with_gaps([(p["t"], None if p[key] is None else p[key] * scale) for p in serving], gap)

    out = [ch.chart("chart-rps", f"Requests/s (mean and busiest 5 s of each {step:g} s step)",
                    [ch.series("mean", line("rps")), ch.series("busiest 5 s", line("peak_rps"), dash=True)],
                    x_range=xr, y_min=0, markers=marks,
                    note="gaps: no request was recorded (idle, or no server running)")]
    p50, p99 = line("p50_ms"), line("p99_ms")
    out.append(ch.chart("chart-latency", "Latency, server side", [ch.series("p50", p50), ch.series("p99", p99)],
                        unit=" ms", x_range=xr, markers=marks,
                        scale=ch.scale_for([y for _, y in p50 + p99]),
                        y_min=None if ch.scale_for([y for _, y in p50 + p99]) == "log" else 0))
    out.append(ch.chart("chart-errors", "Errors and refusals (share of requests)",
                        [ch.series("server errors (5xx)", line("error_rate", 100)),
                         ch.series("refused (bad input, unknown model, no token)", line("refused_rate", 100))],
                        unit="%", x_range=xr, y_min=0, min_span=1, markers=marks))
    versions = sorted({v for p in serving for v in p["versions"] if v != "0"}, key=int)
    split = []
    for v in versions:
        pts = []
        for p in serving:
            served = sum(n for k, n in p["versions"].items() if k != "0")
            pts.append((p["t"], 100.0 * p["versions"].get(v, 0) / served if served else None))
        split.append(ch.series(f"v{v}", ch.with_gaps(pts, gap), step=True))
    out.append(ch.chart("chart-split", "Traffic split over served versions", split, unit="%", x_range=xr,
                        y_min=0, y_max=100, markers=marks))
    return out


def _drift(data: dict[str, Any], xr: tuple[float, float], marks: Any) -> str:
    wins = data["windows"]
    gap = ch.typical_gap([w["ts_last"] for w in wins], floor=60.0)
    lines = []
    for version in sorted({w["version"] for w in wins}):
        for test in TESTS:
            pts = [(w["ts_last"], -math.log10(max(w["results"]["drift"][test]["p_value"], 1e-300)))
                   for w in wins if w["version"] == version and test in w["results"].get("drift", {})]
            if pts:
                lines.append(ch.series(f"v{version} {test}", ch.with_gaps(pts, gap)))
    hlines = []
    if wins and wins[-1]["results"].get("drift"):
        strictest = min(r["threshold"] for r in wins[-1]["results"]["drift"].values())
        hlines.append((-math.log10(strictest), "strictest alarm threshold"))
    return ch.chart("chart-drift", "Drift per window: −log10 p (higher = further from the reference)", lines,
                    x_range=xr, y_min=0, scale="asinh", hlines=hlines, markers=marks, width=1140)


def _accuracy(data: dict[str, Any], xr: tuple[float, float], marks: Any) -> str:
    wins = data["windows"]
    gap = ch.typical_gap([w["ts_last"] for w in wins], floor=60.0)
    lines, hidden = [], []
    for version in sorted({w["version"] for w in wins}):
        est, real = [], []
        for w in (w for w in wins if w["version"] == version):
            res = w["results"]
            e = res.get("estimated_accuracy")
            if e is not None and not _believed(res):
                hidden.append(w)
                e = None
            if e is not None:
                est.append((w["ts_last"], 100 * e))
            if res.get("realised_accuracy") is not None:
                real.append((w["ts_last"], 100 * res["realised_accuracy"]))
        if est:
            lines.append(ch.series(f"v{version} estimated", ch.with_gaps(est, gap), dash=True))
        if real:
            lines.append(ch.series(f"v{version} realised (labels, late ones included)", ch.with_gaps(real, gap)))
    val = [(100 * float(s["accuracy"]["validation"]), f"v{v} validation")
           for v, s in data["status"]["versions"].items() if s["accuracy"].get("validation") is not None]
    note = None
    if hidden:
        newest = hidden[-1]
        why = newest["results"].get("estimated_reason") or "the evaluator says it cannot be believed"
        note = (f"{len(hidden)} of {len(wins)} window(s) not drawn on the estimate line: their estimate cannot be "
                f"believed (newest, v{newest['version']}: {why})")
    return ch.chart("chart-accuracy", "Accuracy: estimated (where it can be believed) and realised", lines,
                    unit="%", x_range=xr, y_max=100, min_span=20, hlines=val[:4], markers=marks, note=note)


def _mae(data: dict[str, Any], xr: tuple[float, float], marks: Any) -> str:
    wins = data["windows"]
    gap = ch.typical_gap([w["ts_last"] for w in wins], floor=60.0)
    lines = []
    for version in sorted({w["version"] for w in wins}):
        pts = [(w["ts_last"], w["results"]["realised_mae"]) for w in wins
               if w["version"] == version and w["results"].get("realised_mae") is not None]
        if pts:
            lines.append(ch.series(f"v{version} realised", ch.with_gaps(pts, gap)))
    val = [(float(s["accuracy"]["validation_mae"]), f"v{v} validation")
           for v, s in data["status"]["versions"].items() if s["accuracy"].get("validation_mae") is not None]
    return ch.chart("chart-mae", "MAE: realised from labels (lower is better)", lines, x_range=xr, y_min=0,
                    hlines=val[:4], markers=marks)


def _versions(data: dict[str, Any], xr: tuple[float, float]) -> list[str]:
    """Each alias's version and each alias's traffic weight over time, as step lines."""
    until = data["until"]
    timeline: dict[str, list[ch.Point]] = {a: [(xr[0], float(v))] for a, v in data.get("aliases_at_start", {}).items()}
    weights: dict[str, list[ch.Point]] = {a: [(xr[0], float(w))]
                                          for a, w in (data.get("weights_at_start") or {}).items()}
    for e in data["events"]:
        if e["kind"] == "traffic":
            new = e.get("weights") or {}
            for a in set(weights) | set(new):
                weights.setdefault(a, [(xr[0], 0.0)]).append((e["t"], float(new.get(a, 0))))
        elif e["alias"]:
            timeline.setdefault(e["alias"], []).append((e["t"], float(e["to"]) if e["to"] is not None else None))
    for pts in [*timeline.values(), *weights.values()]:
        if pts and pts[-1][1] is not None:
            pts.append((until, pts[-1][1]))
    return [ch.chart("chart-versions", "Version behind each alias", [ch.series(a, p, step=True)
                                                                      for a, p in sorted(timeline.items())],
                     x_range=xr, integer=True, empty="no alias in this range"),
            ch.chart("chart-weights", "Traffic weight of each alias", [ch.series(a, p, step=True)
                                                                        for a, p in sorted(weights.items())],
                     unit="%", x_range=xr, y_min=0, y_max=100, empty="no traffic split set")]


def x_range(data: dict[str, Any]) -> tuple[float, float]:
    """The page's one time range: from the first thing measured in the range (not the start of an
    empty day) to now."""
    ts = [p["t"] - data["step_s"] for p in data["serving"]] + [w["ts_first"] for w in data["windows"]]
    ts += [e["t"] for e in data["events"]]
    start = max(data["since"], min(ts)) if ts else data["since"]
    return (min(start, data["until"] - 60), data["until"])


EVENTS_ID = "sy-events"


def charts_html(data: dict[str, Any]) -> str:
    """Every chart, in a flex grid, marking the alias and traffic moves written once above them."""
    xr, events = x_range(data), markers(data)
    marks: Any = EVENTS_ID if events else ()
    out = _serving(data, xr, marks) + [_drift(data, xr, marks)]
    regression = any(s.get("task") == "regression" for s in data["status"].get("versions", {}).values())
    out.append(_mae(data, xr, marks) if regression else _accuracy(data, xr, marks))
    out += _versions(data, xr)
    head = ch.events_block(EVENTS_ID, events) if events else ""
    return head + '<div class="grid2">' + "".join(out) + "</div>"


def events_rows(data: dict[str, Any]) -> str:
    from time import localtime, strftime

    return "".join(f"<tr><td>{strftime('%Y-%m-%d %H:%M:%S', localtime(e['t']))}</td><td>{escape(e['kind'])}</td>"
                   f"<td>{escape(e['alias'] or '–')}</td><td>{e['from'] if e['from'] is not None else '–'}</td>"
                   f"<td>{e['to'] if e['to'] is not None else '–'}</td><td>{escape(e.get('actor') or '')}</td>"
                   f"<td>{escape(e['reason'] or '')}</td></tr>" for e in data["events"])
