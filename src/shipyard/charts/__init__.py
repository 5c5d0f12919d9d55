"""Every chart shipyard draws in a browser — the UI (`shipyard ui`), the serving dashboard and the
HTML report — as one spec format drawn by the vendored uPlot (`vendor/`, MIT, see `VENDOR`) and
our `charts.js`. Python decides what is honest to show (gaps where nothing was measured, step
lines for versions and weights, an integer axis for versions, log scales where values span
decades, one x range per page); the browser only draws it.

A chart is a `<figure class="sy-chart" id=… data-spec=…>`: the spec travels as JSON in the page,
so a report stays one self-contained file (`inline_assets`), and a test (or a user's script) can
read exactly what a chart holds. Nothing is loaded from another host."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from functools import cache
from html import escape
from importlib import resources
from typing import Any

Point = tuple[float, float | None]

#: the vendored library: name, version and the sha256 of each file (checked by a unit test)
VENDOR = {"name": "uPlot", "version": "1.6.32", "license": "MIT", "source": "npm: uplot@1.6.32",
          "files": {"uPlot.iife.min.js": "19c8d4c6ad88929a79f4ae49d6f7161566dfd0ba3d15cc495e974f787eb78f1f",
                    "uPlot.min.css": "df630c6a8d6f8eeaff264b50f73ce5b114f646ffd9a0bb74f049b0a00135fa04"}}

#: what a page serves under its assets prefix: file name → (package path, content type)
ASSETS = {"uPlot.iife.min.js": ("vendor/uPlot.iife.min.js", "text/javascript; charset=utf-8"),
          "uPlot.min.css": ("vendor/uPlot.min.css", "text/css; charset=utf-8"),
          "charts.js": ("charts.js", "text/javascript; charset=utf-8"),
          "charts.css": ("charts.css", "text/css; charset=utf-8")}


@cache
def asset(name: str) -> tuple[bytes, str]:
    """One asset's bytes and content type (KeyError for anything else: a server answers 404)."""
    rel, ctype = ASSETS[name]
    return (resources.files("shipyard.charts") / rel).read_bytes(), ctype


def asset_links(prefix: str) -> str:
    """`<link>`/`<script>` tags for a page served with the assets under `prefix` (same host)."""
    return (f'<link rel="stylesheet" href="{prefix}/uPlot.min.css"><link rel="stylesheet" href="{prefix}/charts.css">'
            f'<script src="{prefix}/uPlot.iife.min.js"></script><script src="{prefix}/charts.js" defer></script>')


@cache
def inline_assets() -> str:
    """The same, inlined: for the report, which must open from a file, offline."""
    css = asset("uPlot.min.css")[0].decode() + asset("charts.css")[0].decode()
    js = asset("uPlot.iife.min.js")[0].decode() + "\n" + asset("charts.js")[0].decode()
    js = js.replace("</script", "<\\/script")
    return f"<style>{css}</style><script>{js}</script>"


def series(label: str, points: Iterable[Point], *, step: bool = False, dash: bool = False,
           color: str | None = None) -> dict[str, Any]:
    """One line. A None (or non-finite) y is a gap: the line breaks there."""
    pts = [[round(float(t), 3), _clean(y)] for t, y in points]
    out: dict[str, Any] = {"label": label, "points": pts, "step": step, "dash": dash}
    if color:
        out["color"] = color
    return out


def _clean(y: float | None) -> float | None:
    """JSON-safe and short: a gap for NaN/inf, six significant digits (a page of a day's charts
    stays small)."""
    return None if y is None or not math.isfinite(y) else float(f"{y:.6g}")


def with_gaps(points: Sequence[Point], max_gap: float) -> list[Point]:
    """`points` with a None inserted wherever two neighbours lie more than `max_gap` apart, so a
    stretch with no data (a server down, no windows evaluated) is drawn as a gap, not as a
    straight line that reads like a gradual change."""
    out: list[Point] = []
    for p in sorted(points, key=lambda p: p[0]):
        if out and p[0] - out[-1][0] > max_gap:
            out.append(((p[0] + out[-1][0]) / 2, None))
        out.append(p)
    return out


