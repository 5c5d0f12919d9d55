"""Small SVG charts of our own, for the HTML report and the server's dashboard: no plotting
library in a serving install, nothing loaded from a CDN, and a report that is one
self-contained file. Each data point is an SVG element of class `pt`, so a test (or a user's
script) can count what a chart holds."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from html import escape

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")

Point = tuple[float, float | None]


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 10:
        return f"{v:.0f}"
    if a >= 1:
        return f"{v:.1f}"
    return f"{v:.2g}"


def _clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t))


def line_chart(title: str, series: Mapping[str, Sequence[Point]], *, unit: str = "", width: int = 560,
               height: int = 200, y_min: float | None = None, y_max: float | None = None,
               hlines: Sequence[tuple[float, str]] = (), markers: Sequence[tuple[float, str]] = (),
               chart_id: str | None = None, step: bool = False) -> str:
    """Time series as polylines with a point marker each. `hlines`: (y, label) reference lines
    (thresholds); `markers`: (t, label) vertical lines (alias moves). Gaps (None) break a line."""
    left, right, top, bottom = 54, 12, 26, 40
    pw, ph = width - left - right, height - top - bottom
    ts = [t for pts in series.values() for t, y in pts if y is not None] + [t for t, _ in markers]
    ys = [y for pts in series.values() for _, y in pts if y is not None and math.isfinite(y)]
    ys += [y for y, _ in hlines]
    cid = f' id="{escape(chart_id)}"' if chart_id else ""
    head = (f'<svg{cid} class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">'
            f'<text x="{left}" y="16" class="title">{escape(title)}</text>')
    if not ys or not ts:
        return head + (f'<text x="{width / 2}" y="{height / 2}" class="empty" text-anchor="middle">'
                       "no data yet</text></svg>")
    t0, t1 = min(ts), max(ts)
    if t1 - t0 < 1:
        t0, t1 = t0 - 30, t1 + 30
    lo = min(ys) if y_min is None else y_min
    hi = max(ys) if y_max is None else y_max
    if hi - lo < 1e-12:
        if y_min is not None:
            hi = lo + (abs(lo) * 0.1 or 1)
        else:
            lo, hi = lo - (abs(lo) * 0.1 or 1), hi + (abs(hi) * 0.1 or 1)

    def x(t: float) -> float:
        return left + (t - t0) / (t1 - t0) * pw

    def y(v: float) -> float:
        return top + (1 - (min(max(v, lo), hi) - lo) / (hi - lo)) * ph

    parts = [head, f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" class="frame"/>']
    for frac in (0, 0.5, 1):
        v = lo + (hi - lo) * frac
        parts.append(f'<text x="{left - 4}" y="{y(v) + 4:.1f}" text-anchor="end" class="axis">{_fmt(v)}{unit}</text>')
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{y(v):.1f}" y2="{y(v):.1f}" class="grid"/>')
    for frac, anchor in ((0, "start"), (0.5, "middle"), (1, "end")):
        t = t0 + (t1 - t0) * frac
        parts.append(f'<text x="{x(t):.1f}" y="{top + ph + 14}" text-anchor="{anchor}" class="axis">{_clock(t)}</text>')
    for v, label in hlines:
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{y(v):.1f}" y2="{y(v):.1f}" class="ref"/>'
                     f'<text x="{left + pw - 2}" y="{y(v) - 3:.1f}" text-anchor="end" class="reflabel">'
                     f'{escape(label)}</text>')
    for t, label in markers:
        parts.append(f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{top}" y2="{top + ph}" class="marker"/>'
                     f'<text x="{x(t) + 3:.1f}" y="{top + 10}" class="markerlabel">{escape(label)}</text>')
    legend_x = left
    for i, (name, pts) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        runs: list[list[str]] = [[]]
        prev: tuple[float, float] | None = None
        for t, val in pts:
            if val is None or not math.isfinite(val):
                runs.append([])
                prev = None
                continue
            if step and prev is not None:
                runs[-1].append(f"{x(t):.1f},{y(prev[1]):.1f}")
            runs[-1].append(f"{x(t):.1f},{y(val):.1f}")
            prev = (t, val)
        for run in runs:
            if len(run) > 1:
                parts.append(f'<polyline points="{" ".join(run)}" fill="none" stroke="{color}" stroke-width="1.6"/>')
        for t, val in pts:
            if val is not None and math.isfinite(val):
                parts.append(f'<circle class="pt" cx="{x(t):.1f}" cy="{y(val):.1f}" r="2" fill="{color}">'
                             f'<title>{escape(name)} {_clock(t)}: {_fmt(val)}{unit}</title></circle>')
        parts.append(f'<rect x="{legend_x}" y="{height - 12}" width="10" height="3" fill="{color}"/>'
                     f'<text x="{legend_x + 14}" y="{height - 8}" class="legend">{escape(name)}</text>')
        legend_x += 20 + 7 * len(name)
    parts.append("</svg>")
    return "".join(parts)


STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:24px 0 8px} .sub{color:#666;font-size:13px}
.grid2{display:flex;flex-wrap:wrap;gap:12px}
.card{background:#fff;border:1px solid #e3e3e3;border-radius:6px;padding:6px}
table{border-collapse:collapse;font-size:13px;background:#fff}
td,th{border:1px solid #e3e3e3;padding:4px 8px;text-align:left}
th{background:#f3f3f3} .alarm{color:#c62828;font-weight:600} .ok{color:#2e7d32}
svg.chart text{font-size:11px;fill:#444} svg.chart .title{font-size:13px;font-weight:600;fill:#222}
svg.chart .frame{fill:none;stroke:#ccc} svg.chart .grid{stroke:#eee} svg.chart .ref{stroke:#c62828;stroke-dasharray:4 3}
svg.chart .reflabel{fill:#c62828} svg.chart .marker{stroke:#888;stroke-dasharray:2 3} svg.chart .markerlabel{fill:#555}
svg.chart .empty{fill:#999}
"""