def typical_gap(ts: Sequence[float], factor: float = 3.0, floor: float = 1.0) -> float:
    """`factor` × the median spacing of `ts`: beyond that a pause is a gap."""
    s = sorted(ts)
    diffs = sorted(b - a for a, b in zip(s, s[1:], strict=False) if b > a)
    return max(floor, factor * diffs[len(diffs) // 2]) if diffs else math.inf


def scale_for(values: Iterable[float | None], *, decades: float = 2.0) -> str:
    """`log` where the positive values span more than `decades` decades (latency p50 against
    p99 under load), else `linear`."""
    v = [x for x in values if x is not None and math.isfinite(x)]
    if not v or min(v) <= 0:
        return "linear"
    return "log" if math.log10(max(v) / min(v)) > decades else "linear"


def chart(chart_id: str, title: str, lines: Sequence[dict[str, Any]], *, unit: str = "", x: str = "time",
          x_range: tuple[float, float] | None = None, y_min: float | None = None, y_max: float | None = None,
          min_span: float | None = None, scale: str = "linear", integer: bool = False,
          markers: Sequence[tuple[float, str]] | str = (), hlines: Sequence[tuple[float, str]] = (),
          note: str | None = None, empty: str = "no data yet", width: int = 560, height: int = 220,
          x_label: str | None = None) -> str:
    """One chart as HTML. `x`: `time` (unix seconds, shared range and cursor on a page) or
    `number` (epochs, steps); `markers`: (x, label) events shown as lines with a tooltip, or the id
    of an `events_block` the page's charts share;
    `hlines`: (y, label) reference values (thresholds, validation scores) as dashed lines;
    `min_span`: the y axis spans at least this much (a 0.1-point difference must not fill a chart);
    `integer`: an axis of versions (v1, v2: no v1.5)."""
    spec: dict[str, Any] = {
        "id": chart_id, "title": title, "unit": unit, "x": x, "series": list(lines),
        "markers": markers if isinstance(markers, str) else [{"x": float(t), "label": label} for t, label in markers],
        "hlines": [{"y": float(v), "label": label} for v, label in hlines if math.isfinite(v)],
        "y": {"min": y_min, "max": y_max, "min_span": min_span, "scale": scale, "integer": integer},
        "empty": empty, "width": width, "height": height}
    if x_range is not None:
        spec["range"] = [float(x_range[0]), float(x_range[1])]
    if x_label:
        spec["x_label"] = x_label
        spec["x_integer"] = True
    doc = json.dumps(spec, separators=(",", ":"), allow_nan=False)
    parts = [f'<figure class="sy-chart" id="{escape(chart_id)}" data-spec="{escape(doc, quote=True)}" '
             f'style="width:{width + 14}px;max-width:100%" aria-label="{escape(title)}">'
             f'<figcaption>{escape(title)}</figcaption><div class="sy-plot"></div>']
    if note:
        parts.append(f'<p class="sy-note">{escape(note)}</p>')
    if markers and not isinstance(markers, str):
        parts.append(_events_list(markers, x))
    parts.append("</figure>")
    return "".join(parts)


def _events_list(markers: Sequence[tuple[float, str]], x: str = "time") -> str:
    items = "".join(f"<li>{escape(_when(t, x))}{escape(label)}</li>" for t, label in markers)
    return f'<details class="sy-events"><summary>{len(markers)} event(s)</summary><ul>{items}</ul></details>'


def events_block(block_id: str, markers: Sequence[tuple[float, str]]) -> str:
    """Events every time chart of a page marks (pass `markers=block_id` to `chart`): written once,
    as JSON the charts read, and once as a list a person (or a screen reader) can read."""
    doc = json.dumps([{"x": round(float(t), 3), "label": label} for t, label in markers], separators=(",", ":"))
    doc = doc.replace("</", "<\\/")  # a reason that says </script> stays inside the JSON
    return (f'<script type="application/json" id="{escape(block_id)}">{doc}</script>'
            f'<div class="sy-events-all">{_events_list(markers)}</div>')


def _when(t: float, x: str) -> str:
    if x != "time":
        return f"{t:g}: "
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S ", time.localtime(t))


def specs(html: str) -> dict[str, dict[str, Any]]:
    """Every chart's spec in a page, by id (tests, and scripts that want the numbers behind a chart)."""
    import re
    from html import unescape

    return {m.group(1): json.loads(unescape(m.group(2)))
            for m in re.finditer(r'<figure class="sy-chart" id="([^"]+)" data-spec="([^"]*)"', html)}


#: the look of a page around the charts (report, dashboard, UI): system fonts, AA contrast
PAGE_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1a1a1a;background:#fafafa}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:24px 0 8px} .sub{color:#595959;font-size:13px}
.grid2{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
table{border-collapse:collapse;font-size:13px;background:#fff}
td,th{border:1px solid #d9d9d9;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f0f0f0} .alarm{color:#b71c1c;font-weight:600} .ok{color:#1b5e20}
a{color:#0b57d0}
a:focus,button:focus,input:focus,select:focus,summary:focus{outline:2px solid #0b57d0;outline-offset:1px}
"""
